"""Hardening round two, classes 1, 4 and 6 of issue 22: non-finite numbers never become good state (checkpoint,
model, store, index row), weights of an integer dtype are refused by tensor name, and search refuses non-finite
queries and index rows by row."""

import json
import os

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from cloome_hf import CloomeConfig, CloomeModel
from cloome_hf.image_processing_cloome import CloomeImageProcessor
from cloome_hf.inference import store
from cloome_hf.inference.search import EmbeddingIndex

SIZE = 32
VISION = {"backbone": "cloome_resnet50", "num_channels": 5, "layers": [1, 1, 1, 1], "image_size": [SIZE, SIZE],
          "head_pool_size": 1, "base_width": 8}
MOLECULE = {"fingerprint_size": 128, "hidden_size": 32, "num_hidden_layers": 2}
TRAIN = ["--synthetic_molecules", "40", "--synthetic_sites_per_molecule", "3", "--base_width", "8",
         "--molecule_hidden_size", "32", "--projection_dim", "16", "--fingerprint_size", "128",
         "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "32",
         "--vision_layers", "1", "1", "1", "1", "--eval_steps", "100", "--save_total_limit", "0"]


def _train(out, *extra):
    from cloome_hf.train import main

    return main(["--output_dir", str(out), *TRAIN, *extra])


def _tiny_model_folder(folder):
    model = CloomeModel(CloomeConfig(vision_config=dict(VISION), molecule_config=dict(MOLECULE), projection_dim=8))
    model.eval().save_pretrained(folder)
    return model


def _tamper(folder, name, change):
    """Rewrite one tensor of the folder's model.safetensors with ``change(tensor)``."""
    path = os.path.join(folder, "model.safetensors")
    weights = load_file(path)
    assert name in weights, sorted(weights)[:5]
    weights[name] = change(weights[name])
    save_file(weights, path, metadata={"format": "pt"})


def _first_float_weight(folder, *, buffer=False):
    weights = load_file(os.path.join(folder, "model.safetensors"))
    suffix = "running_var" if buffer else "weight"
    return next(k for k, v in weights.items() if k.endswith(suffix) and v.is_floating_point() and v.numel() > 1)


def _finite_checkpoints(out):
    folder = out / "checkpoints"
    names = sorted(os.listdir(folder)) if folder.is_dir() else []
    return {n: all(torch.isfinite(t).all() for t in load_file(folder / n / "model.safetensors").values()
                   if t.is_floating_point()) for n in names}


# ----------------------------------------------------------------- class 1: non-finite state
@pytest.mark.parametrize("lr, save_steps", [("inf", "1"), ("inf", "100")])
def test_class1_an_update_that_makes_the_weights_non_finite_is_never_saved(tmp_path, one_thread, lr, save_steps):
    from cloome_hf.train import TrainingStopped

    out = tmp_path / "run"
    with pytest.raises(TrainingStopped, match=r"non-finite (weights|loss|gradient) at step \d+") as err:
        _train(out, "--learning_rate", lr, "--warmup_steps", "0", "--max_steps", "3", "--save_steps", save_steps)
    saved = _finite_checkpoints(out)
    assert saved and all(saved.values()), saved
    assert not (out / "model.safetensors").exists(), "a stopped run must not write a final model"
    if lr == "inf":  # the loss and gradient of step 1 are finite: only the weights check can see it
        assert "non-finite weights at step 1;" in str(err.value)
        assert str(out / "checkpoints" / "checkpoint-0") in str(err.value)


def test_class1_a_nan_learning_rate_is_refused_before_anything_runs(tmp_path):
    with pytest.raises(ValueError, match="learning_rate must be positive, got nan"):
        _train(tmp_path / "run", "--learning_rate", "nan", "--max_steps", "1")
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("value, buffer", [(float("nan"), False), (float("inf"), False), (float("-inf"), True)])
def test_class1_a_model_folder_with_a_non_finite_tensor_is_refused_naming_it(tmp_path, value, buffer):
    folder = tmp_path / "model"
    _tiny_model_folder(folder)
    name = _first_float_weight(folder, buffer=buffer)
    _tamper(folder, name, lambda t: t.clone().index_put_((torch.tensor([1]),), torch.tensor(value)))
    with pytest.raises(ValueError, match=rf"non-finite values .* in tensor '{name}'"):
        CloomeModel.from_pretrained(folder)


def test_class1_save_pretrained_refuses_a_non_finite_model_and_writes_nothing(tmp_path):
    model = CloomeModel(CloomeConfig(vision_config=dict(VISION), molecule_config=dict(MOLECULE), projection_dim=8))
    name = next(k for k, v in model.state_dict().items() if k.endswith("weight") and v.numel() > 1)
    with torch.no_grad():
        model.state_dict()[name].view(-1)[0] = float("inf")
    with pytest.raises(ValueError, match=rf"the model to save to .* in tensor '{name}'"):
        model.save_pretrained(tmp_path / "model")
    assert not (tmp_path / "model").exists()


def test_class1_training_from_a_nan_model_folder_writes_no_checkpoint(tmp_path, one_thread):
    folder, out = tmp_path / "model", tmp_path / "run"
    from cloome_hf.featurization_cloome import MoleculeFeaturizer
    from cloome_hf.processing_cloome import CloomeProcessor

    model = CloomeModel(CloomeConfig(vision_config=dict(VISION, image_size=[64, 64], head_pool_size=2),
                                     molecule_config=dict(MOLECULE), projection_dim=16))
    model.save_pretrained(folder)
    CloomeProcessor(CloomeImageProcessor(), MoleculeFeaturizer(fingerprint_size=128)).save_pretrained(folder)
    name = _first_float_weight(folder)
    _tamper(folder, name, lambda t: torch.full_like(t, float("nan")))
    with pytest.raises(ValueError, match=rf"tensor '{name}'"):
        _train(out, "--model", str(folder), "--max_steps", "1", "--save_steps", "1")
    assert not _finite_checkpoints(out)


@pytest.mark.parametrize("std", [1e-45, 1e-39, 0.0])
def test_class1_a_std_float32_cannot_divide_by_is_refused_naming_the_channel(std):
    stds = [1.0, std, 1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match=r"image_std|non-finite float32"):
        CloomeImageProcessor(image_std=stds)


def test_class1_a_mean_and_std_that_overflow_float32_are_refused():
    with pytest.raises(ValueError, match=r"channel .* give non-finite float32 pixel values"):
        CloomeImageProcessor(image_mean=[-3e38] * 5, image_std=[0.5] * 5)


@pytest.mark.parametrize("bad", [np.nan, np.inf, 3e38])
def test_class1_float_pixels_that_normalise_to_non_finite_are_refused_naming_site_and_channel(bad):
    processor = CloomeImageProcessor(do_rescale_to_uint8=False, do_center_crop=False, image_mean=[0.0] * 5,
                                     image_std=[0.1] * 5)
    sites = np.ones((2, 5, 8, 8), dtype=np.float32)
    sites[1, 3, 2, 2] = bad
    channel = processor.channel_order[3]
    with pytest.raises(ValueError, match=rf"(site 1|NaN or infinite).*{channel}|site 1: channel '{channel}'"):
        processor(list(sites), input_data_format="channels_first")


@pytest.mark.parametrize("dtype, bad", [("float32", np.nan), ("float32", -np.inf), ("float16", 1e5)])
def test_class1_a_store_shard_with_a_non_finite_row_is_refused_naming_its_key(tmp_path, dtype, bad):
    embeddings = np.ones((3, 4), dtype=np.float32)
    embeddings[2, 1] = bad
    path = str(tmp_path / "images" / "shard-00000.parquet")
    os.makedirs(os.path.dirname(path))
    with pytest.raises(ValueError, match=r"non-finite values .* at row 2 \('site-c'\)"):
        store.write_shard(path, {"sample_key": ["site-a", "site-b", "site-c"]}, embeddings, dtype=dtype)
    assert not os.path.exists(path)


def test_class1_cloome_embed_with_a_tiny_processor_std_writes_no_store(tmp_path):
    from cloome_hf.cli import embed
    from cloome_hf.data.synthetic import make_synthetic_dataset
    from cloome_hf.featurization_cloome import MoleculeFeaturizer
    from cloome_hf.processing_cloome import CloomeProcessor

    folder, out = tmp_path / "model", tmp_path / "store"
    _tiny_model_folder(folder)
    CloomeProcessor(CloomeImageProcessor(crop_size={"height": SIZE, "width": SIZE}),
                    MoleculeFeaturizer(fingerprint_size=128)).save_pretrained(folder)
    config_path = next(p for p in folder.iterdir() if p.name.endswith(".json") and "image_std" in p.read_text())
    config = json.loads(config_path.read_text())
    holder = config.get("image_processor", config)
    holder["image_std"] = [1e-45] * len(holder["image_std"])
    config_path.write_text(json.dumps(config))
    make_synthetic_dataset(num_molecules=2, sites_per_molecule=1, num_plates=1, image_size=SIZE,
                           seed=1).save_to_disk(str(tmp_path / "sites"))
    with pytest.raises(ValueError, match=r"image_std of channel .* give non-finite float32"):
        embed.main(["--model", str(folder), "--dataset", str(tmp_path / "sites"), "--output_dir", str(out),
                    "--batch_size", "2", "--shard_size", "2"])
    shards = list((out / "images").glob("*.parquet")) if (out / "images").is_dir() else []
    assert shards == []


# ----------------------------------------------------------------- class 4: weights of the wrong kind
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.bool])
def test_class4_an_integer_tensor_of_the_right_shape_is_refused_naming_it(tmp_path, dtype):
    folder = tmp_path / "model"
    _tiny_model_folder(folder)
    name = _first_float_weight(folder)
    _tamper(folder, name, lambda t: t.round().to(dtype))
    with pytest.raises(ValueError, match=rf"tensor '{name}' has dtype .*not a floating type"):
        CloomeModel.from_pretrained(folder)


def test_class4_an_integer_tensor_in_a_checkpoint_is_refused_on_resume(finished_tiny_run, tmp_path, one_thread):
    import shutil

    from conftest import TINY_TRAIN_ARGS
    from cloome_hf.train import main

    run = tmp_path / "run"
    shutil.copytree(finished_tiny_run, run)
    checkpoint = run / "checkpoints" / "checkpoint-1"
    name = _first_float_weight(checkpoint)
    _tamper(checkpoint, name, lambda t: t.round().to(torch.int32))
    with pytest.raises(ValueError, match=rf"tensor '{name}' has dtype"):
        main(["--output_dir", str(run), *TINY_TRAIN_ARGS, "--max_steps", "3", "--resume_from_checkpoint",
              str(checkpoint), "--allow_changed_settings"])


def test_class4_integer_buffers_the_model_keeps_as_integers_still_load(tmp_path):
    folder = tmp_path / "model"
    model = _tiny_model_folder(folder)
    integer = [k for k, v in model.state_dict().items() if not v.is_floating_point()]
    assert integer, "the tiny model has integer buffers (batch-norm step counts)"
    CloomeModel.from_pretrained(folder)  # must not raise


# ----------------------------------------------------------------- class 6: search over non-finite vectors
def _vectors(n=6, d=4):
    return np.random.default_rng(0).normal(size=(n, d)).astype(np.float32)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("index_type", ["flat", "hnsw"])
def test_class6_an_index_over_a_non_finite_row_is_refused_naming_the_row(bad, index_type):
    vectors = _vectors()
    vectors[4, 2] = bad
    meta = pd.DataFrame({"sample_key": [f"k{i}" for i in range(6)]})
    with pytest.raises(ValueError, match=r"embeddings to index has non-finite values .* at row 4 \('k4'\)"):
        EmbeddingIndex(vectors, meta, index_type=index_type)
    with pytest.raises(ValueError, match=r"at row 4"):
        EmbeddingIndex(vectors)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_class6_a_non_finite_query_is_refused_not_answered_empty(bad):
    index = EmbeddingIndex(_vectors())
    queries = _vectors(3)
    queries[1, 0] = bad
    with pytest.raises(ValueError, match=r"search queries has non-finite values .* at row 1"):
        index.search(queries, k=2)
    with pytest.raises(ValueError, match=r"search queries"):
        index.search_table(queries, k=2)
    scores, ids = index.search(queries[[0, 2]], k=2)  # the finite rows alone are answered
    assert (ids >= 0).all() and np.isfinite(scores).all()


def test_class6_a_saved_index_tampered_to_hold_a_nan_row_is_refused_on_load(tmp_path):
    import faiss

    meta = pd.DataFrame({"sample_key": [f"k{i}" for i in range(6)]})
    EmbeddingIndex(_vectors(), meta).save(tmp_path / "index")
    index = faiss.read_index(str(tmp_path / "index" / "index.faiss"))
    vectors = faiss.rev_swig_ptr(index.get_xb(), index.ntotal * index.d).reshape(index.ntotal, index.d)
    vectors[3, 0] = np.nan  # a view: this writes into the FAISS index
    faiss.write_index(index, str(tmp_path / "index" / "index.faiss"))
    with pytest.raises(ValueError, match=r"saved index .* at row 3 \('k3'\)"):
        EmbeddingIndex.load(tmp_path / "index")
