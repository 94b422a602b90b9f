"""Illumination correction as CellProfiler's CorrectIlluminationApply applies it with "Divide".

A plate's illumination function for a channel (one ``.npy`` per plate and channel, e.g.
``.../illum/BR00117035/BR00117035_IllumDNA.npy`` in the Cell Painting Gallery) is an (H, W) float image of the
relative brightness of the optics; the corrected channel is ``raw / illum`` in floating point. The corrected
float image then goes through CLOOME's 16 -> 8 bit rule (:func:`cloome_hf.image_processing_cloome.rescale_to_uint8`),
which only depends on ratios to the clipping threshold, so the absolute scale of the function does not matter.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from typing import Any, Callable, Mapping

import numpy as np

#: Plates x channels of functions held at once (a 1080 x 1080 float64 function is 9 MB).
DEFAULT_CACHE_ENTRIES = 40


def correct_illumination(raw: np.ndarray, illum: np.ndarray) -> np.ndarray:
    """``raw / illum`` in float64 ((H, W) each; CellProfiler "Divide")."""
    if raw.shape != illum.shape:
        raise ValueError(f"illumination function of shape {illum.shape} does not match the image {raw.shape}")
    return np.asarray(raw, dtype=np.float64) / illum


def decode_illumination(data: bytes, location: str) -> np.ndarray:
    """Parse an illumination ``.npy`` (never unpickling) and check it: 2-D, real, finite and > 0 everywhere.

    Returns:
        (H, W) float64 array.
    """
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as err:  # noqa: BLE001 - a damaged or pickled file raises various types
        raise ValueError(f"illumination file {location} is not a plain .npy array: {type(err).__name__}: "
                         f"{err}") from err
    if not isinstance(array, np.ndarray) or array.ndim != 2:
        raise ValueError(f"illumination file {location} must hold one (H, W) image, got shape "
                         f"{getattr(array, 'shape', None)}")
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise ValueError(f"illumination file {location} has non-numeric dtype {array.dtype}")
    array = array.astype(np.float64)
    bad = ~np.isfinite(array) | (array <= 0)
    if bad.any():
        y, x = np.argwhere(bad)[0]
        raise ValueError(f"illumination file {location} has {int(bad.sum())} non-positive or non-finite values "
                         f"(first at row {y}, column {x}: {array[y, x]}); dividing by it is undefined")
    return array


class IlluminationCache:
    """Illumination functions read once per (plate, channel) and kept in a bounded LRU; safe across threads.

    Args:
        max_entries: functions held at once.
    """

    def __init__(self, max_entries: int = DEFAULT_CACHE_ENTRIES):
        self.max_entries = max_entries
        self._functions: OrderedDict[tuple[str, str], tuple[str, np.ndarray]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, plate: str, channel: str, location: str, shape: tuple[int, ...],
            read: Callable[[str], bytes]) -> np.ndarray:
        """The function of ``plate`` / ``channel`` (``read(location)`` the first time), checked against the
        image ``shape``; ``ValueError`` naming the file for a missing, damaged, wrong-shaped or non-positive one,
        or when one plate names two different files for a channel."""
        key = (str(plate), str(channel))
        with self._lock:
            hit = self._functions.get(key)
            if hit is not None:
                self._functions.move_to_end(key)
        if hit is None:
            array = decode_illumination(read(location), location)
            with self._lock:
                self._functions[key] = hit = (location, array)
                while len(self._functions) > self.max_entries:
                    self._functions.popitem(last=False)
        cached_location, array = hit
        if cached_location != location:
            raise ValueError(f"plate {plate} names two illumination files for channel {channel}: "
                             f"{cached_location} and {location}")
        if array.shape != tuple(shape):
            raise ValueError(f"illumination file {location} is {array.shape[0]}x{array.shape[1]} but the "
                             f"{channel} image is {shape[0]}x{shape[1]}")
        return array

    def __getstate__(self) -> Mapping[str, Any]:  # sent to worker processes without its lock or its arrays
        return {"max_entries": self.max_entries}

    def __setstate__(self, state: Mapping[str, Any]) -> None:
        self.__init__(state["max_entries"])
