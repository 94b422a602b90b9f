"""Hostile and careless inputs on the inference and publishing path: an embed resumed after the model changed,
a store pointed at a model folder, a second writer, stale shards in a local repo, a token file next to a
conversion, a tampered search index, checkpoints with missing or unexpected weights, damaged side files."""

import json
import os

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import safetensors.torch
import torch

from cloome_hf import CloomeConfig, CloomeModel
from cloome_hf.cli import embed
from cloome_hf.inference import store
from lock_holder import lock_held_elsewhere

SIZE = 32
VISION = {"backbone": "cloome_resnet50", "num_channels": 5, "layers": [1, 1, 1, 1], "image_size": [SIZE, SIZE],
          "head_pool_size": 1, "base_width": 8}
MOLECULE = {"fingerprint_size": 64, "hidden_size": 32, "num_hidden_layers": 2}


def _save_model(folder, seed):
    from cloome_hf.featurization_cloome import MoleculeFeaturizer
    from cloome_hf.image_processing_cloome import CloomeImageProcessor
    from cloome_hf.processing_cloome import CloomeProcessor

    torch.manual_seed(seed)
    model = CloomeModel(CloomeConfig(vision_config=dict(VISION), molecule_config=dict(MOLECULE), projection_dim=8))
    model.eval().save_pretrained(folder)
    processor = CloomeProcessor(CloomeImageProcessor(crop_size={"height": SIZE, "width": SIZE}),
                                MoleculeFeaturizer(fingerprint_size=64))
    processor.save_pretrained(folder)
    return model, processor


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    from cloome_hf.data.synthetic import make_synthetic_dataset

    root = tmp_path_factory.mktemp("hardening_embed")
    ds = make_synthetic_dataset(num_molecules=4, sites_per_molecule=2, num_plates=1, image_size=SIZE, seed=1)
    ds.save_to_disk(str(root / "sites"))
    return {"ds": ds, "path": root / "sites"}


def _embed(model_dir, sites, out, *extra):
    return embed.main(["--model", str(model_dir), "--dataset", str(sites["path"]), "--output_dir", str(out),
                       "--batch_size", "4", "--shard_size", "4", *extra])


def _reference(model, processor, ds):
    """Embeddings computed here, straight from the model (not through the store code under test)."""
    from cloome_hf.data.schema import decode_row

    with torch.no_grad():
        pixels = processor(images=[decode_row(r) for r in ds], return_tensors="pt")["pixel_values"]
        return torch.nn.functional.normalize(model.get_image_features(pixels).pooler_output, dim=-1).numpy()


def _stored(out):
    files = sorted(os.listdir(out / "images"))
    return np.concatenate([np.stack(pq.read_table(out / "images" / f).column("embedding").to_numpy(
        zero_copy_only=False)) for f in files])


# ---------------------------------------------------------------------------------------------- embed
def test_an_embed_resumed_after_the_model_changed_is_refused_and_never_mixes(sites, tmp_path, monkeypatch):
    model_dir, out = tmp_path / "model", tmp_path / "store"
    old_model, processor = _save_model(model_dir, seed=0)
    real, calls = store.write_shard, []

    def killed_on_second(path, *a):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated kill")
        real(path, *a)

    monkeypatch.setattr(store, "write_shard", killed_on_second)
    with pytest.raises(KeyboardInterrupt):
        _embed(model_dir, sites, out)
    monkeypatch.setattr(store, "write_shard", real)
    assert sorted(os.listdir(out / "images")) == ["shard-00000.parquet"]
    old_shard = (out / "images" / "shard-00000.parquet").read_bytes()

    new_model, _ = _save_model(model_dir, seed=1)  # retrained in place: same path, same config, other weights
    with pytest.raises(ValueError, match=r"different settings \(model_weights\).*--overwrite_output_dir"):
        _embed(model_dir, sites, out)
    assert sorted(os.listdir(out / "images")) == ["shard-00000.parquet"]  # nothing of the new model added
    assert (out / "images" / "shard-00000.parquet").read_bytes() == old_shard

    _embed(model_dir, sites, out, "--overwrite_output_dir")  # starts clean with the new model
    stored = _stored(out)
    np.testing.assert_allclose(stored, _reference(new_model, processor, sites["ds"]), atol=1e-5)
    assert not np.allclose(stored[:4], _reference(old_model, processor, sites["ds"])[:4], atol=1e-3)
    _embed(model_dir, sites, out)  # and an unchanged rerun is a resume, not a refusal


def test_class7_an_image_shard_cut_off_mid_file_is_named_and_recomputed(sites, tmp_path, caplog):
    """#22 class 7 on the images store: a kept shard cut off mid-file fails its recorded checksum on resume, is
    named and recomputed, and the store reads back whole, equal to the model's own embeddings."""
    import logging

    model, processor = _save_model(tmp_path / "model", seed=0)
    out = tmp_path / "out"
    _embed(tmp_path / "model", sites, out)
    shard = out / "images" / "shard-00001.parquet"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 3])
    with caplog.at_level(logging.WARNING, logger="cloome_hf.inference.store"):
        _embed(tmp_path / "model", sites, out)
    assert "shard-00001.parquet: its checksum does not match its record" in caplog.text
    np.testing.assert_allclose(_stored(out), _reference(model, processor, sites["ds"]), atol=1e-5)


def test_an_embed_into_a_model_folder_leaves_its_card_alone(sites, tmp_path):
    model_dir = tmp_path / "model"
    _save_model(model_dir, seed=0)
    (model_dir / "README.md").write_text("# my model card\n")
    before = {f: (model_dir / f).read_bytes() for f in os.listdir(model_dir)}
    for extra in ((), ("--overwrite_output_dir",)):
        with pytest.raises(ValueError, match=r"is not an embedding store and not empty \(it holds README\.md, "):
            _embed(model_dir, sites, model_dir, *extra)
        assert {f: (model_dir / f).read_bytes() for f in os.listdir(model_dir)} == before
    with pytest.raises(ValueError, match="not a card written by cloome embed; refusing to overwrite it"):
        store.write_store_readme(str(model_dir))


def test_embed_refuses_a_folder_another_writer_holds(sites, tmp_path):
    from cloome_hf.safe_io import LOCK_FILE

    model_dir, out = tmp_path / "model", tmp_path / "store"
    _save_model(model_dir, seed=0)
    out.mkdir()
    with lock_held_elsewhere(out, "cloome embed") as pid:
        with pytest.raises(ValueError, match=rf"in use by another run \(cloome embed, pid {pid}"):
            _embed(model_dir, sites, out)
        assert sorted(os.listdir(out)) == [LOCK_FILE]
    _embed(model_dir, sites, out)  # the dead holder's lock is taken over; released at the end
    assert not (out / LOCK_FILE).exists() and len(_stored(out)) == len(sites["ds"])


def test_a_damaged_store_info_is_named(sites, tmp_path):
    model_dir, out = tmp_path / "model", tmp_path / "store"
    _save_model(model_dir, seed=0)
    _embed(model_dir, sites, out)
    (out / "embedding_info.json").write_text('{"model_id": ')
    with pytest.raises(ValueError, match=r"cannot read the embedding store info .*embedding_info\.json"):
        _embed(model_dir, sites, out)
    with pytest.raises(ValueError, match=r"embedding_info\.json"):
        store.read_info(out)


# ---------------------------------------------------------------------------------------------- publishing
def test_push_local_dir_never_serves_older_shards(sites, tmp_path, monkeypatch):
    import datasets

    from cloome_hf.cli import push
    from cloome_hf.publish import hub

    model_dir, big, small = tmp_path / "model", tmp_path / "big", tmp_path / "small"
    _save_model(model_dir, seed=0)
    _embed(model_dir, sites, big)
    _embed(model_dir, sites, small, "--max_sites", "3")
    local = tmp_path / "publish"
    monkeypatch.setattr(hub, "MAX_SHARD_BYTES", 200)  # the first, bigger store is pushed in several shards
    push.main(["--embeddings", str(big), "--repo_id", "me/x", "--local_dir", str(local)])
    assert len(os.listdir(local / "dataset" / "images")) > 1
    monkeypatch.setattr(hub, "MAX_SHARD_BYTES", 500 << 20)
    push.main(["--embeddings", str(small), "--repo_id", "me/x", "--local_dir", str(local)])
    assert sorted(os.listdir(local / "dataset" / "images")) == ["train-00000-of-00001.parquet"]
    ds = datasets.load_dataset(str(local / "dataset"), "images", split="train", cache_dir=str(tmp_path / "cache"))
    assert ds["sample_key"] == sites["ds"]["sample_key"][:3]


def test_convert_uploads_only_the_files_it_wrote(tmp_path, monkeypatch):
    import huggingface_hub

    from cloome_hf.publish.convert import convert_original_checkpoint
    from upstream_checkpoint import make_upstream_state_dict

    committed = []

    class RecordingHfApi:
        def __init__(self, *a, **k):
            pass

        def create_repo(self, *a, **k):
            pass

        def upload_folder(self, **kwargs):  # the whole-folder upload must not be used
            raise AssertionError("upload_folder would upload every file of the folder")

        def create_commit(self, *, repo_id, operations, **kwargs):
            committed.extend(op.path_in_repo for op in operations)

    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingHfApi)
    out = tmp_path / "out"
    out.mkdir()
    (out / ".env").write_text("HF_TOKEN=hf_not_for_the_hub\n")
    (out / "notes.txt").write_text("private\n")
    checkpoint = tmp_path / "cloome-bioactivity.pt"
    torch.save({"state_dict": make_upstream_state_dict(fingerprint_size=1024, seed=3)}, checkpoint)
    convert_original_checkpoint(checkpoint, out, recipe="bioactivity", push_to_hub="me/cloome")
    assert ".env" not in committed and "notes.txt" not in committed
    assert sorted(committed) == sorted(set(os.listdir(out)) - {".env", "notes.txt"})
    assert {"README.md", "config.json", "model.safetensors", "processor_config.json"} <= set(committed)
    assert (out / ".env").read_text() == "HF_TOKEN=hf_not_for_the_hub\n"  # left alone, just not uploaded


def test_a_damaged_upstream_checkpoint_is_named(tmp_path):
    from cloome_hf.publish.convert import load_upstream_checkpoint
    from upstream_checkpoint import make_upstream_state_dict

    path = tmp_path / "c.pt"
    torch.save({"state_dict": make_upstream_state_dict(seed=1)}, path)
    path.write_bytes(path.read_bytes()[:1000])  # truncated download
    with pytest.raises(ValueError, match=rf"cannot read the checkpoint '{path}'"):
        load_upstream_checkpoint(path)


# ---------------------------------------------------------------------------------------------- search index
@pytest.fixture
def saved_index(tmp_path):
    from cloome_hf.inference.search import EmbeddingIndex

    rng = np.random.default_rng(0)
    index = EmbeddingIndex(rng.normal(size=(30, 8)), pd.DataFrame({"sample_key": [f"s{i}" for i in range(30)]}))
    index.save(tmp_path / "index")
    return tmp_path / "index"


def _tamper_config(folder, **changes):
    config = json.loads((folder / "index_config.json").read_text())
    config.update(changes)
    (folder / "index_config.json").write_text(json.dumps(config))


def test_a_tampered_index_is_refused(saved_index):
    import faiss

    from cloome_hf.inference.search import EmbeddingIndex

    assert len(EmbeddingIndex.load(saved_index)) == 30
    meta = pd.read_parquet(saved_index / "metadata.parquet")
    pd.concat([meta, meta.iloc[:1]]).to_parquet(saved_index / "metadata.parquet", index=False)  # an extra row
    with pytest.raises(ValueError, match=r"inconsistent .*metadata\.parquet has 31 rows for 30 vectors"):
        EmbeddingIndex.load(saved_index)
    meta.to_parquet(saved_index / "metadata.parquet", index=False)
    for changes, message in (({"num_rows": 29}, "holds 30 vectors, the config 29"),
                             ({"dim": 16}, "has dimension 8, the config 16"),
                             ({"index_type": "hnsw", "ef_search": 64},
                              "is a IndexFlatIP .*not the inner-product 'hnsw'")):
        original = (saved_index / "index_config.json").read_text()
        _tamper_config(saved_index, **changes)
        with pytest.raises(ValueError, match=message):
            EmbeddingIndex.load(saved_index)
        (saved_index / "index_config.json").write_text(original)
    other = faiss.IndexFlatL2(8)  # right size, wrong metric
    other.add(np.zeros((30, 8), dtype=np.float32))
    faiss.write_index(other, str(saved_index / "index.faiss"))
    with pytest.raises(ValueError, match="not the inner-product 'flat' index"):
        EmbeddingIndex.load(saved_index)


def test_damaged_index_files_are_named(saved_index):
    from cloome_hf.inference.search import CloomeIndex, EmbeddingIndex

    (saved_index / "index_config.json").write_text('{"index_type": "flat"')
    with pytest.raises(ValueError, match=r"cannot read the index config .*index_config\.json"):
        EmbeddingIndex.load(saved_index)
    (saved_index / "index_config.json").write_text(json.dumps({"index_type": "flat"}))
    with pytest.raises(ValueError, match=r"index_config\.json lacks \['dim', 'num_rows'\]"):
        EmbeddingIndex.load(saved_index)
    (saved_index / "index.faiss").write_bytes(b"not a faiss index")
    _tamper_config(saved_index, dim=8, num_rows=30)
    with pytest.raises(ValueError, match=r"cannot read the FAISS index .*index\.faiss"):
        EmbeddingIndex.load(saved_index)
    parent = saved_index.parent
    (parent / "cloome_index.json").write_text("[]")
    with pytest.raises(ValueError, match=r"cloome_index\.json holds a list"):
        CloomeIndex.load(parent)


def test_an_index_pairing_two_models_embeddings_is_refused(tmp_path):
    from cloome_hf.inference.search import CloomeIndex, EmbeddingIndex

    rng = np.random.default_rng(1)
    CloomeIndex(EmbeddingIndex(rng.normal(size=(10, 8))), EmbeddingIndex(rng.normal(size=(5, 16)))).save(tmp_path)
    with pytest.raises(ValueError, match="pairs 8-dimensional image embeddings with 16-dimensional molecule"):
        CloomeIndex.load(tmp_path)


# ---------------------------------------------------------------------------------------------- checkpoints
def test_a_checkpoint_with_missing_or_unexpected_weights_is_refused(tmp_path):
    from transformers import AutoModel

    from cloome_hf.processing_cloome import load_model_and_processor

    folder = tmp_path / "model"
    model, _ = _save_model(folder, seed=0)
    weights = safetensors.torch.load_file(folder / "model.safetensors")
    reloaded = load_model_and_processor(folder)[0]
    for name, tensor in reloaded.state_dict().items():
        torch.testing.assert_close(tensor, weights[name])  # the intact checkpoint loads as saved

    missing = dict(weights)
    del missing["molecule_projection.weight"]
    safetensors.torch.save_file(missing, folder / "model.safetensors", metadata={"format": "pt"})
    for load in (CloomeModel.from_pretrained, AutoModel.from_pretrained, lambda p: load_model_and_processor(p)):
        with pytest.raises(ValueError, match=rf"the checkpoint {folder} does not match CloomeModel: missing "
                                             r"weights \['molecule_projection\.weight'\] \(1\)"):
            load(folder)

    extra = {**weights, "molecule_model.extra.weight": torch.zeros(3)}
    safetensors.torch.save_file(extra, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"unexpected weights \['molecule_model\.extra\.weight'\]"):
        CloomeModel.from_pretrained(folder)
    # asking for the loading report explicitly returns it, for callers that inspect it themselves
    _, info = CloomeModel.from_pretrained(folder, output_loading_info=True)
    assert set(info["unexpected_keys"]) == {"molecule_model.extra.weight"} and not info["missing_keys"]


def test_damaged_side_files_are_named(tmp_path):
    from cloome_hf.data.molecules import FingerprintTable
    from cloome_hf.processing_cloome import CloomeProcessor

    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "shard-00000.parquet").write_bytes(b"PAR1 cut short")
    with pytest.raises(ValueError, match=r"cannot read the embeddings file .*shard-00000\.parquet"):
        store.read_embeddings(tmp_path / "images")
    (tmp_path / "library.parquet").write_bytes(b"PAR1 cut short")
    with pytest.raises(ValueError, match=r"cannot read the molecule table .*library\.parquet"):
        embed.load_molecule_table(str(tmp_path / "library.parquet"))

    (tmp_path / "table.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ValueError, match=rf"cannot read the fingerprint table {tmp_path / 'table.npz'}"):
        FingerprintTable.load(tmp_path / "table.npz")
    np.savez(tmp_path / "other.npz", keys=np.array(["a"]))
    with pytest.raises(ValueError, match=r"other\.npz lacks \['smiles', 'fingerprints'\]"):
        FingerprintTable.load(tmp_path / "other.npz")
    folder = tmp_path / "model"
    _save_model(folder, seed=0)
    (folder / "config.json").write_text('{"model_type": "cloome", ')
    with pytest.raises(ValueError, match=r"config\.json"):
        CloomeProcessor.from_pretrained(folder)
