"""CloomeImageProcessor and rescale_to_uint8 against independent reference code (the training transform:
test_transforms.py)."""

from pathlib import Path

import io

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image
from uint8_rule import reference_uint8

from cloome_hf import example_site
from cloome_hf.channels import CHANNELS, CLOOME_CHANNEL_MEAN
from cloome_hf.image_processing_cloome import CloomeImageProcessor, rescale_to_uint8


SITE_DIR = Path(example_site()["Mito"]).parent
SITE_FILES = {c: str(SITE_DIR / f"{c}.tif") for c in CHANNELS}
JUMP_NAMES = {"Mito": "Mito", "ERSyto": "ER", "ERSytoBleed": "RNA", "Ph_golgi": "AGP", "Hoechst": "DNA"}
MEAN = np.asarray(CLOOME_CHANNEL_MEAN, dtype=np.float32)


@pytest.fixture(scope="module")
def raw_site():
    return np.stack([tifffile.imread(SITE_FILES[c]) for c in CHANNELS])


@pytest.fixture(scope="module")
def processor():
    return CloomeImageProcessor()


# ---------------------------------------------------------------- rescale_to_uint8
@pytest.mark.parametrize("fraction,scale", [(2.8e-5, 256.0), (1e-4, 255.0), (0.01, 256.0), (0.0, 256.0), (1.0, 256.0)])
def test_rescale_bit_exact_on_random_16bit(fraction, scale):
    rng = np.random.default_rng(0)
    images = [
        rng.integers(0, 65536, (97, 131), dtype=np.uint16),  # full range
        rng.integers(100, 4096, (120, 160), dtype=np.uint16),  # 12-bit camera range
        rng.choice(np.array([0, 7, 4095, 4095, 65535], np.uint16), (50, 70)),  # heavy ties at the threshold
        np.zeros((40, 60), np.uint16),  # blank
        np.full((40, 60), 1234, np.uint16),  # constant
    ]
    for image in images:
        np.testing.assert_array_equal(rescale_to_uint8(image, fraction, scale), reference_uint8(image, fraction, scale))


def test_rescale_blank_and_constant_channels():
    assert not rescale_to_uint8(np.zeros((30, 30), np.uint16)).any()
    constant = rescale_to_uint8(np.full((30, 30), 500, np.uint16))
    assert (constant == 255).all()  # 500 * 256 / 500 = 256 saturates
    assert (rescale_to_uint8(np.full((30, 30), 500, np.uint16), scale=255.0) == 255).all()


def test_rescale_other_dtypes_match_reference():
    rng = np.random.default_rng(1)
    as_float = rng.normal(1000, 300, (64, 48))  # includes values <= 0 after the tail
    as_int = rng.integers(-50, 3000, (64, 48)).astype(np.int32)
    for image in (as_float, as_int, as_float.astype(np.float32)):
        np.testing.assert_array_equal(rescale_to_uint8(image, 1e-3), reference_uint8(image, 1e-3))


def test_rescale_rejects_bad_input():
    with pytest.raises(ValueError, match="shape"):
        rescale_to_uint8(np.zeros((2, 3, 4), np.uint16))
    with pytest.raises(ValueError, match="NaN"):
        rescale_to_uint8(np.array([[1.0, np.nan]]))
    with pytest.raises(ValueError, match="clip_fraction"):
        rescale_to_uint8(np.ones((4, 4), np.uint16), clip_fraction=1.5)


# ---------------------------------------------------------------- real site end to end
def test_real_site_end_to_end(processor, raw_site):
    pixel_values = processor(SITE_FILES, return_tensors="pt")["pixel_values"]
    assert pixel_values.shape == (1, 5, 520, 696) and pixel_values.dtype == torch.float32
    expected = np.stack([(reference_uint8(ch).astype(np.float32) - m) / m for ch, m in zip(raw_site, MEAN)])
    np.testing.assert_array_equal(pixel_values[0].numpy(), expected)
    # normalised means follow from the 8-bit means: x / m - 1
    u8 = processor.load_uint8_site(SITE_FILES)
    np.testing.assert_allclose(pixel_values[0].mean(dim=(1, 2)).numpy(), u8.mean(axis=(1, 2)) / MEAN - 1, atol=1e-5)
    # saturation: ~n of the pixels for channels whose maximum is not a saturated sensor plateau (4095)
    n = round(520 * 696 * 2.8e-5)
    for c, name in enumerate(CHANNELS):
        saturated = int((u8[c] == 255).sum())
        assert saturated >= n, name
        if raw_site[c].max() < 4095:
            assert saturated <= 2 * n, name
        else:  # the camera clipped: every pixel at the plateau saturates, nothing else does more than rounding
            assert saturated >= int((raw_site[c] == 4095).sum()), name


def test_zero_shot_crop_and_upstream_inference_settings(processor, raw_site):
    full = processor(SITE_FILES)["pixel_values"]
    cropped = processor(SITE_FILES, crop_size={"height": 520, "width": 520})["pixel_values"]
    np.testing.assert_array_equal(cropped, full[:, :, :, 88:608])
    upstream = processor(SITE_FILES, intensity_clip_fraction=1e-4, intensity_scale=255.0, do_normalize=False)
    expected = np.stack([reference_uint8(ch, 1e-4, 255.0) for ch in raw_site]).astype(np.float32)
    np.testing.assert_array_equal(upstream["pixel_values"][0], expected)


def test_per_image_standardisation(processor):
    out = processor(SITE_FILES, do_per_image_standardize=True)["pixel_values"][0]
    np.testing.assert_allclose(out.mean(axis=(1, 2)), 0, atol=1e-4)
    np.testing.assert_allclose(out.std(axis=(1, 2)), 1, atol=1e-3)


# ---------------------------------------------------------------- input forms
def test_channel_names_aliases_and_order(processor, raw_site):
    reference = processor(SITE_FILES)["pixel_values"]
    permuted = {c: SITE_FILES[c] for c in reversed(CHANNELS)}
    np.testing.assert_array_equal(processor(permuted)["pixel_values"], reference)
    jump = {JUMP_NAMES[c]: raw_site[i] for i, c in reversed(list(enumerate(CHANNELS)))}
    np.testing.assert_array_equal(processor(jump)["pixel_values"], reference)
    np.testing.assert_array_equal(processor([SITE_FILES[c] for c in CHANNELS])["pixel_values"], reference)
    # a processor configured in JUMP order outputs the channels in that order
    jump_order = ["DNA", "ER", "RNA", "AGP", "Mito"]
    jump_processor = CloomeImageProcessor(channel_order=jump_order)
    out = jump_processor(SITE_FILES)["pixel_values"]
    index = [CHANNELS.index(c) for c in ("Hoechst", "ERSyto", "ERSytoBleed", "Ph_golgi", "Mito")]
    np.testing.assert_array_equal(out, reference[:, index])


def test_array_tensor_and_batch_inputs(processor, raw_site):
    reference = processor(SITE_FILES)["pixel_values"]
    np.testing.assert_array_equal(processor(raw_site)["pixel_values"], reference)
    np.testing.assert_array_equal(processor(torch.from_numpy(raw_site.astype(np.int32)))["pixel_values"], reference)
    hwc = np.ascontiguousarray(np.moveaxis(raw_site, 0, -1))
    np.testing.assert_array_equal(processor(hwc, input_data_format="channels_last")["pixel_values"], reference)
    np.testing.assert_array_equal(processor(hwc)["pixel_values"], reference)  # inferred from the channel count
    batch = processor([SITE_FILES, raw_site[:, ::-1].copy()])["pixel_values"]
    np.testing.assert_array_equal(batch[0], reference[0])
    np.testing.assert_array_equal(batch[1], reference[0][:, ::-1])  # the threshold ignores pixel order
    np.testing.assert_array_equal(processor(np.stack([raw_site, raw_site]))["pixel_values"][1], reference[0])


def _multipage(channels, mode=None):
    buffer = io.BytesIO()
    pages = [Image.fromarray(c) if mode is None else Image.fromarray(c).convert(mode) for c in channels]
    pages[0].save(buffer, format="TIFF", save_all=True, append_images=pages[1:])
    buffer.seek(0)
    return Image.open(buffer)


def test_pil_sites_match_files(processor, raw_site):
    reference = processor(SITE_FILES)["pixel_values"]
    by_name = {JUMP_NAMES[c]: Image.fromarray(channel) for c, channel in zip(CHANNELS, raw_site)}
    assert {image.mode for image in by_name.values()} == {"I;16"}
    np.testing.assert_array_equal(processor(by_name)["pixel_values"], reference)
    in_order = [Image.fromarray(channel) for channel in raw_site]
    np.testing.assert_array_equal(processor(in_order)["pixel_values"], reference)
    multipage = _multipage(raw_site)
    multipage.seek(2)
    batch = processor([multipage, _multipage(raw_site[:, ::-1].copy())])["pixel_values"]
    assert multipage.tell() == 2  # the caller's page position is left alone
    np.testing.assert_array_equal(batch[0], reference[0])
    np.testing.assert_array_equal(batch[1], reference[0][:, ::-1])
    # 8-bit pages skip the 16 -> 8-bit step, as uint8 arrays do.
    site8 = processor.load_uint8_site(SITE_FILES)
    np.testing.assert_array_equal(processor(_multipage(site8))["pixel_values"], processor(site8)["pixel_values"])


def test_pil_images_of_the_wrong_kind_are_refused(processor, raw_site):
    rgb = Image.fromarray(np.zeros((520, 696, 3), np.uint8))
    with pytest.raises(ValueError, match=r"channel 'Mito'.*mode 'RGB' \(3 band"):
        processor(dict(zip(CHANNELS, [rgb] + [Image.fromarray(c) for c in raw_site[1:]])))
    with pytest.raises(ValueError, match=r"page 0: PIL image mode 'RGB'"):
        processor(_multipage([np.zeros((64, 64, 3), np.uint8)] * 5))
    with pytest.raises(ValueError, match="mode 'P'"):
        processor([Image.fromarray(c).convert("P") if i == 0 else Image.fromarray(c) for i, c in enumerate(raw_site)])
    with pytest.raises(ValueError, match=r"has 4 page\(s\), expected one per channel"):
        processor(_multipage(raw_site[:4]))
    with pytest.raises(ValueError, match="channel 'Hoechst': a channel must be a single-page image, got one with 5"):
        processor({**{c: Image.fromarray(raw_site[i]) for i, c in enumerate(CHANNELS)}, "Hoechst": _multipage(raw_site)})


def test_uint8_and_npz_inputs(processor, tmp_path):
    u8 = processor.load_uint8_site(SITE_FILES)
    assert u8.dtype == np.uint8 and u8.shape == (5, 520, 696)
    expected = (u8.astype(np.float32) - MEAN[:, None, None]) / MEAN[:, None, None]
    np.testing.assert_array_equal(processor(u8)["pixel_values"][0], expected)  # uint8 skips the 16->8-bit step
    # Bray 2017 .npz: H x W x 5 uint8 under "sample" plus pickled extras that must not be unpickled
    path = tmp_path / "24279-A01-1.npz"
    extras = np.array({"Mito": "w5"}, dtype=object)
    np.savez(path, sample=np.moveaxis(u8, 0, -1), channels=extras, filenames=extras)
    np.testing.assert_array_equal(processor(str(path))["pixel_values"][0], expected)
    np.testing.assert_array_equal(processor.load_uint8_site(path), u8)
    np.testing.assert_array_equal(processor([str(path), path])["pixel_values"], np.stack([expected, expected]))
    jump = CloomeImageProcessor(channel_order=["DNA", "ER", "RNA", "AGP", "Mito"])
    np.testing.assert_array_equal(jump.load_uint8_site(path), u8[[4, 1, 2, 3, 0]])
    np.savez(tmp_path / "nokey.npz", image=u8)
    with pytest.raises(ValueError, match="nokey.npz.*'sample'"):
        processor(str(tmp_path / "nokey.npz"))


def test_bad_inputs_name_the_culprit(processor, raw_site, tmp_path):
    files = dict(SITE_FILES)
    with pytest.raises(ValueError, match=r"missing channel.*Hoechst"):
        processor({c: f for c, f in files.items() if c != "Hoechst"})
    with pytest.raises(ValueError, match="'Hoechst' given twice"):
        processor({**files, "DNA": files["Hoechst"]})
    with pytest.raises(ValueError, match="unknown channel 'Brightfield'"):
        processor({**files, "Brightfield": files["Mito"]})
    with pytest.raises(ValueError, match="got 4 channel files, expected 5"):
        processor([files[c] for c in CHANNELS[:4]])
    with pytest.raises(ValueError, match="got 4 channels"):
        processor(raw_site[:4])
    corrupt = tmp_path / "Mito.tif"
    corrupt.write_bytes(b"II*\x00 definitely not a tiff")
    with pytest.raises(ValueError, match=f"Could not read image file {corrupt}"):
        processor({**files, "Mito": str(corrupt)})
    with pytest.raises(ValueError, match="not found: .*nowhere.tif"):
        processor({**files, "ERSyto": str(tmp_path / "nowhere.tif")})
    small = {**{c: raw_site[i] for i, c in enumerate(CHANNELS)}, "Ph_golgi": raw_site[3, :100, :100]}
    with pytest.raises(ValueError, match=r"different shapes.*Ph_golgi: \(100, 100\)"):
        processor(small)
    with pytest.raises(ValueError, match="crop_size 600x600 is larger"):
        processor(raw_site, crop_size={"height": 600, "width": 600})
    with pytest.raises(ValueError, match="channel 'Mito' must be a 2-D image"):
        processor({**files, "Mito": raw_site})
    with pytest.raises(ValueError, match="load_uint8_site needs uint8"):
        CloomeImageProcessor(do_rescale_to_uint8=False).load_uint8_site(raw_site)


def test_image_processor_save_load_round_trip(tmp_path, raw_site):
    processor = CloomeImageProcessor(
        channel_order=["DNA", "ER", "RNA", "AGP", "Mito"], intensity_clip_fraction=1e-4, intensity_scale=255,
        crop_size={"height": 128, "width": 96}, image_mean=[1, 2, 3, 4, 5], image_std=[5, 4, 3, 2, 1],
        do_per_image_standardize=True,
    )
    processor.save_pretrained(tmp_path)
    loaded = CloomeImageProcessor.from_pretrained(tmp_path)
    assert loaded.to_dict() == processor.to_dict()
    np.testing.assert_array_equal(loaded(raw_site)["pixel_values"], processor(raw_site)["pixel_values"])


def test_tiff_variants_read_identically(processor, raw_site, tmp_path):
    """The direct reader for plain TIFFs and the tifffile fallback (compressed, big-endian, stacks) agree."""
    from cloome_hf.fast_tiff import read_plain_tiff

    for name, path in SITE_FILES.items():  # real MetaMorph files take the fast path
        direct = read_plain_tiff(path)
        assert direct is not None and direct.dtype == np.uint16
        np.testing.assert_array_equal(direct, tifffile.imread(path))
    variants = {"zlib": {"compression": "zlib"}, "big_endian": {"byteorder": ">"}, "strips": {"rowsperstrip": 7}}
    expected = processor(raw_site)["pixel_values"]
    for variant, options in variants.items():
        files = {}
        for i, c in enumerate(CHANNELS):
            files[c] = str(tmp_path / f"{variant}_{c}.tif")
            tifffile.imwrite(files[c], raw_site[i], **options)
        np.testing.assert_array_equal(processor(files)["pixel_values"], expected, err_msg=variant)
    assert read_plain_tiff(files["Mito"]) is not None and read_plain_tiff(str(tmp_path / "zlib_Mito.tif")) is None
    stack = str(tmp_path / "stack.tif")
    tifffile.imwrite(stack, raw_site)  # one multi-page file holding the whole site
    np.testing.assert_array_equal(processor(stack)["pixel_values"], expected)
