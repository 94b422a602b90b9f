"""The collator's blank-channel check (cloome_hf.data.loader): it probes a few rows of each channel first and reads
a channel whole only when its probe is all zero, so a channel is refused exactly when every pixel is zero."""

import numpy as np
import pytest

from cloome_hf.data import CellPaintingCollator, CellPaintingTorchDataset, make_synthetic_dataset
from cloome_hf.data.loader import BLANK_PROBE_ROWS
from cloome_hf.transforms import CloomeTrainTransform

SIZE = 32


@pytest.fixture(scope="module")
def syn():
    return make_synthetic_dataset(num_molecules=4, sites_per_molecule=1, num_plates=1, image_size=SIZE, seed=0)


def _collators(permutation=None):
    """Both branches of the check: the sites read in place (float32 training path) and copied into a uint8 batch
    (for the accelerator, and the inference processor)."""
    transform = CloomeTrainTransform(crop_size=(24, 24), random_resized_crop_scale=None)
    return {
        "in place": CellPaintingCollator(None, transform, channel_permutation=permutation),
        "uint8 batch": CellPaintingCollator(None, transform, channel_permutation=permutation, output="uint8"),
        "inference": CellPaintingCollator(None, channel_permutation=permutation),
    }


def _with_channel(syn, row: int, channel: int, pixel: tuple[int, int] | None):
    """The dataset with stored ``channel`` of site ``row`` all zero, but for a 7 at ``pixel`` (row, column)."""
    def edit(r, i):
        if i != row:
            return {}
        image = np.frombuffer(r["image"], np.uint8).reshape(r["image_shape"]).copy()
        image[channel] = 0
        if pixel is not None:
            image[(channel, *pixel)] = 7
        return {"image": image.tobytes()}

    return syn.map(edit, with_indices=True)


def _batch(ds):
    return CellPaintingTorchDataset(ds).__getitems__([(i, 10 + i) for i in range(len(ds))])


@pytest.mark.parametrize("pixel", [(5, 13), (SIZE - 1, SIZE - 1)])
def test_a_channel_with_one_bright_pixel_between_the_probed_rows_is_not_blank(syn, pixel):
    assert pixel[0] % BLANK_PROBE_ROWS  # off the probe grid: only the full read of the channel sees it
    ds = _with_channel(syn, row=2, channel=3, pixel=pixel)
    for permutation in (None, [4, 2, 0, 1, 3]):
        for name, collate in _collators(permutation).items():
            batch = collate(_batch(ds))
            assert batch["sample_key"] == ds["sample_key"], name


def test_an_all_zero_channel_is_refused_naming_the_sample_and_the_model_channel(syn):
    ds = _with_channel(_with_channel(syn, row=1, channel=2, pixel=None), row=3, channel=0, pixel=None)
    key = ds[1]["sample_key"]  # the first site with a blank channel
    for collate in _collators().values():
        with pytest.raises(ValueError, match=rf"^sample '{key}': channel 2 is all zero$"):
            collate(_batch(ds))
    for collate in _collators([4, 2, 0, 1, 3]).values():  # stored channel 2 is the model's channel 1
        with pytest.raises(ValueError, match=rf"^sample '{key}': channel 1 is all zero$"):
            collate(_batch(ds))
    # a blank stored channel the model does not read is no error
    ds_one = _with_channel(syn, row=1, channel=2, pixel=None)
    assert CellPaintingCollator(None, channel_permutation=[0, 1, 3, 4, 0], output="uint8")(
        _batch(ds_one))["sample_key"] == ds_one["sample_key"]
