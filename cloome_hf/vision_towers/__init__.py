"""Image towers of CLOOME: one adapter per tower kind behind one signature, a registry, channel strategies.

The kinds, in the order a ``vision_config.backbone`` is offered to them: ``cloome_resnet50``
(:mod:`cloome_hf.vision_tower_resnet`), a timm model name (:mod:`cloome_hf.vision_tower_timm`), a transformers model
folder or Hub id (:mod:`cloome_hf.vision_tower_transformers`). The channel strategies are in
:mod:`cloome_hf.vision_tower_channels`, the input conventions in :mod:`cloome_hf.vision_tower_preprocessing`. (The
modules themselves are flat files of the package: a saved model folder carries them as its remote code, and
transformers copies single files only.)
"""

from ..vision_tower_channels import PerChannelTower, pool_tower_features, tower_features, tower_module
from ..vision_tower_kinds import build_vision_model, resolve_tower_kind, without_pretrained_tower_weights
from ..vision_tower_preprocessing import TowerNormalize, checked_tower_preprocessing
from ..vision_tower_registry import (CHANNEL_STRATEGIES, VisionTowerKind, get_tower_kind, mark_initialised,
                                     register_tower_kind, tower_kind_names)
from .processing import tower_image_processor

__all__ = ["CHANNEL_STRATEGIES", "PerChannelTower", "TowerNormalize", "VisionTowerKind", "build_vision_model",
           "checked_tower_preprocessing", "get_tower_kind", "mark_initialised", "pool_tower_features",
           "register_tower_kind", "resolve_tower_kind", "tower_features", "tower_image_processor", "tower_kind_names",
           "tower_module", "without_pretrained_tower_weights"]
