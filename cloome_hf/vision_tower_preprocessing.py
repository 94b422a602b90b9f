"""A pretrained tower's input convention (scaling, mean / std, input size), read from its own saved files.

Nothing is guessed: a tower with pretrained weights whose convention is not in its saved processor (transformers'
``preprocessor_config.json``) or its pretrained config (timm's ``pretrained_cfg``), and that the user did not give
as ``vision_config.tower_preprocessing``, is refused by name.

The convention is split in two, because Cell Painting channels rarely match the tower's input channels:

* :class:`~cloome_hf.CloomeImageProcessor` does the scaling (8-bit intensities times ``rescale_factor``) and the
  crop to ``input_size`` (a centre crop, no resize: resizing a 520 x 696 site to 224 px would shrink the cells);
  :func:`tower_image_processor` builds that processor and records the whole convention in it;
* the tower adapter applies the tower's ``image_mean`` / ``image_std`` (:class:`TowerNormalize`) *after* a channel
  has been replicated to the tower's input channels, where per-RGB-channel values make sense.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .config_bounds import MAX_IMAGE_SIDE

PREPROCESSING_KEYS = ("rescale_factor", "image_mean", "image_std", "input_size", "source")


def _floats(value: Any, key: str, tower: str, positive: bool = False) -> list[float] | None:
    if value is None:
        return None
    values = [value] if isinstance(value, (int, float)) else value
    try:
        values = [float(v) for v in values]
    except (TypeError, ValueError):
        raise ValueError(f"tower_preprocessing[{key!r}] of tower {tower!r} must be numbers, got {value!r}") from None
    if not values or not all(math.isfinite(v) and (v > 0 or not positive) for v in values):
        raise ValueError(f"tower_preprocessing[{key!r}] of tower {tower!r} must be finite"
                         f"{' and positive' if positive else ''} numbers, got {value!r}")
    return values


def checked_tower_preprocessing(value: Mapping[str, Any], tower: str) -> dict[str, Any]:
    """``value`` in canonical form: ``rescale_factor`` (> 0), ``image_mean`` / ``image_std`` (lists, or both
    ``None`` for a tower that takes scaled intensities as they are), ``input_size`` ``[h, w]`` and ``source``."""
    if not isinstance(value, Mapping):
        raise ValueError(f"tower_preprocessing of tower {tower!r} must be a mapping, got {value!r}")
    unknown = sorted(set(value) - set(PREPROCESSING_KEYS))
    missing = [k for k in ("rescale_factor", "input_size") if value.get(k) is None]
    if unknown or missing:
        raise ValueError(f"tower_preprocessing of tower {tower!r}: unknown keys {unknown}, missing {missing}; it "
                         f"takes {list(PREPROCESSING_KEYS)}")
    mean = _floats(value.get("image_mean"), "image_mean", tower)
    std = _floats(value.get("image_std"), "image_std", tower, positive=True)
    if (mean is None) != (std is None) or (mean is not None and len(mean) != len(std)):
        raise ValueError(f"tower_preprocessing of tower {tower!r} needs image_mean and image_std of one length "
                         f"(or neither), got {mean} and {std}")
    size = value["input_size"]
    size = [size, size] if isinstance(size, int) else list(size)
    if len(size) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and 0 < s <= MAX_IMAGE_SIDE
                                 for s in size):
        raise ValueError(f"tower_preprocessing['input_size'] of tower {tower!r} must be [height, width] of 1 to "
                         f"{MAX_IMAGE_SIDE} pixels, got {value['input_size']!r}")
    return {"rescale_factor": _floats(value["rescale_factor"], "rescale_factor", tower, positive=True)[0],
            "image_mean": mean, "image_std": std, "input_size": size,
            "source": str(value.get("source") or "given in vision_config.tower_preprocessing")}


def _processor_size(processor: Mapping[str, Any]) -> list[int] | None:
    """The tower's input size: the centre crop when the processor crops, else its resize target."""
    size = processor.get("crop_size") if processor.get("do_center_crop") else None
    size = size if size is not None else processor.get("size")
    if isinstance(size, int):
        return [size, size]
    if isinstance(size, Mapping):
        if "height" in size and "width" in size:
            return [int(size["height"]), int(size["width"])]
        if "shortest_edge" in size:
            return [int(size["shortest_edge"])] * 2
    return None


def preprocessing_from_processor(processor: Mapping[str, Any] | None, tower: str, where: str) -> dict[str, Any]:
    """The convention of a transformers tower from its saved image-processor dict (``preprocessor_config.json``);
    ``ValueError`` naming the tower and what is missing."""
    hint = ("pass vision_config.tower_preprocessing={'rescale_factor': ..., 'image_mean': [...] or None, "
            "'image_std': [...] or None, 'input_size': [h, w]} from the tower's documentation")
    if processor is None:
        raise ValueError(f"cannot determine the input convention of tower {tower!r}: {where} has no "
                         f"preprocessor_config.json; {hint}")
    rescale = processor.get("rescale_factor") if processor.get("do_rescale", True) else 1.0
    normalise = processor.get("do_normalize", True)
    value = {"rescale_factor": rescale, "input_size": _processor_size(processor),
             "image_mean": processor.get("image_mean") if normalise else None,
             "image_std": processor.get("image_std") if normalise else None, "source": f"{where}"}
    missing = [k for k in ("rescale_factor", "input_size") if value[k] is None]
    if normalise:
        missing += [k for k in ("image_mean", "image_std") if value[k] is None]
    if missing:
        raise ValueError(f"cannot determine the input convention of tower {tower!r}: its preprocessor_config.json "
                         f"({where}) does not give {missing}; {hint}")
    return checked_tower_preprocessing(value, tower)


def preprocessing_from_timm(pretrained_cfg: Mapping[str, Any], tower: str, where: str) -> dict[str, Any]:
    """The convention of a pretrained timm model: its ``pretrained_cfg`` mean / std / input size on timm's [0, 1]
    scale (timm's transforms divide 8-bit images by 255)."""
    if not pretrained_cfg.get("mean") or not pretrained_cfg.get("input_size"):
        raise ValueError(f"cannot determine the input convention of timm tower {tower!r}: its pretrained_cfg has no "
                         f"mean / input_size; pass vision_config.tower_preprocessing")
    return checked_tower_preprocessing({
        "rescale_factor": 1 / 255, "image_mean": list(pretrained_cfg["mean"]), "image_std": list(pretrained_cfg["std"]),
        "input_size": list(pretrained_cfg["input_size"][-2:]), "source": where}, tower)


def channel_values(values: Sequence[float], in_channels: int) -> list[float]:
    """Per-input-channel values for a tower fed ``in_channels`` channels: the tower's own when the counts match
    (RGB towers under ``per_channel``, which replicate a channel to RGB), else their mean for every channel (a stem
    adapted to another channel count has no per-channel meaning left)."""
    values = list(values)
    if len(values) == in_channels:
        return values
    return [sum(values) / len(values)] * in_channels


class TowerNormalize(nn.Module):
    """``(x - image_mean) / image_std`` over the tower's input channels; the identity for a tower without them.

    The values come from the config, so they are non-persistent buffers, not weights.
    """

    def __init__(self, preprocessing: Mapping[str, Any] | None, in_channels: int):
        super().__init__()
        self.active = bool(preprocessing and preprocessing.get("image_mean") is not None)
        mean = channel_values(preprocessing["image_mean"], in_channels) if self.active else [0.0] * in_channels
        std = channel_values(preprocessing["image_std"], in_channels) if self.active else [1.0] * in_channels
        self.values = {"mean": mean, "std": std}
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def config_values(self, name: str) -> torch.Tensor:
        """The buffer ``name`` as the config gives it, for re-initialising it after a meta-device load (the model's
        ``_init_weights`` refills non-persistent buffers)."""
        return torch.tensor(self.values[name]).view(1, -1, 1, 1)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return pixel_values
        return (pixel_values - self.mean.to(pixel_values.dtype)) / self.std.to(pixel_values.dtype)


__all__ = ["PREPROCESSING_KEYS", "TowerNormalize", "channel_values", "checked_tower_preprocessing",
           "preprocessing_from_processor", "preprocessing_from_timm"]
