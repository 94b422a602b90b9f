"""The per-image CPU pixel work of :class:`~cloome_hf.transforms.CloomeTrainTransform`: one box of a (C, H, W) site
-> its orientation, normalised, written into a float32 (C, h, w) output in memory order.

Why a compiled kernel (numba): the exact normalisation ``(x - mean) / std`` in numpy takes two passes over the float32
output (``np.subtract`` from uint8, then ``np.divide`` in place), and a flipped box a third, uint8 copy; the output is
5 x 520 x 520 float32 per site at the 520 crop, so every pass is a trip through memory. The kernel converts, subtracts
and divides each pixel in one loop, reading a flipped box in place (rows backwards, columns backwards), so the output
is written once: the float32 write is the whole cost, as in a bare ``np.copyto`` of the box. The arithmetic is the
same float32 subtraction and division (no fast-math, no reciprocal), so the pixels are the same bits.

A turned box (transposed) is first copied as uint8, turned, into a reused buffer (rows copied out of the site, then
transposed from that copy), and the kernel reads that copy: reading a column of a site strides across a memory page
per pixel, and the transposing loop numpy runs on a contiguous copy is faster than any the kernel compiles to.

The kernel is compiled for the two source dtypes the pipeline produces, uint8 sites and the float32 boxes of the
resampling; any other dtype (or an installation without numba) takes numpy's ufuncs, which give the same pixels.
Compiled code is cached on disk (numba's ``cache=True``), so a process pays the compilation once per machine.
"""

from __future__ import annotations

import logging
import threading

import numpy as np
import torch

logger = logging.getLogger(__name__)

_SCRATCH = threading.local()  # per-thread buffers (oriented copies, resampling), reused across calls
#: the source dtypes the compiled kernel takes; others go through numpy's ufuncs
KERNEL_DTYPES = (np.dtype(np.uint8), np.dtype(np.float32))
_KERNEL = None  # the compiled kernel, once loaded; False where numba cannot be imported
_KERNEL_LOCK = threading.Lock()


def scratch(name: str, numel: int, dtype=np.float32) -> np.ndarray:
    """The calling thread's reused 1-D buffer ``name`` of at least ``numel`` elements of ``dtype``."""
    buffer = getattr(_SCRATCH, name, None)
    if buffer is None or buffer.size < numel or buffer.dtype != dtype:
        buffer = np.empty(numel, dtype=dtype)
        setattr(_SCRATCH, name, buffer)
    return buffer[:numel]


def _copied(view: np.ndarray, name: str) -> np.ndarray:
    """``view`` copied into the reused buffer ``name`` of its dtype and shape."""
    copy = scratch(f"{name}_{view.dtype}", view.size, view.dtype).reshape(view.shape)
    np.copyto(copy, view)
    return copy


def turned_copy(box: np.ndarray, flip_rows: bool, flip_cols: bool) -> np.ndarray:
    """``T(flip_rows(flip_cols(box)))`` (C, w, h) copied into a reused buffer of ``box``'s dtype.

    The rows are first copied out of the site (reversed if ``flip_rows``), then transposed from that copy (its
    transposed rows read backwards if ``flip_cols``): reading a site's column strides across as many memory pages as
    the site has rows, reading the copy's across fewer."""
    rows = box[:, ::-1] if flip_rows else box
    if not box.flags.c_contiguous:
        rows = _copied(rows, "rows")
    view = rows.swapaxes(1, 2)
    return _copied(view[:, ::-1] if flip_cols else view, "oriented")


def resample(box: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(C, h, w) -> (C, *size) float32 bilinear (F.interpolate, align_corners=False), into reused buffers."""
    c, h, w = box.shape
    source = scratch("box", c * h * w).reshape(1, c, h, w)
    np.copyto(source, box, casting="unsafe")
    resampled = scratch("resampled", c * size[0] * size[1]).reshape(1, c, *size)
    torch.ops.aten.upsample_bilinear2d.out(torch.from_numpy(source), list(size), False, None, None,
                                           out=torch.from_numpy(resampled))
    return resampled[0]


def _compile():
    """The numba kernel (see :func:`normalise_into`), or ``False`` where numba cannot be imported."""
    try:
        import numba
    except ImportError:
        logger.warning("numba is not installed: CPU augmentation takes numpy's slower passes (same pixels); "
                       "pip install numba")
        return False

    # boundscheck off: normalise_into checks the box against the source before every call. Indices are unsigned
    # (np.uintp) where they run backwards: numba then drops its negative-index wraparound, which otherwise stops
    # LLVM from vectorising the loop.
    def normalise_rows(source, top, left, flip_rows, flip_cols, mean, std, out):
        channels, height, width = out.shape
        last = np.uintp(left + width - 1)
        for c in range(channels):
            m, s = mean[c], std[c]
            for i in range(height):
                row = top + (height - 1 - i if flip_rows else i)
                target = out[c, i]
                if flip_cols:
                    for j in range(width):
                        target[j] = (np.float32(source[c, row, last - np.uintp(j)]) - m) / s
                else:
                    for j in range(width):
                        target[j] = (np.float32(source[c, row, np.uintp(left + j)]) - m) / s

    try:
        return numba.njit(cache=True, nogil=True, boundscheck=False)(normalise_rows)
    except RuntimeError as error:  # no writable cache folder for this file (numba: "no locator available")
        logger.info("numba cannot cache the CPU augmentation kernel (%s): compiling it in every process", error)
        return numba.njit(nogil=True, boundscheck=False)(normalise_rows)


def kernel():
    """The compiled kernel, compiled (or loaded from numba's cache) on first use; ``False`` without numba."""
    global _KERNEL
    if _KERNEL is None:
        with _KERNEL_LOCK:
            if _KERNEL is None:
                _KERNEL = _compile()
    return _KERNEL


def normalise_into(source: np.ndarray, top: int, left: int, flip_rows: bool, flip_cols: bool, mean: np.ndarray,
                   std: np.ndarray, out: np.ndarray) -> None:
    """``out = (flip_rows(flip_cols(source[:, top:top + h, left:left + w])) - mean) / std`` in float32, with
    ``(C, h, w) = out.shape``.

    Args:
        source: (C, H, W) array (read only; e.g. a view of an Arrow buffer).
        mean, std: (C,) float32, one per output channel.
        out: (C, h, w) float32, written in memory order.
    """
    channels, height, width = out.shape
    if (source.ndim != 3 or source.shape[0] != channels or not 0 <= top <= source.shape[1] - height
            or not 0 <= left <= source.shape[2] - width):
        raise ValueError(f"box of {channels} x {height} x {width} at ({top}, {left}) is outside the source of shape "
                         f"{source.shape}")
    if mean.shape != (channels,) or std.shape != (channels,) or out.dtype != np.float32:
        raise ValueError(f"mean and std must be ({channels},) and out float32, got {mean.shape}, {std.shape}, "
                         f"{out.dtype}")
    compiled = kernel() if source.dtype in KERNEL_DTYPES else False
    if compiled:
        compiled(source, top, left, bool(flip_rows), bool(flip_cols), mean, std, out)
        return
    view = source[:, top:top + height, left:left + width]
    view = view[:, :, ::-1] if flip_cols else view
    view = view[:, ::-1] if flip_rows else view
    # as the kernel: each pixel to float32 first, then float32 arithmetic (a float64 source would else subtract in
    # float64); unsafe casting, as the kernel's conversion, for the integer dtypes float32 does not hold exactly
    np.subtract(view, mean[:, None, None], out=out, dtype=np.float32, casting="unsafe")
    np.divide(out, std[:, None, None], out=out)


def normalise_box(site: np.ndarray, top: int, left: int, box_size: tuple[int, int], transpose: bool,
                  flip_rows: bool, flip_cols: bool, mean: np.ndarray, std: np.ndarray, out: np.ndarray) -> None:
    """``out = (T^transpose(flip_rows(flip_cols(box))) - mean) / std`` for the box of ``box_size`` at (top, left) of
    the (C, H, W) ``site``, resampled (bilinear) to the output size first where its size differs.

    Args:
        mean, std: (C,) float32; out: (C, h, w) float32 (h == w where ``transpose``).
    """
    height, width = out.shape[1:]
    size = (width, height) if transpose else (height, width)  # the box's size before it turns
    box_h, box_w = box_size
    if (box_h, box_w) != size:
        site, top, left = resample(site[:, top:top + box_h, left:left + box_w], size), 0, 0
        box_h, box_w = size
    if transpose:
        site = turned_copy(site[:, top:top + box_h, left:left + box_w], flip_rows, flip_cols)
        top = left = 0
        flip_rows = flip_cols = False
    normalise_into(site, top, left, flip_rows, flip_cols, mean, std, out)


__all__ = ["KERNEL_DTYPES", "kernel", "normalise_box", "normalise_into", "resample", "scratch", "turned_copy"]
