"""The ``timm`` tower kind: any timm model name, from scratch or with pretrained weights.

``vision_config.tower_weights`` names the weights: a local ``.safetensors`` / ``.pth`` file or a Hub id (``timm/...``
or ``hf-hub:timm/...``); ``timm_pretrained=True`` is timm's own default weights for the name. timm adapts the first
convolution to the input channels itself (``in_chans``: the ``stem`` strategy). A pretrained timm model's
convention is its ``pretrained_cfg`` (mean / std / input size on the [0, 1] scale).
"""

from __future__ import annotations

import os

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling

from .vision_tower_preprocessing import TowerNormalize, checked_tower_preprocessing, preprocessing_from_timm
from .vision_tower_registry import VisionTowerKind, mark_initialised, register_tower_kind


def timm_backbone_outputs(
    backbone: nn.Module, pixel_values: torch.Tensor, output_hidden_states: bool = False
) -> BaseModelOutputWithPooling:
    """Run a timm trunk built with ``num_classes=0``: its unpooled features, pooled features and, with
    ``output_hidden_states``, the per-stage maps of ``forward_intermediates``."""
    if output_hidden_states:
        if not hasattr(backbone, "forward_intermediates"):
            name = getattr(backbone, "default_cfg", {}).get("architecture", type(backbone).__name__)
            raise ValueError(
                f"the timm backbone {name!r} has no forward_intermediates, so it cannot return hidden states; "
                "call without output_hidden_states"
            )
        features, intermediates = backbone.forward_intermediates(pixel_values)
        hidden_states = tuple(intermediates)
    else:
        features, hidden_states = backbone.forward_features(pixel_values), None
    pooled = backbone.forward_head(features, pre_logits=True)
    return BaseModelOutputWithPooling(last_hidden_state=features, pooler_output=pooled, hidden_states=hidden_states)


class TimmTower(nn.Module):
    """A timm trunk (``model``) behind the tower signature, with the tower's normalisation in front."""

    def __init__(self, model: nn.Module, preprocessing, in_channels: int):
        super().__init__()
        self.model = model
        self.normalize = TowerNormalize(preprocessing, in_channels)
        self.num_features = model.num_features

    def forward(self, pixel_values: torch.Tensor, output_hidden_states: bool = False) -> BaseModelOutputWithPooling:
        return timm_backbone_outputs(self.model, self.normalize(pixel_values), output_hidden_states)


def _claims(config) -> bool:
    if config.tower_config is not None:
        return False
    import timm

    return timm.is_model(config.backbone)


def _weights_overlay(weights: str) -> dict[str, str]:
    """timm's ``pretrained_cfg_overlay`` for a local file or a Hub id."""
    if os.path.isfile(weights):
        return {"file": os.path.abspath(weights)}
    if os.path.sep in weights.strip("/") and os.path.exists(os.path.dirname(weights) or "."):
        raise ValueError(f"tower_weights {weights!r} is not a file")
    return {"hf_hub_id": weights.removeprefix("hf-hub:")}


def _is_pretrained(config) -> bool:
    return bool(config.tower_weights or config.timm_pretrained)


def _resolve(config) -> None:
    if config.tower_preprocessing is not None:
        config.tower_preprocessing = checked_tower_preprocessing(config.tower_preprocessing, config.backbone)
    elif _is_pretrained(config):
        import timm

        cfg = timm.models.get_pretrained_cfg(config.backbone) or {}
        cfg = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
        where = f"timm's pretrained_cfg of {config.backbone!r}"
        config.tower_preprocessing = preprocessing_from_timm(cfg, config.backbone, where)


def _build(config, in_channels: int, load_weights: bool) -> TimmTower:
    import timm

    pretrained = load_weights and _is_pretrained(config)
    overlay = _weights_overlay(config.tower_weights) if pretrained and config.tower_weights else None
    model = timm.create_model(config.backbone, pretrained=pretrained, pretrained_cfg_overlay=overlay,
                              in_chans=in_channels, num_classes=0)
    if pretrained:
        mark_initialised(model)
    return TimmTower(model, config.tower_preprocessing, in_channels)


register_tower_kind(VisionTowerKind(
    name="timm",
    description="nor a timm model name (timm.list_models())",
    claims=_claims,
    resolve=_resolve,
    build=_build,
    pretrained_in_channels=lambda config: 3 if _is_pretrained(config) else 1,
))

__all__ = ["TimmTower", "timm_backbone_outputs"]
