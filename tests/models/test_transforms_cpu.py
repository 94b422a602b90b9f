"""The per-image CPU pixel work (cloome_hf.transforms_cpu) against torch references built from torch.flip,
transpose, F.interpolate and float32 (x - mean) / std: the compiled kernel and numpy's passes, every orientation,
crops at odd offsets, resampled boxes, other dtypes; which path runs; boxes outside the source are refused."""

import itertools
import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import cloome_hf.transforms_cpu as transforms_cpu
from cloome_hf.transforms_cpu import normalise_box, normalise_into

ORIENTATIONS = list(itertools.product((False, True), repeat=3))  # (transpose, flip_rows, flip_cols)
MEAN = np.array([11.5, 30.25, 7.0], np.float32)
STD = np.array([3.3, 17.1, 0.7], np.float32)


def reference(site, top, left, box_size, transpose, flip_rows, flip_cols, out_size):
    """float32 crop, bilinear resampling where the box differs from the (unturned) output size, torch.flip of
    columns then rows, transpose, then (x - mean) / std."""
    box = torch.from_numpy(np.array(site[:, top:top + box_size[0], left:left + box_size[1]])).to(torch.float32)
    size = out_size[::-1] if transpose else out_size
    if tuple(box.shape[1:]) != tuple(size):
        box = F.interpolate(box[None], size=list(size), mode="bilinear", align_corners=False)[0]
    box = box.flip(-1) if flip_cols else box
    box = box.flip(-2) if flip_rows else box
    box = box.transpose(-1, -2) if transpose else box
    return (box - torch.from_numpy(MEAN).view(-1, 1, 1)) / torch.from_numpy(STD).view(-1, 1, 1)


def read_only_site(dtype, shape=(3, 37, 53), seed=0):
    rng = np.random.default_rng(seed)
    values = rng.integers(0, 256, shape) if np.dtype(dtype).kind in "ui" else rng.random(shape) * 300
    site = np.frombuffer(values.astype(dtype).tobytes(), dtype).reshape(shape)  # read only, as Arrow views are
    assert not site.flags.writeable
    return site


@pytest.fixture(params=["kernel", "numpy"])
def path(request, monkeypatch):
    """Run a test through the compiled kernel, or through numpy's passes (as without numba)."""
    if request.param == "numpy":
        monkeypatch.setattr(transforms_cpu, "_KERNEL", False)
    else:
        assert transforms_cpu.kernel(), "numba is a dependency: the kernel must compile"
    return request.param


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
@pytest.mark.parametrize("box", [((20, 20), (20, 20)), ((21, 17), (21, 17)), ((25, 31), (16, 16)),
                                 ((9, 14), (12, 12))], ids=["square", "oblong", "downsampled", "upsampled"])
def test_every_orientation_is_the_reference_bit_for_bit(path, dtype, box):
    box_size, out_size = box
    site = read_only_site(dtype)
    for (transpose, flip_rows, flip_cols), (top, left) in zip(ORIENTATIONS, itertools.cycle([(0, 0), (5, 13),
                                                                                              (37 - box_size[0], 2)])):
        if transpose and out_size[0] != out_size[1]:
            continue
        out = np.full((3, *out_size), np.nan, np.float32)
        normalise_box(site, top, left, box_size, transpose, flip_rows, flip_cols, MEAN, STD, out)
        expected = reference(site, top, left, box_size, transpose, flip_rows, flip_cols, out_size)
        torch.testing.assert_close(torch.from_numpy(out), expected, rtol=0, atol=0,
                                   msg=f"{path}, orientation {(transpose, flip_rows, flip_cols)} at {(top, left)}")


@pytest.mark.parametrize("dtype", [np.uint16, np.int16, np.float64])
def test_other_dtypes_take_numpy_and_convert_to_float32_first(dtype, monkeypatch):
    """Dtypes the kernel is not compiled for never reach it, and are converted to float32 before the arithmetic
    (as the kernel and the accelerator path do)."""
    def refuse(*args):
        raise AssertionError("the kernel was called for a dtype it is not compiled for")
    monkeypatch.setattr(transforms_cpu, "_KERNEL", refuse)
    site = read_only_site(dtype)
    for transpose, flip_rows, flip_cols in ORIENTATIONS:
        out = np.empty((3, 16, 16), np.float32)
        normalise_box(site, 4, 9, (16, 16), transpose, flip_rows, flip_cols, MEAN, STD, out)
        expected = reference(site, 4, 9, (16, 16), transpose, flip_rows, flip_cols, (16, 16))
        torch.testing.assert_close(torch.from_numpy(out), expected, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_uint8_and_float32_go_through_the_kernel(dtype, monkeypatch):
    compiled, calls = transforms_cpu.kernel(), []
    assert compiled

    def counting(*args):
        calls.append(args[0].dtype)
        return compiled(*args)
    monkeypatch.setattr(transforms_cpu, "_KERNEL", counting)
    out = np.empty((3, 8, 8), np.float32)
    normalise_into(read_only_site(dtype), 1, 2, True, True, MEAN, STD, out)
    assert calls == [np.dtype(dtype)]


@pytest.mark.parametrize("top, left, size", [(-1, 0, (8, 8)), (0, -3, (8, 8)), (30, 0, (8, 8)), (0, 46, (8, 8)),
                                             (0, 0, (38, 8)), (0, 0, (8, 54))])
def test_a_box_outside_the_source_is_refused(top, left, size):
    """The kernel runs without bounds checks: every box is checked against the source before it runs."""
    out = np.zeros((3, *size), np.float32)
    with pytest.raises(ValueError, match=r"outside the source of shape \(3, 37, 53\)"):
        normalise_into(read_only_site(np.uint8), top, left, False, False, MEAN, STD, out)
    assert not out.any()


def test_mismatched_channels_and_outputs_are_refused():
    site = read_only_site(np.uint8)
    with pytest.raises(ValueError, match="outside the source"):
        normalise_into(site, 0, 0, False, False, MEAN, STD, np.zeros((2, 8, 8), np.float32))
    with pytest.raises(ValueError, match=r"mean and std must be \(3,\)"):
        normalise_into(site, 0, 0, False, False, MEAN[:2], STD[:2], np.zeros((3, 8, 8), np.float32))
    with pytest.raises(ValueError, match="out float32, got .* float64"):
        normalise_into(site, 0, 0, False, False, MEAN, STD, np.zeros((3, 8, 8), np.float64))


def test_without_numba_the_numpy_passes_run_and_say_so(monkeypatch, caplog):
    import builtins

    real_import = builtins.__import__

    def no_numba(name, *args, **kwargs):
        if name == "numba" or name.startswith("numba."):
            raise ImportError("No module named 'numba'")
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", no_numba)
    monkeypatch.setattr(transforms_cpu, "_KERNEL", None)
    with caplog.at_level(logging.WARNING, logger="cloome_hf.transforms_cpu"):
        assert transforms_cpu.kernel() is False
    assert "numba is not installed" in caplog.text
    out = np.empty((3, 16, 16), np.float32)
    site = read_only_site(np.uint8)
    normalise_box(site, 3, 5, (16, 16), False, True, True, MEAN, STD, out)
    torch.testing.assert_close(torch.from_numpy(out), reference(site, 3, 5, (16, 16), False, True, True, (16, 16)),
                               rtol=0, atol=0)


def test_without_a_writable_cache_folder_the_kernel_still_compiles(monkeypatch):
    """numba refuses ``cache=True`` where it finds no folder to cache in (a read-only install and home): the kernel
    is then compiled in the process, not given up."""
    from numba.core import caching

    monkeypatch.setattr(caching.CacheImpl, "_locator_classes", [])
    monkeypatch.setattr(transforms_cpu, "_KERNEL", None)
    compiled = transforms_cpu.kernel()
    assert compiled, "without a cache folder the kernel must still compile"
    assert isinstance(compiled._cache, caching.NullCache)
    out = np.empty((3, 12, 12), np.float32)
    site = read_only_site(np.uint8)
    normalise_into(site, 2, 7, True, False, MEAN, STD, out)
    torch.testing.assert_close(torch.from_numpy(out), reference(site, 2, 7, (12, 12), False, True, False, (12, 12)),
                               rtol=0, atol=0)
