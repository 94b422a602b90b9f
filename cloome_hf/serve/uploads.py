"""A site uploaded to the search page: one multi-channel file, or one file per channel, checked before encoding.

What goes to the encoder is what ``cloome search --images`` would get: the file path itself (one file), or the
processor's ``{channel: path}`` mapping (one file per channel), so a page result equals the command's. What is
refused names the file and the reason, for the page to show: too large a file or image, the wrong number of
channels, a per-channel file that is not one plane, or two files for one channel.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..channels import canonical_channel_name

#: The largest upload accepted, in bytes (a Bray site is ~1.8 MB, a 16-bit JUMP site ~10 MB).
MAX_UPLOAD_BYTES = 128 * 2**20
#: The largest plane accepted, in pixels (a JUMP site is 1080 x 1080; this allows 4096 x 4096).
MAX_SITE_PIXELS = 4096 * 4096


@dataclass
class UploadedSite:
    """``pixels``: ``(C, H, W)`` in ``channel_order`` (for the picture); ``query``: the processor input."""

    pixels: np.ndarray
    query: Any


def _check_size(path: str) -> None:
    size = os.path.getsize(path)
    if size > MAX_UPLOAD_BYTES:
        raise ValueError(f"{os.path.basename(path)} is {size / 2**20:.0f} MB; the page takes sites up to "
                         f"{MAX_UPLOAD_BYTES // 2**20} MB")


def _check_plane(shape: Sequence[int], name: str) -> None:
    if int(np.prod(shape[-2:])) > MAX_SITE_PIXELS:
        raise ValueError(f"{name} is {shape[-2]} x {shape[-1]} pixels; the page takes sites up to "
                         f"{MAX_SITE_PIXELS} pixels a channel (4096 x 4096)")


def _read(path: str) -> np.ndarray:
    from ..image_files import read_image_file

    _check_size(path)
    return read_image_file(path)


def _one_file(path: str, channel_order: Sequence[str]) -> UploadedSite:
    site, name, channels = _read(path), os.path.basename(path), len(channel_order)
    if site.ndim == 3 and site.shape[0] != channels and site.shape[-1] == channels:
        site = np.moveaxis(site, -1, 0)  # Bray .npz sites are H x W x C
    if site.ndim != 3 or site.shape[0] != channels:
        raise ValueError(f"{name}: a site needs {channels} channels ({', '.join(channel_order)}), got an array "
                         f"of shape {site.shape}; upload one multi-channel file or one file per channel")
    _check_plane(site.shape, name)
    return UploadedSite(site, path)


def channel_of_file(path: str, channel_order: Sequence[str]) -> str | None:
    """The channel a file name names (``A01_s1_DNA.tif`` -> ``Hoechst``), or ``None`` when it names none or
    several; a name matches as a whole word, canonical or JUMP alias, any case."""
    wanted = {canonical_channel_name(c) for c in channel_order}
    words = re.split(r"[^A-Za-z0-9]+", os.path.splitext(os.path.basename(path))[0])
    found = {canonical_channel_name(w) for w in words} & wanted
    return found.pop() if len(found) == 1 else None


def _per_channel(paths: Sequence[str], channel_order: Sequence[str]) -> UploadedSite:
    order = [canonical_channel_name(c) for c in channel_order]
    if len(paths) != len(order):
        raise ValueError(f"{len(paths)} files uploaded; a site needs one file per channel, {len(order)} "
                         f"({', '.join(channel_order)}), or one multi-channel file")
    named = [channel_of_file(p, order) for p in paths]
    if all(named):  # files named by channel: matched by name, in any upload order
        twice = sorted({c for c in named if named.count(c) > 1})
        if twice:
            raise ValueError(f"two files name channel {twice[0]}: "
                             f"{', '.join(os.path.basename(p) for p, c in zip(paths, named) if c == twice[0])}")
        paths = [paths[named.index(c)] for c in order]
    planes = []
    for path in paths:
        plane = _read(path)
        if plane.ndim == 3 and plane.shape[0] == 1:
            plane = plane[0]
        if plane.ndim != 2:
            raise ValueError(f"{os.path.basename(path)}: a per-channel file holds one plane, got shape {plane.shape}")
        _check_plane(plane.shape, os.path.basename(path))
        planes.append(plane)
    if len({p.shape for p in planes}) > 1:
        raise ValueError("the channel files differ in size: "
                         + ", ".join(f"{os.path.basename(p)} {a.shape}" for p, a in zip(paths, planes)))
    return UploadedSite(np.stack(planes), dict(zip(order, paths)))


def read_uploaded_site(paths: str | Sequence[str], channel_order: Sequence[str]) -> UploadedSite:
    """One file (``.npz``, ``.npy``, multi-page TIFF) or one file per channel -> :class:`UploadedSite`;
    ``ValueError`` naming the file and the reason for anything refused."""
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else [os.fspath(p) for p in paths]
    if not paths:
        raise ValueError("no file uploaded")
    return _one_file(paths[0], channel_order) if len(paths) == 1 else _per_channel(paths, channel_order)


__all__ = ["MAX_SITE_PIXELS", "MAX_UPLOAD_BYTES", "UploadedSite", "channel_of_file", "read_uploaded_site"]
