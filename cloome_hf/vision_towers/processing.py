"""The image processor that feeds a tower: its recorded input convention turned into CloomeImageProcessor settings.

Kept out of the model's own modules (which a saved folder carries as remote code), so that loading a model does not
need the image-file readers.
"""

from __future__ import annotations

from typing import Any

from ..image_processing_cloome import CloomeImageProcessor


def tower_image_processor(vision_config, **overrides):
    """The :class:`~cloome_hf.CloomeImageProcessor` feeding ``vision_config``'s tower: 8-bit channels in the
    config's channel order, times the tower's ``rescale_factor``, centre-cropped to its ``input_size``; the full
    convention is recorded in the processor's ``tower_preprocessing`` (saved with it). A tower without a recorded
    convention (the CLOOME ResNet, timm models trained from scratch) gets the CLOOME defaults."""
    preprocessing = vision_config.tower_preprocessing
    settings: dict[str, Any] = {"channel_order": vision_config.channel_names}
    if preprocessing is not None:
        height, width = preprocessing["input_size"]
        scale = 1 / preprocessing["rescale_factor"]
        settings.update(crop_size={"height": height, "width": width}, do_center_crop=True, do_normalize=True,
                        image_mean=[0.0] * vision_config.num_channels,
                        image_std=[scale] * vision_config.num_channels,
                        tower_preprocessing=dict(preprocessing, backbone=vision_config.backbone))
    settings.update(overrides)
    return CloomeImageProcessor(**settings)


__all__ = ["tower_image_processor"]
