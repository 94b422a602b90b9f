"""A direct reader for the plain TIFFs microscopes write, with tifffile as the general reader behind it.

Cell Painting sites are single-page, uncompressed, one-sample-per-pixel TIFFs. tifffile spends about 2 ms per
file parsing MetaMorph (UIC) metadata that processing never uses, which is most of the time of converting a
site; reading the pixel block at its recorded offset takes ~0.05 ms. Anything else (compression, tiles,
several pages, unusual sample formats) returns None so the caller falls back to tifffile.

:func:`read_tiff` (the one TIFF reader of the package) refuses a file whose header declares more than
:data:`MAX_TIFF_PIXELS` pixels before any pixel memory is allocated: a 100-byte file can declare a
100,000 x 100,000 image.
"""

from __future__ import annotations

import io
import math
import struct

import numpy as np

#: The most pixels (all pages and samples together) a TIFF may declare. 2**28 = 268 M pixels (a 16,384 x
#: 16,384 image, 512 MiB at 16 bit) is ~50x a JUMP site (1,080 x 1,080 x 5) and ~700x a Bray 2017 channel;
#: raise it like PIL's ``Image.MAX_IMAGE_PIXELS``: ``cloome_hf.fast_tiff.MAX_TIFF_PIXELS = ...``.
MAX_TIFF_PIXELS = 2**28

_TIFF_TYPES = {3: ("H", 2), 4: ("I", 4)}  # SHORT, LONG: the only types the tags below may use
_TIFF_SAMPLE_FORMATS = {1: "u", 2: "i", 3: "f"}


def _check_size(num_pixels: int, where: str, max_pixels: int | None) -> None:
    limit = MAX_TIFF_PIXELS if max_pixels is None else max_pixels
    if num_pixels > limit:
        raise ValueError(f"{where}: the TIFF header declares {num_pixels:,} pixels, more than the limit of "
                         f"{limit:,} (cloome_hf.fast_tiff.MAX_TIFF_PIXELS); refusing to allocate it")


def read_tiff(source: str | bytes, where: str | None = None, max_pixels: int | None = None) -> np.ndarray:
    """A TIFF (a path, or the file's bytes) as an array: the fast path for plain microscope files, tifffile for
    the rest; ``ValueError`` naming ``where`` when the header declares more than ``max_pixels`` (default
    :data:`MAX_TIFF_PIXELS`) pixels."""
    import tifffile

    where = where or (source if isinstance(source, str) else "TIFF data")
    if isinstance(source, str):
        array = read_plain_tiff(source, max_pixels)
        if array is not None:
            return array
    with tifffile.TiffFile(source if isinstance(source, str) else io.BytesIO(source)) as tif:
        if not tif.series:  # a damaged file: the caller reports "no image data", naming it
            return np.zeros((0,), dtype=np.uint8)
        _check_size(math.prod(tif.series[0].shape), where, max_pixels)
        return tif.asarray()


def read_plain_tiff(path: str, max_pixels: int | None = None) -> np.ndarray | None:
    """Fast path for the common microscope file: a classic, single-image, uncompressed, one-sample-per-pixel TIFF
    whose strips are contiguous. Returns None for anything else (tifffile then reads it).

    tifffile spends ~1 ms per file parsing MetaMorph metadata (UIC tags) that processing does not need; reading
    the pixel block directly takes ~0.05 ms.
    """
    with open(path, "rb") as f:
        header = f.read(8)
        if len(header) < 8 or header[:4] not in (b"II*\x00", b"MM\x00*"):
            return None
        order = "<" if header[:2] == b"II" else ">"
        (ifd_offset,) = struct.unpack(order + "I", header[4:])
        f.seek(ifd_offset)
        raw_count = f.read(2)
        if len(raw_count) < 2:
            return None
        (num_entries,) = struct.unpack(order + "H", raw_count)
        entries = f.read(12 * num_entries + 4)
        if len(entries) < 12 * num_entries + 4:
            return None
        tags: dict[int, tuple[int, ...]] = {}
        for k in range(num_entries):
            code, kind, count = struct.unpack(order + "HHI", entries[12 * k : 12 * k + 8])
            if kind not in _TIFF_TYPES:
                tags[code] = ()  # present, but not a value we interpret
                continue
            fmt, size = _TIFF_TYPES[kind]
            if count * size <= 4:
                data = entries[12 * k + 8 : 12 * k + 8 + count * size]
            else:
                (offset,) = struct.unpack(order + "I", entries[12 * k + 8 : 12 * k + 12])
                f.seek(offset)
                data = f.read(count * size)
                if len(data) < count * size:
                    return None
            tags[code] = struct.unpack(order + fmt * count, data)
        (next_ifd,) = struct.unpack(order + "I", entries[-4:])
    simple = (
        next_ifd == 0  # one image
        and tags.get(259, (1,)) == (1,)  # uncompressed
        and tags.get(277, (1,)) == (1,)  # one sample per pixel
        and 322 not in tags  # not tiled
        and 33629 not in tags  # not a multi-plane MetaMorph stack
        and all(len(tags.get(code, ())) >= 1 for code in (256, 257, 273, 279))
        and len(tags.get(258, (1,))) == 1
        and len(tags.get(339, (1,))) == 1
        and tags.get(339, (1,))[0] in _TIFF_SAMPLE_FORMATS
        and tags.get(258, (1,))[0] in (8, 16, 32)
    )
    if not simple:
        return None
    width, height, bits = tags[256][0], tags[257][0], tags.get(258, (1,))[0]
    offsets, counts = tags[273], tags[279]
    if len(offsets) != len(counts) or any(o + c != n for o, c, n in zip(offsets, counts, offsets[1:])):
        return None  # strips are not one contiguous block
    _check_size(width * height, path, max_pixels)
    dtype = np.dtype(f"{order}{_TIFF_SAMPLE_FORMATS[tags.get(339, (1,))[0]]}{bits // 8}")
    if dtype.kind == "f" and bits == 8 or sum(counts) != width * height * dtype.itemsize:
        return None
    array = np.fromfile(path, dtype=dtype, count=width * height, offset=offsets[0])
    if array.size != width * height:
        return None
    return array.reshape(height, width).astype(dtype.newbyteorder("="), copy=False)
