"""CloomeProcessor: combined calls, save/load round trips, Auto classes and model compatibility checks."""

import json

import numpy as np
import pytest
import torch
from transformers import AutoImageProcessor, AutoProcessor

from cloome_hf import CloomeModel, example_site
from cloome_hf.featurization_cloome import MoleculeFeaturizer
from cloome_hf.channels import CHANNELS
from cloome_hf.image_processing_cloome import CloomeImageProcessor
from cloome_hf.processing_cloome import CloomeProcessor, load_model_and_processor


SITE_FILES = {c: example_site()[c] for c in CHANNELS}
SMILES = ["CC(=O)Oc1ccccc1C(=O)O", "CN1C=NC2=C1C(=O)N(C(=O)N2C)C"]


def tiny_processor(fingerprint_size=64):
    return CloomeProcessor(
        image_processor=CloomeImageProcessor(crop_size={"height": 64, "width": 64}),
        featurizer=MoleculeFeaturizer(fingerprint_size=fingerprint_size),
    )


def test_processor_outputs_feed_the_model(tiny_config):
    processor = tiny_processor()
    site = processor.image_processor.load_uint8_site(SITE_FILES)
    batch = processor(images=[SITE_FILES, site], smiles=SMILES, return_tensors="pt")
    assert set(batch) == {"pixel_values", "fingerprints"}
    assert batch["pixel_values"].shape == (2, 5, 64, 64) and batch["fingerprints"].shape == (2, 64)
    assert batch["pixel_values"].dtype == batch["fingerprints"].dtype == torch.float32
    torch.testing.assert_close(batch["pixel_values"][0], batch["pixel_values"][1], rtol=0, atol=0)
    np.testing.assert_array_equal(batch["fingerprints"].numpy(), processor.featurizer(SMILES))
    model = CloomeModel(tiny_config).eval()
    output = model(**batch, return_loss=True)
    assert torch.isfinite(output.loss) and output.logits_per_image.shape == (2, 2)
    only_molecules = processor(smiles=SMILES[0], return_tensors="pt")
    assert set(only_molecules) == {"fingerprints"} and only_molecules["fingerprints"].shape == (1, 64)
    with pytest.raises(ValueError, match="images, smiles or both"):
        processor()


def test_save_load_round_trip_every_setting(tmp_path):
    processor = CloomeProcessor(
        image_processor=CloomeImageProcessor(
            channel_order=["DNA", "ER", "RNA", "AGP", "Mito"], do_rescale_to_uint8=True,
            intensity_clip_fraction=1e-4, intensity_scale=255.0, crop_size={"height": 96, "width": 80},
            image_mean=[10, 20, 30, 40, 50], image_std=[2, 3, 4, 5, 6], do_per_image_standardize=True,
        ),
        featurizer=MoleculeFeaturizer(kind="morgan_rdkit_max", fingerprint_size=2048, radius=2, use_chirality=False,
                                      max_path=5, parallel_threshold=123),
    )
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "processor_config.json").read_text())
    assert saved["featurizer"]["kind"] == "morgan_rdkit_max" and saved["image_processor"]["intensity_scale"] == 255.0
    for loaded in (CloomeProcessor.from_pretrained(tmp_path), AutoProcessor.from_pretrained(tmp_path)):
        assert type(loaded) is CloomeProcessor
        assert loaded.to_dict() == processor.to_dict()
        assert loaded.featurizer == processor.featurizer
        a = loaded(images=SITE_FILES, smiles=SMILES)
        b = processor(images=SITE_FILES, smiles=SMILES)
        np.testing.assert_array_equal(a["pixel_values"], b["pixel_values"])
        np.testing.assert_array_equal(a["fingerprints"], b["fingerprints"])
    image_processor = AutoImageProcessor.from_pretrained(tmp_path)
    assert type(image_processor) is CloomeImageProcessor
    assert image_processor.to_dict() == processor.image_processor.to_dict()


def test_check_model_compatibility(tiny_config):
    tiny_processor(64).check_model_compatibility(tiny_config)
    with pytest.raises(ValueError, match="1024-dimensional 'morgan' fingerprints .* fingerprint_size=64"):
        CloomeProcessor(featurizer=MoleculeFeaturizer()).check_model_compatibility(tiny_config)
    four_channels = CloomeProcessor(
        image_processor=CloomeImageProcessor(channel_order=["Mito", "ERSyto", "Ph_golgi", "Hoechst"]),
        featurizer=MoleculeFeaturizer(fingerprint_size=64),
    )
    with pytest.raises(ValueError, match="4 channels .* num_channels=5"):
        four_channels.check_model_compatibility(tiny_config)


def test_model_and_processor_saved_together_refuse_a_mismatch(tiny_config, tmp_path):
    model = CloomeModel(tiny_config)
    good, bad = tmp_path / "good", tmp_path / "bad"
    for folder, processor in ((good, tiny_processor(64)), (bad, tiny_processor(128))):
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
    loaded_model, loaded_processor = load_model_and_processor(good)
    assert loaded_processor.featurizer.fingerprint_size == loaded_model.config.molecule_config.fingerprint_size == 64
    with pytest.raises(ValueError, match="128-dimensional .* fingerprint_size=64"):
        load_model_and_processor(bad)
    with pytest.raises(ValueError, match="incompatible"):
        AutoProcessor.from_pretrained(bad)
    # a processor saved on its own is not checked against anything
    alone = tmp_path / "alone"
    tiny_processor(128).save_pretrained(alone)
    assert CloomeProcessor.from_pretrained(alone).featurizer.fingerprint_size == 128


def test_structured_and_flat_kwargs_reach_the_image_processor():
    processor = tiny_processor()
    crop = {"height": 48, "width": 40}
    expected = processor.image_processor(SITE_FILES, crop_size=crop, intensity_scale=255)["pixel_values"]
    structured = processor(images=SITE_FILES, images_kwargs={"crop_size": crop, "intensity_scale": 255},
                           return_tensors="pt")
    flat = processor(images=SITE_FILES, crop_size=crop, intensity_scale=255, common_kwargs={"return_tensors": "pt"})
    nested_tensors = processor(images=SITE_FILES, smiles=SMILES, intensity_scale=255,
                               images_kwargs={"crop_size": crop, "return_tensors": "pt"})
    for batch in (structured, flat, nested_tensors):
        assert isinstance(batch["pixel_values"], torch.Tensor)
        np.testing.assert_array_equal(batch["pixel_values"].numpy(), expected)
    assert isinstance(nested_tensors["fingerprints"], torch.Tensor)  # one BatchFeature, one tensor type
    assert processor(images=SITE_FILES)["pixel_values"].shape == (1, 5, 64, 64)  # the call changed no setting


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"crop_size": {"height": 8, "width": 8}, "images_kwargs": {"crop_size": {"height": 8, "width": 8}}},
         "crop_size was passed two times"),
        ({"do_resize": True}, r"Unknown CloomeProcessor argument\(s\): \['do_resize'\]"),
        ({"images_kwargs": {"do_convert_rgb": True}}, r"Unknown images_kwargs .*\['do_convert_rgb'\]"),
        ({"text_kwargs": {"padding": "max_length"}}, r"no text sub-processor; got text_kwargs \['padding'\]"),
        ({"crop_size": "large"}, "crop_size"),
    ],
)
def test_bad_processor_kwargs_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_processor()(images=SITE_FILES, **kwargs)
