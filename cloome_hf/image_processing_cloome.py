"""Image processor for CLOOME: raw Cell Painting sites -> `pixel_values` the published weights expect.

A *site* is one field of view imaged in several fluorescence channels. The processor

1. reads it (per-channel files, a channel-name mapping, a pre-processed Bray 2017 `.npz`, or an array),
2. puts the channels in `channel_order` (JUMP names DNA/ER/RNA/AGP are accepted as aliases),
3. converts each 16-bit channel to 8 bit with the clipping rule used to build the published training data
   (`rescale_to_uint8`),
4. centre-crops to `crop_size` and
5. normalises per channel (default `x / m - 1` with the published channel means `m`).

Steps 3 and 5 are fused into one 65,536-entry lookup table per channel, so each output pixel costs one gather
and the result is bit-identical to running the steps one after another.
"""


import math
import os
from collections.abc import Mapping, Sequence
from typing import Any, TypedDict

import numpy as np
from PIL import Image
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature

from .channels import (
    CHANNELS,
    DEFAULT_CLIP_FRACTION,
    DEFAULT_INTENSITY_SCALE,
    SITE_SIZE,
    canonical_channel_name,
    published_channel_means,
)
from .image_files import read_image_file

DEFAULT_CROP_SIZE = {"height": SITE_SIZE[0], "width": SITE_SIZE[1]}
_UINT16_VALUES = 65536
# PIL modes that hold one intensity band: 8 bit, 16 bit (any byte order), 32-bit integer and float.
PIL_CHANNEL_MODES = ("L", "I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def _clip_rank(num_pixels: int, clip_fraction: float) -> int:
    """n = round(H*W*fraction), clamped to [1, H*W].

    n = 0 (tiny images or fraction 0) is read as "the largest value", i.e. no pixel is clipped below the maximum;
    n > H*W (fraction > 1) is read as "the smallest value". Both keep T a value that occurs in the channel.
    """
    if not 0 <= clip_fraction <= 1:
        raise ValueError(f"intensity_clip_fraction must lie in [0, 1], got {clip_fraction}")
    return int(min(max(round(num_pixels * clip_fraction), 1), num_pixels))


def _uint16_threshold(channel: np.ndarray, clip_fraction: float) -> int:
    """T = n-th largest value of a uint16 channel.

    One selection pass: numpy's introselect (SIMD-accelerated for 16-bit integers) is exact and about ten times
    faster than `np.argpartition`; a 65,536-bin histogram is equally exact but was ~10x slower (AVX-512 CPU).
    """
    flat = channel.ravel()
    k = flat.size - _clip_rank(flat.size, clip_fraction)
    return int(np.partition(flat, k)[k])


def _uint8_lut(threshold: float, scale: float) -> np.ndarray:
    """uint8 value of every possible uint16 input, with exactly the float64 reference expression."""
    if threshold <= 0:
        return np.zeros(_UINT16_VALUES, dtype=np.uint8)
    factor = np.float64(scale) / np.float64(threshold)
    return np.minimum(np.arange(_UINT16_VALUES, dtype=np.float64) * factor, 255.0).astype(np.uint8)


def rescale_to_uint8(
    channel: np.ndarray, clip_fraction: float = DEFAULT_CLIP_FRACTION, scale: float = DEFAULT_INTENSITY_SCALE
) -> np.ndarray:
    """Convert one channel to 8 bit the way the published CLOOME training data was built.

    With n = round(H*W*clip_fraction) (clamped to [1, H*W]) and T the n-th largest pixel value:
    `out = uint8(min(x * (scale / T), 255))` in float64, the factor first, truncated toward zero; x <= 0 -> 0;
    a blank channel (T <= 0) gives zeros. The upstream inference helper used `clip_fraction=1e-4, scale=255`.

    uint16 input uses one selection pass for T and a 65,536-entry lookup table evaluated with the same float64
    expression, so the result is bit-for-bit the reference formula. Other integer or float input uses
    `np.partition` and the vectorised formula.

    Args:
        channel: (H, W) array (any real dtype).
        clip_fraction: fraction of pixels that saturate.
        scale: intensity that T maps to (256 saturates T itself).

    Returns:
        (H, W) uint8 array.
    """
    channel = np.asarray(channel)
    if channel.ndim != 2:
        raise ValueError(f"rescale_to_uint8 expects one (H, W) channel, got shape {channel.shape}")
    if channel.size == 0:
        raise ValueError("rescale_to_uint8 got an empty channel")
    if channel.dtype == np.uint16:
        # mode="clip" skips the bounds check: a uint16 index can never leave the 65,536-entry table.
        return np.take(_uint8_lut(_uint16_threshold(channel, clip_fraction), scale), channel, mode="clip")
    if not (np.issubdtype(channel.dtype, np.integer) or np.issubdtype(channel.dtype, np.floating)):
        raise ValueError(f"rescale_to_uint8 expects a real-valued channel, got dtype {channel.dtype}")
    values = channel.astype(np.float64, copy=False)
    if not np.isfinite(values).all():
        raise ValueError("rescale_to_uint8 got NaN or infinite pixel values")
    n = _clip_rank(values.size, clip_fraction)
    flat = values.ravel()
    threshold = np.partition(flat, flat.size - n)[flat.size - n]
    if threshold <= 0:
        return np.zeros(channel.shape, dtype=np.uint8)
    out = np.minimum(values * (np.float64(scale) / threshold), 255.0)
    return np.maximum(out, 0.0).astype(np.uint8)


def _pil_band(image: Image.Image, what: str) -> np.ndarray:
    """The current page of a single-band PIL image as an (H, W) array; other modes are refused, naming them."""
    if image.mode not in PIL_CHANNEL_MODES:
        raise ValueError(
            f"{what}: PIL image mode {image.mode!r} ({len(image.getbands())} band(s)) is not one fluorescence channel; "
            f"a channel must be a single-band image of mode {', '.join(PIL_CHANNEL_MODES)}"
        )
    return np.asarray(image)


def _pil_pages(image: Image.Image) -> int:
    return getattr(image, "n_frames", 1)


def pil_channel(image: Image.Image, what: str) -> np.ndarray:
    """One channel given as a single-page, single-band PIL image -> (H, W) array."""
    if _pil_pages(image) != 1:
        raise ValueError(f"{what}: a channel must be a single-page image, got one with {_pil_pages(image)} pages")
    return _pil_band(image, what)


def pil_site(image: Image.Image, what: str) -> np.ndarray:
    """A whole site given as a multi-page PIL image (one single-band page per channel) -> (C, H, W) array."""
    position = image.tell()
    try:
        pages = []
        for page in range(_pil_pages(image)):
            image.seek(page)
            pages.append(_pil_band(image, f"{what}, page {page}"))
    finally:
        image.seek(position)  # leave the caller's image where it was
    if len({p.shape for p in pages}) != 1:
        raise ValueError(f"{what}: the pages have different sizes {[p.shape for p in pages]}")
    return np.stack(pages)


def _real(value: Any, what: str) -> float:
    """``float(value)`` for a real number (not a bool, string or container); ``ValueError`` naming ``what``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{what} must be a real number, got {value!r}")
    return float(value)


def _checked_crop(crop: Any) -> dict[str, int]:
    """``{"height": h, "width": w}`` with positive integer sides (the default site size when ``None``)."""
    crop = DEFAULT_CROP_SIZE if crop is None else crop
    if not isinstance(crop, Mapping) or set(crop) != {"height", "width"}:
        raise ValueError(f"crop_size must be a dict with keys 'height' and 'width', got {crop!r}")
    sides = {k: _real(crop[k], f"crop_size[{k!r}]") for k in ("height", "width")}
    if not all(v >= 1 and v == int(v) for v in sides.values()):
        raise ValueError(f"crop_size sides must be positive integers, got {dict(crop)!r}")
    return {k: int(v) for k, v in sides.items()}


def _checked_channel_values(key: str, value: Any, order: Sequence[str]) -> list[float]:
    """One finite value per channel of ``order`` (a scalar applies to every channel; ``None``: the published
    channel means)."""
    if value is None:
        value = published_channel_means(order)
    if np.ndim(value) == 0:
        value = [value] * len(order)
    elif np.ndim(value) != 1:
        raise ValueError(f"{key} must be a number or one number per channel, got {value!r}")
    value = [_real(v, key) for v in value]
    if len(value) != len(order):
        raise ValueError(f"{key} has {len(value)} entries but channel_order has {len(order)} channels")
    if not all(math.isfinite(v) for v in value):
        raise ValueError(f"{key} must be finite, got {value}")
    return value


def _check_normalisation_finite(mean: Sequence[float], std: Sequence[float], order: Sequence[str]) -> None:
    """Refuse a mean / std that the float32 normalisation cannot carry: a std that is subnormal (or zero) in
    float32 (1e-45), or one that sends the 8-bit range [0, 255] past float32's range, naming the channel."""
    tiny = np.finfo(np.float32).tiny
    with np.errstate(all="ignore"):
        for name, m, s in zip(order, mean, std):
            m32, s32 = np.float32(m), np.float32(s)
            ends = (np.float32(0) - m32) / s32, (np.float32(255) - m32) / s32
            if not (np.isfinite(m32) and s32 >= tiny and all(np.isfinite(e) for e in ends)):
                raise ValueError(f"image_mean / image_std of channel {name!r} ({m!r}, {s!r}) give non-finite float32 "
                                 f"pixel values; use a std of at least {tiny:.3g} and values within float32's range")


class CloomeImageProcessorKwargs(TypedDict, total=False):
    """Call-time overrides accepted by `CloomeImageProcessor.__call__` (same names as the constructor).

    The types are checked when the processor routes `images_kwargs` (transformers' strict validation), so they
    admit every form the constructor accepts (ints where floats are meant, a scalar mean for all channels).
    """

    channel_order: Sequence[str]
    do_rescale_to_uint8: bool
    intensity_clip_fraction: int | float
    intensity_scale: int | float
    do_center_crop: bool
    crop_size: dict[str, int]
    do_normalize: bool
    image_mean: int | float | Sequence[int | float]
    image_std: int | float | Sequence[int | float]
    do_per_image_standardize: bool
    input_data_format: str | None


class CloomeImageProcessor(BaseImageProcessor):
    r"""Cell Painting image processor for CLOOME.

    Accepted `images` (one site, or a list of sites; a 4-D array is a batch):

    - a mapping `{channel_name: path_or_array}` with the names of `channel_order` (or their JUMP aliases
      DNA=Hoechst, ER=ERSyto, RNA=ERSytoBleed, AGP=Ph_golgi), in any order;
    - a list of per-channel file paths, **in `channel_order`**;
    - a path to a pre-processed Bray 2017 `.npz` site (key `sample`, uint8 H x W x C in the canonical order;
      other keys are never unpickled), or to a multi-channel `.tif`/`.npy`;
    - a numpy array / torch tensor, C x H x W (or H x W x C, see `input_data_format`), in `channel_order`,
      uint16 (raw), uint8 (already 8 bit: the 16->8-bit step is skipped) or another real dtype (raw intensities);
    - `PIL.Image` objects: one single-band image per channel (in a mapping or a list, as for files), or one
      multi-page image with a page per channel in `channel_order` (modes L, I;16, I or F; RGB and other
      multi-band modes are refused).

    Args:
        channel_order: channel names of the output, in order (default the canonical CLOOME order).
        do_rescale_to_uint8: apply `rescale_to_uint8` to every non-uint8 channel.
        intensity_clip_fraction / intensity_scale: its parameters (published data: 2.8e-5 / 256;
            upstream inference helper: 1e-4 / 255).
        do_center_crop / crop_size: centre crop to `{"height", "width"}` (520 x 520 = the zero-shot setting).
        do_normalize / image_mean / image_std: `(x - mean) / std` per channel in float32; the default
            `mean = std = m` is the published `x / m - 1`.
        do_per_image_standardize: afterwards, standardise each channel of each image to zero mean, unit std.
        input_data_format: "channels_first", "channels_last" or None (inferred from the channel count).

    Output: `BatchFeature(pixel_values=(N, C, crop_h, crop_w) float32)`.
    """

    model_input_names = ["pixel_values"]
    valid_kwargs = CloomeImageProcessorKwargs

    def __init__(
        self,
        channel_order: Sequence[str] = CHANNELS,
        do_rescale_to_uint8: bool = True,
        intensity_clip_fraction: float = DEFAULT_CLIP_FRACTION,
        intensity_scale: float = DEFAULT_INTENSITY_SCALE,
        do_center_crop: bool = True,
        crop_size: Mapping[str, int] | None = None,
        do_normalize: bool = True,
        image_mean: Sequence[float] | None = None,
        image_std: Sequence[float] | None = None,
        do_per_image_standardize: bool = False,
        input_data_format: str | None = None,
        **kwargs,
    ):
        kwargs.pop("image_processor_type", None)
        super().__init__(**kwargs)
        settings = self._resolve(
            channel_order=channel_order,
            do_rescale_to_uint8=do_rescale_to_uint8,
            intensity_clip_fraction=intensity_clip_fraction,
            intensity_scale=intensity_scale,
            do_center_crop=do_center_crop,
            crop_size=crop_size,
            do_normalize=do_normalize,
            image_mean=image_mean,
            image_std=image_std,
            do_per_image_standardize=do_per_image_standardize,
            input_data_format=input_data_format,
        )
        for key, value in settings.items():
            setattr(self, key, value)

    # ------------------------------------------------------------------ settings
    @staticmethod
    def _resolve(**settings) -> dict[str, Any]:
        """Validate settings and bring them to their JSON-friendly canonical form."""
        order = [canonical_channel_name(c) for c in settings["channel_order"]]
        if len(set(order)) != len(order):
            raise ValueError(f"channel_order has duplicate channels after alias mapping: {order}")
        settings["channel_order"] = order
        settings["crop_size"] = _checked_crop(settings["crop_size"])
        for key in ("image_mean", "image_std"):
            settings[key] = _checked_channel_values(key, settings[key], order)
        if not all(s > 0 for s in settings["image_std"]):
            raise ValueError(f"image_std must be positive (it divides), got {settings['image_std']}")
        _check_normalisation_finite(settings["image_mean"], settings["image_std"], order)
        fmt = settings["input_data_format"]
        fmt = getattr(fmt, "value", fmt)
        if fmt not in (None, "channels_first", "channels_last"):
            raise ValueError(f"input_data_format must be 'channels_first', 'channels_last' or None, got {fmt!r}")
        settings["input_data_format"] = fmt
        _clip_rank(1, settings["intensity_clip_fraction"])  # validates the range
        settings["intensity_clip_fraction"] = float(settings["intensity_clip_fraction"])
        scale = _real(settings["intensity_scale"], "intensity_scale")
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"intensity_scale must be a positive finite number, got {settings['intensity_scale']!r}")
        settings["intensity_scale"] = scale
        for key in ("do_rescale_to_uint8", "do_center_crop", "do_normalize", "do_per_image_standardize"):
            settings[key] = bool(settings[key])
        return settings

    def _settings(self, overrides: Mapping[str, Any]) -> dict[str, Any]:
        unknown = set(overrides) - set(CloomeImageProcessorKwargs.__annotations__)
        if unknown:
            raise ValueError(f"Unknown CloomeImageProcessor argument(s): {sorted(unknown)}")
        current = {k: getattr(self, k) for k in CloomeImageProcessorKwargs.__annotations__}
        if "channel_order" in overrides:
            new_order = [canonical_channel_name(c) for c in overrides["channel_order"]]
            for key in ("image_mean", "image_std"):
                if key in overrides:
                    continue
                if sorted(new_order) == sorted(current["channel_order"]):  # a permutation keeps each channel's value
                    current[key] = [current[key][current["channel_order"].index(c)] for c in new_order]
                else:
                    current[key] = None  # re-derived from the published means
        current.update(overrides)
        return self._resolve(**current)

    # ------------------------------------------------------------------ reading
    @staticmethod
    def _as_array(value: Any, what: str) -> np.ndarray:
        if isinstance(value, (str, os.PathLike)):
            return read_image_file(value)
        if isinstance(value, Image.Image):
            return pil_channel(value, what)
        if hasattr(value, "detach") and hasattr(value, "cpu"):  # torch tensor
            value = value.detach().cpu().numpy()
        try:
            array = np.asarray(value)
        except Exception as err:
            raise ValueError(f"{what}: cannot convert {type(value).__name__} to an array") from err
        if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
            raise ValueError(f"{what}: expected a real-valued image, got dtype {array.dtype}")
        return array

    @staticmethod
    def _is_site(item: Any) -> bool:
        """True when `item` is one site (as opposed to a batch of sites)."""
        if isinstance(item, (Mapping, str, os.PathLike)):
            return True
        if isinstance(item, Image.Image):  # a multi-page image is a whole site (a single page is refused there)
            return True
        if isinstance(item, (list, tuple)):
            if len(item) > 0 and all(isinstance(x, Image.Image) and _pil_pages(x) == 1 for x in item):
                return True  # one single-page image per channel
            return len(item) > 0 and all(isinstance(x, (str, os.PathLike)) for x in item) and not any(
                os.fspath(x).lower().endswith(".npz") for x in item
            )
        return np.ndim(item) == 3 if hasattr(item, "shape") else False

    def _read_channels(self, site: Any, settings: Mapping[str, Any], index: int) -> list[np.ndarray]:
        """One site -> list of (H, W) channels in `channel_order` (dtype untouched)."""
        order = settings["channel_order"]
        where = f"site {index}"
        if isinstance(site, Mapping):
            by_name: dict[str, Any] = {}
            for key, value in site.items():
                name = canonical_channel_name(key)
                if name not in order:
                    raise ValueError(f"{where}: unknown channel {key!r}; expected channels {order} (or JUMP aliases)")
                if name in by_name:
                    raise ValueError(f"{where}: channel {name!r} given twice (as {key!r} and an alias)")
                by_name[name] = value
            missing = [c for c in order if c not in by_name]
            if missing:
                raise ValueError(f"{where}: missing channel(s) {missing}")
            channels = [self._as_array(by_name[c], f"{where}, channel {c!r}") for c in order]
            for c, array in zip(order, channels):
                if array.ndim != 2:
                    raise ValueError(f"{where}: channel {c!r} must be a 2-D image, got shape {array.shape}")
        elif isinstance(site, Image.Image):
            array = pil_site(site, f"{where} (PIL image)")
            if array.shape[0] != len(order):
                raise ValueError(f"{where}: the PIL image has {array.shape[0]} page(s), expected one per channel "
                                 f"of {order}")
            channels = list(array)
        elif isinstance(site, (list, tuple)):
            if len(site) != len(order):
                raise ValueError(f"{where}: got {len(site)} channel files, expected {len(order)} ({order})")
            channels = [self._as_array(p, f"{where}, channel {c!r} ({p})") for c, p in zip(order, site)]
            for c, p, array in zip(order, site, channels):
                if array.ndim != 2:
                    raise ValueError(f"{where}: channel {c!r} file {p} must hold one 2-D image, got {array.shape}")
        else:
            is_path = isinstance(site, (str, os.PathLike))
            is_npz = is_path and os.fspath(site).lower().endswith(".npz")
            where = f"{where} ({os.fspath(site)})" if is_path else where
            array = self._as_array(site, where)
            if is_npz:
                # Bray 2017 .npz sites are stored in the canonical order.
                stored = list(CHANNELS)
                if array.shape[0] != len(stored) or set(order) - set(stored):
                    raise ValueError(f"{where}: .npz {site} holds {array.shape[0]} canonical channels, "
                                     f"cannot provide {order}")
                array = array[[stored.index(c) for c in order]]
            else:
                array = self._to_channels_first(array, len(order), settings["input_data_format"], where)
            channels = list(array)
        shapes = {c.shape for c in channels}
        if len(shapes) != 1:
            detail = ", ".join(f"{name}: {c.shape}" for name, c in zip(order, channels))
            raise ValueError(f"{where}: channels have different shapes ({detail})")
        return channels

    @staticmethod
    def _to_channels_first(array: np.ndarray, num_channels: int, fmt: str | None, where: str) -> np.ndarray:
        if array.ndim != 3:
            raise ValueError(f"{where}: expected a C x H x W image, got shape {array.shape}")
        looks_channels_last = array.shape[0] != num_channels and array.shape[-1] == num_channels
        if fmt == "channels_last" or (fmt is None and looks_channels_last):
            array = np.moveaxis(array, -1, 0)
        if array.shape[0] != num_channels:
            raise ValueError(f"{where}: got {array.shape[0]} channels (shape {array.shape}), expected {num_channels}")
        return array

    def _sites(self, images: Any) -> list[Any]:
        if images is None:
            raise ValueError("images must not be None")
        if hasattr(images, "shape") and np.ndim(images) == 4:
            return list(images)
        if self._is_site(images):
            return [images]
        if isinstance(images, (list, tuple)):
            if len(images) == 0:
                raise ValueError("images is an empty list")
            return list(images)
        raise ValueError(f"Unsupported images input of type {type(images).__name__}")

    # ------------------------------------------------------------------ processing
    def load_uint8_site(self, image_input: Any, **overrides) -> np.ndarray:
        """Read one site, order its channels and convert it to 8 bit (no crop, no normalisation).

        Returns:
            (C, H, W) uint8 array in `channel_order`.
        """
        settings = self._settings(overrides)
        channels = self._read_channels(image_input, settings, 0)
        out = np.empty((len(channels),) + channels[0].shape, dtype=np.uint8)
        for c, (name, channel) in enumerate(zip(settings["channel_order"], channels)):
            if channel.dtype == np.uint8:
                out[c] = channel
            elif settings["do_rescale_to_uint8"]:
                out[c] = rescale_to_uint8(channel, settings["intensity_clip_fraction"], settings["intensity_scale"])
            else:
                raise ValueError(f"channel {name!r} has dtype {channel.dtype}; load_uint8_site needs uint8 input "
                                 "or do_rescale_to_uint8=True")
        return out

    @staticmethod
    def _crop_window(height: int, width: int, settings: Mapping[str, Any], where: str) -> tuple[slice, slice]:
        if not settings["do_center_crop"]:
            return slice(0, height), slice(0, width)
        ch, cw = settings["crop_size"]["height"], settings["crop_size"]["width"]
        if ch > height or cw > width:
            raise ValueError(f"{where}: crop_size {ch}x{cw} is larger than the image {height}x{width}")
        top, left = (height - ch) // 2, (width - cw) // 2
        return slice(top, top + ch), slice(left, left + cw)

    def _process_channel(self, channel: np.ndarray, c: int, window, settings, out: np.ndarray) -> None:
        """Write one processed channel into `out` (crop_h, crop_w) float32."""
        mean, std = np.float32(settings["image_mean"][c]), np.float32(settings["image_std"][c])
        rescale = settings["do_rescale_to_uint8"] and channel.dtype != np.uint8
        if rescale and channel.dtype == np.uint16:
            lut = _uint8_lut(_uint16_threshold(channel, settings["intensity_clip_fraction"]),
                             settings["intensity_scale"]).astype(np.float32)
            if settings["do_normalize"]:
                lut = (lut - mean) / std  # same float32 ops as normalising the cropped uint8 image
            np.take(lut, channel[window], out=out, mode="clip")  # 16 bit -> (normalised) float32 in one gather
            return
        if rescale:
            # The 8-bit threshold is a property of the whole frame, so convert before cropping.
            values = rescale_to_uint8(channel, settings["intensity_clip_fraction"], settings["intensity_scale"])
        else:
            values = channel
        out[...] = values[window]
        if settings["do_normalize"]:
            out -= mean
            out /= std

    def preprocess(self, images: Any, return_tensors: str | None = None, **overrides) -> BatchFeature:
        """Process one site or a batch of sites into `pixel_values` (N, C, H, W) float32.

        Keyword overrides take the constructor's names (e.g. `crop_size={"height": 520, "width": 520}`).
        """
        settings = self._settings(overrides)
        sites = self._sites(images)
        batch: np.ndarray | None = None
        for i, site in enumerate(sites):
            if not self._is_site(site):
                raise ValueError(f"site {i}: unsupported input of type {type(site).__name__} "
                                 f"(shape {getattr(site, 'shape', None)})")
            channels = self._read_channels(site, settings, i)
            window = self._crop_window(*channels[0].shape, settings, f"site {i}")
            shape = (window[0].stop - window[0].start, window[1].stop - window[1].start)
            if batch is None:
                batch = np.empty((len(sites), len(channels)) + shape, dtype=np.float32)
            elif batch.shape[2:] != shape:
                raise ValueError(f"site {i}: processed size {shape} differs from site 0 {batch.shape[2:]}; "
                                 "enable do_center_crop to batch sites of different sizes")
            for c, channel in enumerate(channels):
                self._process_channel(channel, c, window, settings, batch[i, c])
        if settings["do_per_image_standardize"]:
            mean = batch.mean(axis=(2, 3), keepdims=True)
            std = batch.std(axis=(2, 3), keepdims=True)
            batch = (batch - mean) / (std + np.float32(1e-6))
        if batch is not None and not np.isfinite(batch).all():  # e.g. float inputs of 1e38 over a small std
            site, channel = (int(i) for i in np.argwhere(~np.isfinite(batch))[0][:2])
            raise ValueError(f"site {site}: channel {settings['channel_order'][channel]!r} gives non-finite "
                             "pixel_values (NaN or inf) after normalisation; check its values and image_mean / image_std")
        return BatchFeature(data={"pixel_values": batch}, tensor_type=return_tensors)

    def __call__(self, images: Any, return_tensors: str | None = None, **overrides) -> BatchFeature:
        return self.preprocess(images, return_tensors=return_tensors, **overrides)

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        output["channel_order"] = list(output["channel_order"])
        return output


__all__ = ["CloomeImageProcessor", "rescale_to_uint8"]  # channel constants: import them from cloome_hf.channels
