"""CloomeTrainTransform against independent references: torchvision's crop / resized-crop functions and box laws,
torch.flip / torch.rot90 orientations, the image processor, and its two pixel paths against each other (the
per-image CPU path and the batched path an accelerator takes, run on the CPU device)."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms as T
import torchvision.transforms.v2.functional as TF
from scipy.stats import chisquare

from cloome_hf import example_site
from cloome_hf.channels import CHANNELS, CLOOME_CHANNEL_MEAN
from cloome_hf.image_processing_cloome import CloomeImageProcessor
from cloome_hf.transforms import CloomeTrainTransform

SITE_DIR = Path(example_site()["Mito"]).parent
MEAN = torch.tensor(CLOOME_CHANNEL_MEAN).view(-1, 1, 1)


@pytest.fixture(scope="module")
def site():
    """The bundled real site, 8 bit: (5, 520, 696) uint8."""
    files = {c: str(SITE_DIR / f"{c}.tif") for c in CHANNELS}
    return torch.from_numpy(CloomeImageProcessor().load_uint8_site(files))


def real_batch(site, n):
    """n distinct real-size sites: the real one rolled."""
    return torch.stack([torch.roll(site, (37 * i, 101 * i), dims=(1, 2)) for i in range(n)])


def reference(images, params, mean=MEAN, std=MEAN):
    """The documented pixels, one image at a time: torchvision crop / bilinear resized crop of the box, then
    torch.flip of columns and rows and a transpose, as ``params`` say, then (x - mean) / std."""
    out = []
    for i, image in enumerate(images.float()):
        box = [int(v[i]) for v in (params.top, params.left, params.height, params.width)]
        if tuple(box[2:]) == params.output_size:
            x = TF.crop(image, *box)
        else:
            x = TF.resized_crop(image, *box, list(params.output_size), TF.InterpolationMode.BILINEAR,
                                antialias=False)
        x = x.flip(-1) if params.flip_cols[i] else x
        x = x.flip(-2) if params.flip_rows[i] else x
        x = x.transpose(-1, -2) if params.transpose[i] else x
        out.append((x - mean) / std)
    return torch.stack(out)


def dihedral(image):
    """The 8 symmetries of a square (C, h, w) image, as (name, tensor)."""
    out = []
    for mirrored, base in (("", image), ("mirror+", image.flip(-1))):
        out += [(f"{mirrored}rot{90 * k}", torch.rot90(base, k, dims=(-2, -1))) for k in range(4)]
    return out


def identify(image, result, size):
    """(top, left, symmetry name) of the window of ``image`` that ``result`` (normalised) is a symmetry of."""
    pixels = torch.round(result * MEAN + MEAN).to(torch.uint8)
    h, w = size
    matches = []
    for top in range(image.shape[1] - h + 1):
        for left in range(image.shape[2] - w + 1):
            window = image[:, top:top + h, left:left + w]
            candidates = dihedral(window) if h == w else [("rot0", window), ("mirror+rot0", window.flip(-1)),
                                                           ("rot180", torch.rot90(window, 2, (-2, -1))),
                                                           ("mirror+rot180", window.flip(-2))]
            matches += [(top, left, name) for name, c in candidates if c.shape == pixels.shape
                        and torch.equal(c, pixels)]
    assert len(matches) == 1, f"{len(matches)} windows/symmetries match"
    return matches[0]


# ---------------------------------------------------------------- eval mode
def test_eval_matches_processor(site):
    transform = CloomeTrainTransform(crop_size=(520, 520)).eval()
    expected = CloomeImageProcessor()(site.numpy(), crop_size={"height": 520, "width": 520})["pixel_values"]
    np.testing.assert_array_equal(transform(site).numpy(), expected[0])
    np.testing.assert_array_equal(transform(site[None], seeds=[3]).numpy(), expected)  # seeds do not matter


def test_eval_centre_crops_to_output_size():
    """The published evaluation of random-resized-crop models: the centre crop of the output size."""
    images = torch.randint(0, 256, (2, 5, 40, 60), dtype=torch.uint8)
    transform = CloomeTrainTransform(output_size=(32, 32)).eval()
    torch.testing.assert_close(transform(images), (images[:, :, 4:36, 14:46].float() - MEAN) / MEAN,
                               rtol=0, atol=0)
    torch.testing.assert_close(transform.apply(images, transform.draw_params(2, 40, 60), batched=True),
                               transform(images), rtol=0, atol=0)
    with pytest.raises(ValueError, match="output_size 32x32 is larger than the window 20x40"):
        CloomeTrainTransform(crop_size=(20, 40), output_size=(32, 32)).eval()(images)


# ---------------------------------------------------------------- pixels
SETTINGS = {
    "crop_square": dict(crop_size=(16, 16), random_resized_crop_scale=None),
    "crop_wide": dict(crop_size=(10, 18), random_resized_crop_scale=None),
    "resized_whole_to_square": dict(output_size=(16, 16), random_resized_crop_scale=(0.5, 1.0)),
    "resized_default_size": dict(random_resized_crop_scale=(0.5, 1.0)),
    "crop_then_upsample": dict(crop_size=(12, 12), output_size=(20, 20), random_resized_crop_scale=(0.3, 1.0)),
    "turns_only": dict(crop_size=(16, 16), random_resized_crop_scale=None, flips=False),
}


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_both_paths_match_the_torchvision_reference(setting):
    images = torch.randint(0, 256, (12, 5, 24, 30), dtype=torch.uint8)
    transform = CloomeTrainTransform(**SETTINGS[setting])
    params = transform.draw_params(12, 24, 30, seeds=range(100, 112))
    expected = reference(images, params)
    exact = not params.resamples
    for batched in (False, True):
        torch.testing.assert_close(transform.apply(images, params, batched=batched), expected,
                                   rtol=0, atol=0 if exact else 1e-5)
    torch.testing.assert_close(transform(images, seeds=range(100, 112)), transform.apply(images, params),
                               rtol=0, atol=0)


@pytest.mark.parametrize("setting", ["crop520", "resized320"])
def test_both_paths_agree_on_real_sites(site, setting):
    """The two headline settings at the real size: the batched (accelerator) path on the CPU device gives the
    per-image CPU path's pixels, within float rounding."""
    kwargs = (dict(crop_size=(520, 520), random_resized_crop_scale=None) if setting == "crop520"
              else dict(output_size=(320, 320)))
    transform = CloomeTrainTransform(**kwargs, batch_chunk=3)  # two chunks per orientation group
    images, seeds = real_batch(site, 8), [11, 5, 7, 3, 2, 19, 23, 29]
    params = transform.draw_params(8, 520, 696, seeds=seeds)
    assert params.transpose.any() and not params.transpose.all()
    per_image = transform(images, seeds=seeds)
    torch.testing.assert_close(transform.apply(images, params, batched=True), per_image, rtol=0,
                               atol=0 if setting == "crop520" else 1e-5)
    first_two = transform.draw_params(2, 520, 696, seeds=seeds[:2])  # a seed's params do not depend on the batch
    torch.testing.assert_close(per_image[:2], reference(images[:2], first_two), rtol=0, atol=1e-4)


def test_outputs_are_flips_and_turns_of_a_window():
    """Every output is one window of its input under one symmetry, and the symmetries seen are exactly the group
    the flags generate (all 8 for square outputs with flips and turns; 180 degrees as the only turn otherwise)."""
    images = torch.randint(0, 256, (1, 5, 9, 11), dtype=torch.uint8).expand(96, -1, -1, -1)
    groups = {
        ((6, 6), True, True): {"rot0", "rot90", "rot180", "rot270", "mirror+rot0", "mirror+rot90", "mirror+rot180",
                               "mirror+rot270"},
        ((6, 6), False, True): {"rot0", "rot90", "rot180", "rot270"},
        ((6, 6), True, False): {"rot0", "rot180", "mirror+rot0", "mirror+rot180"},
        ((4, 7), True, True): {"rot0", "rot180", "mirror+rot0", "mirror+rot180"},
        ((4, 7), False, True): {"rot0", "rot180"},
        ((6, 6), False, False): {"rot0"},
    }
    for (size, flips, rot90), expected in groups.items():
        transform = CloomeTrainTransform(crop_size=size, random_resized_crop_scale=None, flips=flips, rot90=rot90)
        out = transform(images, seeds=range(96))
        assert out.shape == (96, 5, *size)
        seen = [identify(images[0], o, size) for o in out]
        assert {name for _, _, name in seen} == expected, (size, flips, rot90)
        assert len({(top, left) for top, left, _ in seen}) > 5


def test_resized_crop_identity_and_whole_site():
    images = torch.randint(0, 256, (4, 5, 32, 32), dtype=torch.uint8)
    identity = CloomeTrainTransform(random_resized_crop_scale=(1.0, 1.0), random_resized_crop_ratio=(1.0, 1.0),
                                    flips=False, rot90=False)
    torch.testing.assert_close(identity(images), (images.float() - MEAN) / MEAN, rtol=0, atol=0)
    wide = torch.randint(0, 256, (2, 5, 40, 60), dtype=torch.uint8)
    whole = CloomeTrainTransform(random_resized_crop_scale=(1.0, 1.0), random_resized_crop_ratio=(1.5, 1.5),
                                 output_size=(20, 20), flips=False, rot90=False)
    resized = F.interpolate(wide.float(), size=(20, 20), mode="bilinear", align_corners=False)
    torch.testing.assert_close(whole(wide), (resized - MEAN) / MEAN, atol=1e-5, rtol=0)
    out = torch.empty(2, 5, 20, 20)
    assert whole(wide, out=out) is out
    torch.testing.assert_close(out, (resized - MEAN) / MEAN, atol=1e-5, rtol=0)


# ---------------------------------------------------------------- determinism
def test_pixels_depend_on_the_seed_alone():
    images = torch.randint(0, 256, (6, 5, 30, 34), dtype=torch.uint8)
    seeds = [5, 2**40 + 3, 0, 17, 99, 5]
    for kwargs in (dict(crop_size=(20, 20)), dict(output_size=(16, 16)), dict(crop_size=(12, 20),
                                                                              random_resized_crop_scale=None)):
        transform = CloomeTrainTransform(**kwargs, seed=1)
        full = transform(images, seeds=seeds)
        perm = [3, 0, 5, 1, 4, 2]
        torch.manual_seed(123)  # the global generator plays no part
        torch.testing.assert_close(transform(images[perm], seeds=[seeds[i] for i in perm]), full[perm],
                                   rtol=0, atol=0)
        torch.testing.assert_close(transform(images[2:4], seeds=seeds[2:4]), full[2:4], rtol=0, atol=0)
        for i in (0, 5):  # same seed, same image -> same pixels, wherever it sits
            torch.testing.assert_close(transform(images[i], seeds=[seeds[i]]), full[i], rtol=0, atol=0)
            single = transform(images[i], generator=torch.Generator().manual_seed(seeds[i]))
            torch.testing.assert_close(single, full[i], rtol=0, atol=0)  # the per-sample generator path
        assert not torch.equal(full[0], full[2])
        # without seeds: one generator for the batch, reproducible from its state
        g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
        torch.testing.assert_close(transform(images, generator=g1), transform(images, generator=g2), rtol=0, atol=0)


# ---------------------------------------------------------------- distributions
def test_boxes_are_torchvisions():
    """Same seed, same box as torchvision's RandomCrop / RandomResizedCrop.get_params (also with a window)."""
    dummy = torch.empty(5, 520, 696)
    crop = CloomeTrainTransform(crop_size=(520, 520), random_resized_crop_scale=None)
    resized = CloomeTrainTransform(output_size=(320, 320))
    wide_range = CloomeTrainTransform(random_resized_crop_scale=(0.08, 1.0), output_size=(64, 64))
    def window_then_box():
        top, left, _, _ = T.RandomCrop.get_params(dummy, (400, 500))
        i, j, h, w = T.RandomResizedCrop.get_params(torch.empty(5, 400, 500), [0.5, 1.0], [3 / 4, 4 / 3])
        return top + i, left + j, h, w

    windowed = CloomeTrainTransform(crop_size=(400, 500), random_resized_crop_scale=(0.5, 1.0), output_size=(64, 64))
    seeds = list(range(300))
    for transform, get_params in (
        (windowed, window_then_box),
        (crop, lambda: T.RandomCrop.get_params(dummy, (520, 520))),
        (resized, lambda: T.RandomResizedCrop.get_params(dummy, [0.9, 1.0], [3 / 4, 4 / 3])),
        (wide_range, lambda: T.RandomResizedCrop.get_params(dummy, [0.08, 1.0], [3 / 4, 4 / 3])),
    ):
        params = transform.draw_params(len(seeds), 520, 696, seeds=seeds)
        ours = np.stack([params.top, params.left, params.height, params.width], axis=1)
        expected = []
        with torch.random.fork_rng():
            for s in seeds:
                torch.manual_seed(s)
                expected.append(get_params())
        np.testing.assert_array_equal(ours, np.asarray(expected))


def test_windows_and_orientations_are_uniform():
    transform = CloomeTrainTransform(crop_size=(16, 16), random_resized_crop_scale=None)
    n = 8000
    params = transform.draw_params(n, 40, 50, seeds=range(n))
    orientation = params.transpose * 4 + params.flip_rows * 2 + params.flip_cols
    for values, k in ((params.top, 25), (params.left, 35), (orientation, 8)):
        counts = np.bincount(values, minlength=k)
        assert len(counts) == k and chisquare(counts).pvalue > 1e-4
    # window position and orientation are independent
    table = np.histogram2d(params.top, orientation, bins=(5, 8))[0]
    from scipy.stats import chi2_contingency

    assert chi2_contingency(table).pvalue > 1e-4


def test_resized_crop_boxes_follow_the_scale_and_ratio():
    height, width = 520, 696
    for scale, output in (((0.9, 1.0), (320, 320)), ((0.2, 1.0), (64, 64))):
        transform = CloomeTrainTransform(random_resized_crop_scale=scale, output_size=output)
        params = transform.draw_params(3000, height, width, seeds=range(3000))
        area = params.height * params.width / (height * width)
        ratio = params.width / params.height
        assert area.min() >= scale[0] * (1 - 4 / 320) and area.max() <= 1
        assert ratio.min() >= 3 / 4 * (1 - 2 / 320) and ratio.max() <= 4 / 3 * (1 + 2 / 320)
        assert (params.top >= 0).all() and (params.top + params.height <= height).all()
        assert (params.left >= 0).all() and (params.left + params.width <= width).all()
        orientation = params.transpose * 4 + params.flip_rows * 2 + params.flip_cols
        assert chisquare(np.bincount(orientation, minlength=8)).pvalue > 1e-4  # square output: all 8
        if scale[0] < 0.5:  # a box is uniform over the positions where it fits
            for start, size, full in ((params.top, params.height, height), (params.left, params.width, width)):
                slack = full - size
                roomy = slack >= 50
                position = start[roomy] / (slack[roomy] + 1)
                assert roomy.sum() > 1000
                assert chisquare(np.histogram(position, bins=5, range=(0, 1))[0]).pvalue > 1e-4


# ---------------------------------------------------------------- errors
def test_bad_input_is_refused():
    images = torch.randint(0, 256, (2, 5, 20, 20), dtype=torch.uint8)
    transform = CloomeTrainTransform(crop_size=(16, 16), random_resized_crop_scale=None)
    with pytest.raises(ValueError, match="crop_size 24x24 is larger than the images 20x20"):
        CloomeTrainTransform(crop_size=(24, 24))(images)
    with pytest.raises(ValueError, match="got 3 seeds for 2 images"):
        transform(images, seeds=[1, 2, 3])
    with pytest.raises(ValueError, match="seeds must be integers, got 1.5"):
        transform(images, seeds=[1, 1.5])
    with pytest.raises(ValueError, match="not both"):
        transform(images, seeds=[1, 2], generator=torch.Generator())
    with pytest.raises(ValueError, match="images have 4 channels, the normalisation has 5"):
        transform(images[:, :4])
    with pytest.raises(ValueError, match=r"expected \(N, C, H, W\)"):
        transform(images[0, 0])
    with pytest.raises(ValueError, match=r"out must be a float32 tensor of shape \(2, 5, 16, 16\)"):
        transform(images, out=torch.empty(2, 5, 20, 20))
    with pytest.raises(ValueError, match="random_resized_crop_scale"):
        CloomeTrainTransform(random_resized_crop_scale=(0.5, 1.5))
    with pytest.raises(ValueError, match="set random_resized_crop_scale"):
        CloomeTrainTransform(random_resized_crop_scale=None, output_size=(32, 32))
    assert transform(images[:0], seeds=[]).shape == (0, 5, 16, 16)
    sites = list(images.numpy())
    with pytest.raises(ValueError, match=r"one shape, got shapes \[\(5, 18, 18\), \(5, 20, 20\)\]"):
        transform.augment_sites([sites[0], sites[1][:, :18, :18]], seeds=[1, 2])
    with pytest.raises(ValueError, match=r"channels \[0, 1, 2, 3, 5\] out of range for sites of 5 channels"):
        transform.augment_sites(sites, seeds=[1, 2], channels=[0, 1, 2, 3, 5])
    with pytest.raises(ValueError, match="images have 4 channels, the normalisation has 5"):
        transform.augment_sites(sites, seeds=[1, 2], channels=[0, 1, 2, 3])


@pytest.mark.parametrize("compiled", [True, False], ids=["kernel", "numpy"])
def test_read_only_sites_get_the_reference_pixels_in_all_eight_orientations(site, monkeypatch, compiled):
    """augment_sites on read-only sites (as views of Arrow buffers are): bit for bit the reference, through the
    compiled kernel and through numpy's passes (the path without numba); no read-only site is handed to
    torch.from_numpy, which warns on one, and none is written to."""
    import cloome_hf.transforms_cpu as transforms_cpu

    if not compiled:
        monkeypatch.setattr(transforms_cpu, "_KERNEL", False)
    else:
        assert transforms_cpu.kernel(), "numba is a dependency: the kernel must compile"
    from_numpy = torch.from_numpy

    def writable_only(array):
        assert array.flags.writeable, "torch.from_numpy on a read-only array"
        return from_numpy(array)
    monkeypatch.setattr(transforms_cpu.torch, "from_numpy", writable_only)
    images = real_batch(site, 16)[:, :, :40, :48].contiguous()
    data = images.numpy().tobytes()
    sites = [np.frombuffer(data, np.uint8, images[0].numel(), i * images[0].numel()).reshape(images.shape[1:])
             for i in range(len(images))]
    transform = CloomeTrainTransform(crop_size=(32, 32), random_resized_crop_scale=None)
    seeds = list(range(len(sites)))
    params = transform.draw_params(len(sites), 40, 48, seeds=seeds)
    assert len(set(zip(params.transpose, params.flip_rows, params.flip_cols))) == 8
    for channels in (None, [4, 2, 0, 1, 3]):
        pixels = transform.augment_sites(sites, seeds=seeds, channels=channels)
        expected = reference(images if channels is None else images[:, channels], params)
        torch.testing.assert_close(pixels, expected, rtol=0, atol=0)
    assert np.frombuffer(data, np.uint8).tobytes() == images.numpy().tobytes()
