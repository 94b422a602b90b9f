"""The one owner of site pictures: a Cell Painting site ``(C, H, W)`` as a composite colour picture.

Each named channel gets one colour (:data:`CHANNEL_COLOURS`, keyed by the canonical names of
:mod:`cloome_hf.channels`, so JUMP names such as ``DNA`` or ``AGP`` map too), is contrast-stretched between two of
its own percentiles, and the coloured channels are added and clipped to ``[0, 1]``. The default mapping follows
the common Cell Painting display convention:

=============  ==========  =========
canonical      JUMP name   colour
=============  ==========  =========
Hoechst        DNA         blue
ERSyto         ER          green
ERSytoBleed    RNA         yellow
Ph_golgi       AGP         red
Mito           Mito        magenta
=============  ==========  =========

Pass ``colours={"Mito": (0, 1, 1)}`` to override any of them (other names keep the default).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..channels import canonical_channel_name

RGB = tuple[float, float, float]

#: Canonical channel name -> RGB colour in [0, 1] (see the module docstring).
CHANNEL_COLOURS: dict[str, RGB] = {
    "Hoechst": (0.0, 0.0, 1.0),
    "ERSyto": (0.0, 1.0, 0.0),
    "ERSytoBleed": (1.0, 1.0, 0.0),
    "Ph_golgi": (1.0, 0.0, 0.0),
    "Mito": (1.0, 0.0, 1.0),
}

#: Default low and high percentiles of each channel's contrast stretch.
DEFAULT_PERCENTILES: tuple[float, float] = (1.0, 99.5)


def channel_colours(channel_names: Sequence[str], colours: Mapping[str, RGB] | None = None) -> list[RGB]:
    """The colour of each channel, in order; ``ValueError`` naming a channel without one."""
    table = {canonical_channel_name(k): tuple(float(c) for c in v) for k, v in CHANNEL_COLOURS.items()}
    for name, colour in (colours or {}).items():
        if len(colour) != 3 or not all(0.0 <= float(c) <= 1.0 for c in colour):
            raise ValueError(f"colour for channel {name!r} must be 3 numbers in [0, 1], got {colour!r}")
        table[canonical_channel_name(name)] = tuple(float(c) for c in colour)
    out = []
    for name in channel_names:
        key = canonical_channel_name(name)
        if key not in table:
            raise ValueError(f"no colour for channel {name!r}; known: {sorted(table)} (pass colours={{...}})")
        out.append(table[key])
    return out


def stretch_channel(plane: np.ndarray, percentiles: tuple[float, float] = DEFAULT_PERCENTILES) -> np.ndarray:
    """One ``(H, W)`` plane -> float32 in [0, 1]: the low percentile maps to 0, the high to 1, clipped.
    A flat plane (low == high) becomes 0 where it is not above the low value."""
    lo_p, hi_p = percentiles
    if not 0.0 <= lo_p < hi_p <= 100.0:
        raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {percentiles!r}")
    plane = np.asarray(plane, dtype=np.float32)
    finite = plane[np.isfinite(plane)]
    if finite.size == 0:
        return np.zeros(plane.shape, dtype=np.float32)
    lo, hi = np.percentile(finite, [lo_p, hi_p])
    scaled = (np.nan_to_num(plane, nan=lo) - lo) / max(float(hi - lo), 1e-12)
    return np.clip(scaled, 0.0, 1.0).astype(np.float32)


def site_picture(image: np.ndarray, channel_names: Sequence[str], colours: Mapping[str, RGB] | None = None,
                 percentiles: tuple[float, float] = DEFAULT_PERCENTILES, grid: bool = False) -> np.ndarray:
    """A site ``(C, H, W)`` -> ``(H, W, 3)`` uint8 composite picture.

    With ``grid=True`` the result is ``(H, W * (C + 1), 3)``: the composite followed by each channel alone in its
    colour (same contrast), left to right in ``channel_names`` order."""
    image = np.asarray(image)
    if image.ndim != 3:
        raise ValueError(f"a site picture needs a (C, H, W) array, got shape {image.shape}")
    if len(channel_names) != image.shape[0]:
        raise ValueError(f"the site has {image.shape[0]} channels but {len(channel_names)} names were given "
                         f"({list(channel_names)})")
    palette = np.asarray(channel_colours(channel_names, colours), dtype=np.float32)  # (C, 3)
    planes = np.stack([stretch_channel(p, percentiles) for p in image])  # (C, H, W)
    composite = np.clip(np.einsum("chw,cr->hwr", planes, palette), 0.0, 1.0)
    panels = [composite]
    if grid:
        panels += [planes[c][..., None] * palette[c] for c in range(len(planes))]
    return (np.concatenate(panels, axis=1) * 255.0 + 0.5).astype(np.uint8)


def colour_legend(channel_names: Sequence[str], colours: Mapping[str, RGB] | None = None) -> str:
    """``"Mito #ff00ff, ERSyto #00ff00, ..."``: each channel's colour as hex, in order (for cards and captions)."""
    return ", ".join(f"{name} #" + "".join(f"{round(255 * c):02x}" for c in rgb)
                     for name, rgb in zip(channel_names, channel_colours(channel_names, colours)))


def write_site_picture(path, site, channel_names: Sequence[str], grid: bool = True, max_side: int | None = None) -> str:
    """Save :func:`site_picture` of ``site`` as a PNG at ``path``: a ``(C, H, W)`` array, or a ``{channel: file}``
    mapping (e.g. :func:`cloome_hf.example_site`) read in ``channel_names`` order; ``max_side``: shrunk to fit
    that many pixels. Returns the path."""
    from PIL import Image

    if isinstance(site, Mapping):
        from ..channels import canonical_channel_name
        from ..image_files import read_image_file

        by_name = {canonical_channel_name(k): v for k, v in site.items()}
        site = np.stack([read_image_file(by_name[canonical_channel_name(c)]) for c in channel_names])
    picture = Image.fromarray(site_picture(site, channel_names, grid=grid))
    if max_side:
        picture.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    picture.save(path, format="PNG")
    return str(path)


__all__ = ["CHANNEL_COLOURS", "DEFAULT_PERCENTILES", "channel_colours", "colour_legend", "site_picture",
           "stretch_channel", "write_site_picture"]
