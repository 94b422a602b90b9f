"""A dataset stored in another channel order, with that order recorded, gives the same embeddings as the canonical
one through every path users run: training validation, ``cloome evaluate``, ``cloome embed`` and the pipeline."""

import json

import numpy as np
import pytest
import torch
from transformers import pipeline

from cloome_hf import CloomeConfig, CloomeImageProcessor, CloomeModel, CloomeProcessor, MoleculeFeaturizer
from cloome_hf.channels import CHANNELS
from cloome_hf.data import channels_of, make_synthetic_dataset
from cloome_hf.data.schema import dataset_description, decode_row, encode_image
from cloome_hf.inference import encode_sites, read_embeddings

STORED = ("Hoechst", "Ph_golgi", "Mito", "ERSytoBleed", "ERSyto")  # a JUMP-like DNA-first order
SIZE = 32


def _permuted(ds, order):
    index = [CHANNELS.index(c) for c in order]

    def permute(row):
        data, shape = encode_image(np.ascontiguousarray(decode_row(row)[index]))
        return {"image": data, "image_shape": shape}

    out = ds.map(permute)
    out.info.description = dataset_description(order)
    return out


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("channels")
    ds = make_synthetic_dataset(num_molecules=12, sites_per_molecule=2, num_plates=2, image_size=SIZE, seed=0)
    ds.save_to_disk(str(root / "canonical"))
    permuted = _permuted(ds, STORED)
    permuted.save_to_disk(str(root / "permuted"))
    torch.manual_seed(0)
    model = CloomeModel(CloomeConfig(vision_config={"layers": [1, 1, 1, 1], "base_width": 8, "head_pool_size": 1,
                                                    "image_size": [SIZE, SIZE]},
                                     molecule_config={"fingerprint_size": 64, "hidden_size": 32,
                                                      "num_hidden_layers": 2}, projection_dim=16))
    processor = CloomeProcessor(CloomeImageProcessor(crop_size={"height": SIZE, "width": SIZE}),
                                MoleculeFeaturizer(fingerprint_size=64))
    model.save_pretrained(root / "model")
    processor.save_pretrained(root / "model")
    return root, ds, model.eval(), processor


def test_the_stored_order_is_recorded_and_differs(folders):
    import datasets

    root, ds, _, _ = folders
    permuted = datasets.load_from_disk(str(root / "permuted"))
    assert channels_of(permuted) == STORED and channels_of(ds) == CHANNELS
    assert decode_row(permuted[0])[0].tobytes() == decode_row(ds[0])[CHANNELS.index("Hoechst")].tobytes()


def test_encoder_path(folders):
    import datasets

    root, ds, model, processor = folders
    with torch.no_grad():  # independent: the processor on the canonical arrays, then the model
        pixels = processor(images=[decode_row(r) for r in ds], return_tensors="pt")["pixel_values"]
        reference = torch.nn.functional.normalize(model.get_image_features(pixels).pooler_output, dim=-1).numpy()
    permuted = datasets.load_from_disk(str(root / "permuted"))
    np.testing.assert_allclose(encode_sites(model, processor, permuted, batch_size=5), reference, atol=1e-6)
    np.testing.assert_allclose(encode_sites(model, processor, ds, batch_size=7), reference, atol=1e-6)


def test_evaluate_and_embed_commands(folders, tmp_path):
    from cloome_hf.cli import embed, evaluate

    root = folders[0]
    outputs = {}
    for name in ("canonical", "permuted"):
        evaluate.main(["--model", str(root / "model"), "--dataset", str(root / name), "--tasks", "retrieval",
                       "--output_dir", str(tmp_path / f"eval-{name}"), "--gallery_queries", "2"])
        embed.main(["--model", str(root / "model"), "--dataset", str(root / name), "--output_dir",
                    str(tmp_path / f"emb-{name}"), "--batch_size", "5"])
        stored = read_embeddings(str(tmp_path / f"emb-{name}" / "images")).to_pandas()
        outputs[name] = (np.load(tmp_path / f"eval-{name}" / "image_embeddings.npy"),
                         np.stack(stored["embedding"].to_numpy()))
    np.testing.assert_allclose(outputs["permuted"][0], outputs["canonical"][0], atol=1e-6)
    np.testing.assert_allclose(outputs["permuted"][1], outputs["canonical"][1], atol=1e-6)
    np.testing.assert_allclose(outputs["canonical"][1], outputs["canonical"][0], atol=1e-6)


def test_pipeline(folders):
    import datasets

    root, ds, _, _ = folders
    extract = pipeline("cell-painting-feature-extraction", model=str(root / "model"))
    canonical = np.stack(extract(ds, batch_size=4))
    permuted = np.stack(extract(datasets.load_from_disk(str(root / "permuted")), batch_size=4))
    np.testing.assert_allclose(permuted, canonical, atol=1e-6)
    np.testing.assert_allclose(np.stack(extract([decode_row(r) for r in ds], batch_size=4)), canonical, atol=1e-6)


def test_training_validation(folders, tmp_path, one_thread):
    from cloome_hf.train import main

    root = folders[0]
    results = {}
    for name in ("canonical", "permuted"):
        results[name] = main(["--dataset", str(root / name), "--output_dir", str(tmp_path / name), "--image_size",
                              str(SIZE), "--base_width", "8", "--head_pool_size", "1", "--molecule_hidden_size", "32",
                              "--projection_dim", "16", "--fingerprint_size", "64", "--per_device_train_batch_size",
                              "6", "--max_steps", "2", "--eval_steps", "2", "--save_steps", "2"])
    for key in ("validation_image_embeds", "validation_molecule_embeds"):
        np.testing.assert_allclose(results["permuted"][key], results["canonical"][key], atol=1e-6)
    log = [json.loads(line) for line in (tmp_path / "permuted" / "train_log.jsonl").read_text().splitlines()]
    canonical = [json.loads(line) for line in (tmp_path / "canonical" / "train_log.jsonl").read_text().splitlines()]
    assert [r.get("loss") for r in log] == [r.get("loss") for r in canonical]  # the same pixels were trained on


def test_a_missing_channel_is_refused_naming_it(folders):
    root, ds, model, processor = folders
    four = ds.map(lambda row: dict(zip(("image", "image_shape"),
                                       encode_image(np.ascontiguousarray(decode_row(row)[:4])))))
    four.info.description = dataset_description(CHANNELS[:4])
    with pytest.raises(ValueError, match="Hoechst"):
        encode_sites(model, processor, four)
