"""The one reader of image files: a local path (:func:`read_image_file`) or a file's bytes fetched from anywhere
(:func:`decode_image_bytes`) -> an array, with the same checks and the same messages for both.

Formats by suffix: ``.tif`` / ``.tiff`` (:func:`~cloome_hf.fast_tiff.read_tiff`: the fast path for plain
microscope files, and the :data:`~cloome_hf.fast_tiff.MAX_TIFF_PIXELS` limit), ``.npy``, ``.npz`` (a Bray 2017
site: key ``sample``, H x W x C, returned channels first) and anything PIL opens. Every failure is a
``ValueError`` naming the file: missing, empty or damaged TIFF, ``.npz`` without ``sample``, pickled arrays,
a dtype that is not a real number (strings, booleans, complex).
"""

from __future__ import annotations

import io
import os
from typing import BinaryIO

import numpy as np

from .fast_tiff import read_tiff

#: The key of a Bray 2017 ``.npz`` site (uint8, H x W x C in the canonical channel order).
NPZ_SITE_KEY = "sample"
TIFF_SUFFIXES = (".tif", ".tiff")


def read_image_file(path: str | os.PathLike) -> np.ndarray:
    """One local image file as an array; ``ValueError`` naming ``path`` when it is missing or cannot be read."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"Image file not found: {path}")
    return _decode(path, path)


def decode_image_bytes(data: bytes, location: str) -> np.ndarray:
    """The bytes of the image file at ``location`` (a URL, say) as an array; the format comes from the suffix of
    ``location``, and the checks and messages are those of :func:`read_image_file`."""
    return _decode(data, location)


def _decode(source: str | bytes, where: str) -> np.ndarray:
    array = _decode_any(source, where)
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ValueError(f"Could not read image file {where}: it holds dtype {array.dtype}, not a real-valued image")
    return array


def _decode_any(source: str | bytes, where: str) -> np.ndarray:
    suffix = os.path.splitext(where.split("?", 1)[0])[1].lower()
    try:
        if suffix in TIFF_SUFFIXES:
            array = read_tiff(source, where)
            if array.size == 0:  # tifffile returns an empty array for some damaged files
                raise ValueError(f"Could not read image file {where}: no image data")
            return array
        if suffix == ".npz":
            return _npz_site(_file(source), where)
        if suffix == ".npy":
            return np.load(_file(source), allow_pickle=False)
        from PIL import Image

        with Image.open(_file(source)) as image:
            return np.asarray(image)
    except ValueError as err:
        if where in str(err):
            raise
        raise ValueError(f"Could not read image file {where}: {err}") from err
    except Exception as err:  # damaged files raise many different exception types
        raise ValueError(f"Could not read image file {where}: {type(err).__name__}: {err}") from err


def _file(source: str | bytes) -> str | BinaryIO:
    return source if isinstance(source, str) else io.BytesIO(source)


def _npz_site(source: str | BinaryIO, where: str) -> np.ndarray:
    with np.load(source, allow_pickle=False) as archive:
        if NPZ_SITE_KEY not in archive.files:
            raise ValueError(f"{where}: .npz site has no '{NPZ_SITE_KEY}' array (keys: {archive.files})")
        array = archive[NPZ_SITE_KEY]  # only this key is read; pickled extras stay untouched
    if array.ndim != 3:
        raise ValueError(f"{where}: '{NPZ_SITE_KEY}' must be H x W x C, got shape {array.shape}")
    return np.moveaxis(array, -1, 0)
