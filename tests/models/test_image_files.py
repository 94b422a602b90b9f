"""The one image-file reader: a local path and the same file's bytes (a remote file) give the same array, and
refuse the same bad files with the same message naming the file."""

import numpy as np
import pytest
import tifffile

from cloome_hf import fast_tiff
from cloome_hf.image_files import decode_image_bytes, read_image_file


def _both(path):
    """What the path reader and the bytes reader make of ``path`` (the bytes reader is told the same name)."""
    outcomes = []
    for read in (lambda: read_image_file(path), lambda: decode_image_bytes(path.read_bytes(), str(path))):
        try:
            outcomes.append(("ok", read()))
        except ValueError as err:
            outcomes.append(("error", str(err)))
    return outcomes


def _same_refusal(path, pattern):
    (kind_a, a), (kind_b, b) = _both(path)
    assert kind_a == kind_b == "error", (a, b)
    assert a == b
    assert str(path) in a
    assert pattern in a


def test_good_files_read_the_same_by_path_and_by_bytes(tmp_path):
    image = np.arange(12 * 10, dtype=np.uint16).reshape(12, 10)
    tifffile.imwrite(tmp_path / "c.tif", image)
    np.save(tmp_path / "c.npy", image)
    np.savez(tmp_path / "s.npz", sample=np.zeros((4, 6, 5), np.uint8) + np.arange(5, dtype=np.uint8))
    for name in ("c.tif", "c.npy"):
        (_, a), (_, b) = _both(tmp_path / name)
        np.testing.assert_array_equal(a, image)
        np.testing.assert_array_equal(b, image)
    (_, a), (_, b) = _both(tmp_path / "s.npz")
    assert a.shape == b.shape == (5, 4, 6)  # channels first
    np.testing.assert_array_equal(a[:, 0, 0], np.arange(5))
    np.testing.assert_array_equal(a, b)


def test_an_empty_tiff_is_refused_the_same_way(tmp_path):
    path = tmp_path / "empty.tif"
    path.write_bytes(b"")
    _same_refusal(path, "Could not read image file")


def test_a_damaged_tiff_is_refused_the_same_way(tmp_path):
    path = tmp_path / "damaged.tif"
    tifffile.imwrite(path, np.ones((8, 8), np.uint16))
    path.write_bytes(path.read_bytes()[:20])
    _same_refusal(path, "Could not read image file")


def test_a_tiff_over_the_pixel_limit_is_refused_the_same_way(tmp_path, monkeypatch):
    path = tmp_path / "big.tif"
    tifffile.imwrite(path, np.ones((24, 30), np.uint16))
    monkeypatch.setattr(fast_tiff, "MAX_TIFF_PIXELS", 24 * 30 - 1)
    _same_refusal(path, "declares 720 pixels, more than the limit of 719")


def test_a_pickled_npy_is_refused_the_same_way(tmp_path):
    path = tmp_path / "objects.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    _same_refusal(path, "Could not read image file")


def test_an_npz_without_the_site_key_is_refused_the_same_way(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, image=np.zeros((4, 4, 5), np.uint8))
    _same_refusal(path, "has no 'sample' array")


def test_a_missing_local_file_is_named():
    with pytest.raises(ValueError, match="not found: .*nowhere.tif"):
        read_image_file("/nowhere.tif")


@pytest.mark.parametrize("values", [np.array([["a", "b"]]), np.ones((2, 2), bool), np.ones((2, 2), complex)],
                         ids=["str", "bool", "complex"])
def test_a_file_of_the_wrong_dtype_is_refused_the_same_way(tmp_path, values):
    path = tmp_path / "wrong.npy"
    np.save(path, values)
    _same_refusal(path, f"holds dtype {values.dtype}, not a real-valued image")
