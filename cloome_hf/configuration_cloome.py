"""CLOOME configuration: plain data describing the two encoders and the contrastive objective."""

from __future__ import annotations

import math
from typing import Any

from transformers import PreTrainedConfig

CLOOME_RESNET50 = "cloome_resnet50"
LOSSES = ("infonce", "infoloob")


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


class CloomeVisionConfig(PreTrainedConfig):
    """Configuration of the image encoder.

    Args:
        backbone: ``"cloome_resnet50"`` for the published CLOOME ResNet (anti-aliased, 7x7 average-pool
            head), or the name of any timm model (built with ``in_chans=num_channels, num_classes=0``).
        num_channels: number of Cell Painting channels in ``pixel_values`` (5 for Bray 2017 / JUMP).
        layers: bottleneck blocks per stage of ``cloome_resnet50`` (``[3, 4, 6, 3]`` is ResNet-50).
        image_size: ``[height, width]`` the model is trained for (520 x 696 is a full Bray 2017 site).
        timm_pretrained: load ImageNet weights for a timm backbone (needs network access).
        base_width: channels of the ``cloome_resnet50`` stem (64 published; smaller widths give fast
            CPU-sized models, the feature dimension is ``32 * base_width``).
        head_pool_size: window of the ``cloome_resnet50`` head's stride-1 average pool (7 published); the
            input must be large enough for the final feature map to hold one window.
    """

    model_type = "cloome_vision_model"
    base_config_key = "vision_config"

    def __init__(
        self,
        backbone: str = CLOOME_RESNET50,
        num_channels: int = 5,
        layers: list[int] | tuple[int, ...] = (3, 4, 6, 3),
        image_size: list[int] | tuple[int, int] | int = (520, 696),
        timm_pretrained: bool = False,
        base_width: int = 64,
        head_pool_size: int = 7,
        **kwargs,
    ):
        super().__init__(**kwargs)
        _check_positive_int("base_width", base_width)
        _check_positive_int("head_pool_size", head_pool_size)
        if not isinstance(backbone, str) or not backbone:
            raise ValueError(f"backbone must be a non-empty string, got {backbone!r}")
        _check_positive_int("num_channels", num_channels)
        layers = list(layers)
        if len(layers) != 4:
            raise ValueError(f"layers must list the blocks of the 4 ResNet stages, got {layers!r}")
        for count in layers:
            _check_positive_int("every entry of layers", count)
        if isinstance(image_size, int):
            image_size = [image_size, image_size]
        image_size = list(image_size)
        if len(image_size) != 2:
            raise ValueError(f"image_size must be [height, width], got {image_size!r}")
        for side in image_size:
            _check_positive_int("image_size", side)
        self.backbone = backbone
        self.num_channels = num_channels
        self.layers = layers
        self.image_size = image_size
        self.timm_pretrained = bool(timm_pretrained)
        self.base_width = base_width
        self.head_pool_size = head_pool_size


class CloomeMoleculeConfig(PreTrainedConfig):
    """Configuration of the molecule encoder, an MLP over a fingerprint vector.

    Args:
        fingerprint_size: length of the input fingerprint (1024 Morgan bits, or 8192 Morgan/RDKit counts).
        hidden_size: units of every hidden layer.
        num_hidden_layers: number of Linear -> BatchNorm1d -> ReLU blocks before the projection.
    """

    model_type = "cloome_molecule_model"
    base_config_key = "molecule_config"

    def __init__(self, fingerprint_size: int = 1024, hidden_size: int = 1024, num_hidden_layers: int = 4, **kwargs):
        super().__init__(**kwargs)
        _check_positive_int("fingerprint_size", fingerprint_size)
        _check_positive_int("hidden_size", hidden_size)
        _check_positive_int("num_hidden_layers", num_hidden_layers)
        self.fingerprint_size = fingerprint_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers


class CloomeConfig(PreTrainedConfig):
    """Configuration of a CLOOME model: both encoders plus the shared embedding space and objective.

    Args:
        vision_config: dict or :class:`CloomeVisionConfig`.
        molecule_config: dict or :class:`CloomeMoleculeConfig`.
        projection_dim: dimension ``d`` of the joint embedding space (512 in the paper).
        logit_scale_init_value: initial ``ln(1/tau)``; ``ln 14.3`` for the retrieval model, ``ln 30`` for
            the bioactivity model.
        learnable_logit_scale: train ``ln(1/tau)`` (clamped to ``[0, ln 100]``) or keep it fixed.
        loss: ``"infonce"`` (CLIP) or ``"infoloob"`` (CLOOB: InfoLOOB with Hopfield retrieval).
        hopfield_beta: inverse temperature ``beta`` of the Hopfield retrieval (22 for the bioactivity model).
    """

    model_type = "cloome"
    sub_configs = {"vision_config": CloomeVisionConfig, "molecule_config": CloomeMoleculeConfig}

    def __init__(
        self,
        vision_config: dict | CloomeVisionConfig | None = None,
        molecule_config: dict | CloomeMoleculeConfig | None = None,
        projection_dim: int = 512,
        logit_scale_init_value: float = math.log(14.3),
        learnable_logit_scale: bool = True,
        loss: str = "infonce",
        hopfield_beta: float = 22.0,
        **kwargs,
    ):
        if vision_config is None:
            vision_config = CloomeVisionConfig()
        elif isinstance(vision_config, dict):
            vision_config = CloomeVisionConfig(**vision_config)
        if molecule_config is None:
            molecule_config = CloomeMoleculeConfig()
        elif isinstance(molecule_config, dict):
            molecule_config = CloomeMoleculeConfig(**molecule_config)
        self.vision_config = vision_config
        self.molecule_config = molecule_config

        _check_positive_int("projection_dim", projection_dim)
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        if not math.isfinite(logit_scale_init_value) or not 0.0 <= logit_scale_init_value <= math.log(100.0):
            raise ValueError(
                f"logit_scale_init_value is ln(1/tau) and must lie in [0, ln 100 = {math.log(100.0):.4f}], "
                f"got {logit_scale_init_value!r}"
            )
        if not (isinstance(hopfield_beta, (int, float)) and math.isfinite(hopfield_beta) and hopfield_beta > 0):
            raise ValueError(f"hopfield_beta must be a positive finite number, got {hopfield_beta!r}")
        self.projection_dim = projection_dim
        self.logit_scale_init_value = float(logit_scale_init_value)
        self.learnable_logit_scale = bool(learnable_logit_scale)
        self.loss = loss
        self.hopfield_beta = float(hopfield_beta)
        super().__init__(**kwargs)


__all__ = ["CloomeConfig", "CloomeMoleculeConfig", "CloomeVisionConfig", "CLOOME_RESNET50"]
