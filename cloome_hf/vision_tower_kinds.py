"""The registered image-tower kinds, in the order a ``vision_config.backbone`` is offered to them.

Importing this module registers ``cloome_resnet50``, ``timm`` and ``transformers`` (see
:mod:`cloome_hf.vision_tower_registry`). The tower modules are flat files of the package because a saved model folder
carries the model's code for ``trust_remote_code`` loading, and transformers copies single files only;
:mod:`cloome_hf.vision_towers` is their public home.
"""

# Imported one by one, in registration order (and spelled so that transformers copies them with a saved model).
from .vision_tower_resnet import CloomeResNet  # noqa: F401
from .vision_tower_timm import TimmTower  # noqa: F401
from .vision_tower_transformers import TransformersTower  # noqa: F401
from .vision_tower_registry import build_vision_model, resolve_tower_kind, without_pretrained_tower_weights

__all__ = ["build_vision_model", "resolve_tower_kind", "without_pretrained_tower_weights"]
