"""Publishing: --local_dir layouts read back by from_pretrained / load_dataset; pushes recorded at the
huggingface_hub boundary (HfApi methods + the HfFileSystem datasets reads the card back with), offline."""

import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from cloome_hf.cli import push as push_to_hub

from cloome_hf import CloomeConfig, CloomeModel  # noqa: E402

SIZE = 40


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """A saved tiny model + processor + results.json, and an embed.py-style embeddings folder."""
    from cloome_hf.featurization_cloome import MoleculeFeaturizer
    from cloome_hf.image_processing_cloome import CloomeImageProcessor
    from cloome_hf.processing_cloome import CloomeProcessor

    root = tmp_path_factory.mktemp("hub")
    torch.manual_seed(0)
    cfg = CloomeConfig(vision_config={"backbone": "cloome_resnet50", "num_channels": 5, "layers": [1, 1, 1, 1],
                                      "image_size": [SIZE, SIZE], "head_pool_size": 1, "base_width": 8},
                       molecule_config={"fingerprint_size": 128, "hidden_size": 32, "num_hidden_layers": 2},
                       projection_dim=16)
    model = CloomeModel(cfg).eval()
    model.save_pretrained(root / "model")
    CloomeProcessor(CloomeImageProcessor(crop_size={"height": SIZE, "width": SIZE}),
                    MoleculeFeaturizer(fingerprint_size=128)).save_pretrained(root / "model")
    results = {"molecule_to_image": {"top1": {"value": 0.25, "ci_low": 0.2, "ci_high": 0.3}, "top5": 0.6, "n": 100}}
    (root / "results.json").write_text(json.dumps(results))
    rng = np.random.default_rng(0)
    emb = root / "emb"
    for config, n in (("images", 30), ("molecules", 7)):
        (emb / config).mkdir(parents=True)
        df = pd.DataFrame({"smiles": [f"C{'C' * (i % 7)}" for i in range(n)], "inchikey": [f"KEY{i % 7}" for i in range(n)]})
        if config == "images":
            df = df.assign(sample_key=[f"P1-A{i:02d}-1" for i in range(n)], plate="P1", well=[f"A{i:02d}" for i in range(n)], site=1)
        df["embedding"] = list(rng.normal(size=(n, 16)).astype(np.float32))
        df.to_parquet(emb / config / "shard-00000.parquet")
    (emb / "embedding_info.json").write_text(json.dumps({"model_id": "me/cloome-tiny", "embedding_dtype": "float32",
                                                          "processor": {"image_processor": {"crop_size": {"height": SIZE, "width": SIZE}}}}))
    return {"root": root, "model": model}


def _read_embeddings(folder, config):
    return pd.concat([pd.read_parquet(os.path.join(folder, config, f)) for f in sorted(os.listdir(os.path.join(folder, config)))],
                     ignore_index=True)


def test_local_dir_model_repo_reloads(artifacts, tmp_path):
    from huggingface_hub import ModelCard

    from cloome_hf.processing_cloome import CloomeProcessor, load_model_and_processor

    root = artifacts["root"]
    push_to_hub.main(["--model", str(root / "model"), "--results", str(root / "results.json"),
                      "--repo_id", "me/cloome-tiny", "--local_dir", str(tmp_path / "out")])
    repo = tmp_path / "out" / "model"
    files = sorted(os.listdir(repo))
    assert {"README.md", "config.json", "model.safetensors", "processor_config.json"} <= set(files)
    model, proc = load_model_and_processor(repo)
    for name, tensor in artifacts["model"].state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], tensor, msg=name)
    assert isinstance(CloomeProcessor.from_pretrained(repo), CloomeProcessor)
    assert proc.image_processor.crop_size == {"height": SIZE, "width": SIZE}
    card = ModelCard.load(repo / "README.md")
    assert "example_site.png" in files and "](example_site.png)" in card.text  # drawn by site_picture
    metrics = {m["type"]: m["value"] for r in card.data.to_dict()["model-index"][0]["results"] for m in r["metrics"]}
    assert metrics == {"molecule_to_image/top1": 0.25, "molecule_to_image/top5": 0.6}
    assert "me/cloome-tiny" in card.text and "Hoechst" in card.text


def test_local_dir_dataset_repo_reloads(artifacts, tmp_path):
    import datasets
    from huggingface_hub import DatasetCard

    root = artifacts["root"]
    push_to_hub.main(["--embeddings", str(root / "emb"), "--repo_id", "me/cloome-tiny",
                      "--local_dir", str(tmp_path / "out")])
    repo = tmp_path / "out" / "dataset"
    assert sorted(os.path.relpath(os.path.join(d, f), repo) for d, _, fs in os.walk(repo) for f in fs) == [
        "README.md", "embedding_info.json", "images/train-00000-of-00001.parquet",
        "molecules/train-00000-of-00001.parquet"]
    for config in ("images", "molecules"):
        ds = datasets.load_dataset(str(repo), config, split="train", cache_dir=str(tmp_path / "cache"))
        ref = _read_embeddings(root / "emb", config)
        assert ds["smiles"] == ref["smiles"].tolist()
        np.testing.assert_array_equal(np.asarray(ds["embedding"], dtype=np.float32), np.stack(ref["embedding"]))
    card = DatasetCard.load(repo / "README.md")
    assert [c["config_name"] for c in card.data.to_dict()["configs"]] == ["images", "molecules"]
    assert "me/cloome-tiny-embeddings" in card.text and "37" in card.text  # id and row count


class FakeHub:
    """Records every commit; stores repo files under ``root/{model,datasets}/<repo_id>/`` so that datasets'
    push_to_hub can read its own card back through a local stand-in for HfFileSystem."""

    def __init__(self, root):
        self.root, self.commits, self.created, self.staged = root, [], [], {}

    def folder(self, repo_id, repo_type):
        return os.path.join(self.root, "datasets" if repo_type == "dataset" else "model", repo_id)

    def create_repo(self, api, repo_id, repo_type=None, **kw):
        self.created.append((repo_id, repo_type or "model"))
        os.makedirs(self.folder(repo_id, repo_type), exist_ok=True)
        return SimpleNamespace(repo_id=repo_id)

    def repo_info(self, api, repo_id, repo_type=None, **kw):
        from huggingface_hub.errors import RepositoryNotFoundError

        if (repo_id, repo_type or "model") not in self.created:
            import httpx

            request = httpx.Request("GET", f"https://huggingface.co/api/{repo_type or 'model'}s/{repo_id}")
            raise RepositoryNotFoundError(f"{repo_id} not found", response=httpx.Response(404, request=request))
        return SimpleNamespace(id=repo_id, sha="main")

    @staticmethod
    def _content(op):
        src = op.path_or_fileobj
        if isinstance(src, (bytes, bytearray)):
            return bytes(src)
        if isinstance(src, (str, os.PathLike)):
            with open(src, "rb") as f:
                return f.read()
        src.seek(0)
        return src.read()

    def preupload_lfs_files(self, api, repo_id, additions, **kw):
        for op in additions:  # datasets deletes the temp file right after pre-upload: keep the bytes now
            self.staged[id(op)] = self._content(op)

    def create_commit(self, api, repo_id, operations, repo_type=None, commit_message="", **kw):
        from huggingface_hub import CommitOperationAdd, CommitOperationDelete

        folder = self.folder(repo_id, repo_type)
        added, deleted = [], []
        for op in operations:
            if isinstance(op, CommitOperationAdd):
                data = self.staged.pop(id(op), None)
                data = self._content(op) if data is None else data
                path = os.path.join(folder, op.path_in_repo)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "wb") as f:
                    f.write(data)
                added.append(op.path_in_repo)
            elif isinstance(op, CommitOperationDelete):
                os.remove(os.path.join(folder, op.path_in_repo))
                deleted.append(op.path_in_repo)
        self.commits.append({"repo_id": repo_id, "repo_type": repo_type or "model", "added": sorted(added),
                             "deleted": deleted, "message": commit_message})
        return SimpleNamespace(oid="main", commit_url="", pr_url=None)

    def list_repo_files(self, api, repo_id, repo_type=None, **kw):
        self.repo_info(api, repo_id, repo_type)
        return self.files(repo_id, repo_type)

    def files(self, repo_id, repo_type):
        folder = self.folder(repo_id, repo_type)
        return sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs)


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    import datasets.arrow_dataset
    import huggingface_hub
    from fsspec.implementations.dirfs import DirFileSystem
    from fsspec.implementations.local import LocalFileSystem

    hub = FakeHub(str(tmp_path / "hub"))
    for name in ("create_repo", "repo_info", "list_repo_files", "preupload_lfs_files", "create_commit"):
        method = getattr(hub, name)
        monkeypatch.setattr(huggingface_hub.HfApi, name, lambda api, *a, _m=method, **kw: _m(api, *a, **kw))
    monkeypatch.setattr(huggingface_hub.HfApi, "create_branch", lambda *a, **kw: pytest.fail("unexpected branch"))
    # datasets reads the existing README back through HfFileSystem("datasets/<repo_id>"): serve the fake's files
    monkeypatch.setattr(datasets.arrow_dataset, "HfFileSystem",
                        lambda *a, **kw: DirFileSystem(path=hub.root, fs=LocalFileSystem()))
    return hub


def test_push_records_exact_commits_equal_to_local_layout(artifacts, fake_hub, tmp_path):
    root = artifacts["root"]
    args = ["--model", str(root / "model"), "--embeddings", str(root / "emb"), "--results",
            str(root / "results.json"), "--repo_id", "me/cloome-tiny"]
    push_to_hub.main(args)
    push_to_hub.main(args + ["--local_dir", str(tmp_path / "local")])

    local_files = lambda sub: sorted(os.path.relpath(os.path.join(d, f), tmp_path / "local" / sub)  # noqa: E731
                                     for d, _, fs in os.walk(tmp_path / "local" / sub) for f in fs)
    assert fake_hub.created == [("me/cloome-tiny", "model"), ("me/cloome-tiny-embeddings", "dataset")]
    model_commits = [c for c in fake_hub.commits if c["repo_type"] == "model"]
    assert len(model_commits) == 1 and model_commits[0]["added"] == local_files("model")
    assert {"README.md", "config.json", "model.safetensors", "processor_config.json"} <= set(model_commits[0]["added"])

    data_commits = [c for c in fake_hub.commits if c["repo_type"] == "dataset"]
    assert [c["added"] for c in data_commits] == [
        ["README.md", "embedding_info.json"],
        ["README.md", "images/train-00000-of-00001.parquet"],
        ["README.md", "molecules/train-00000-of-00001.parquet"],
    ]
    assert fake_hub.files("me/cloome-tiny-embeddings", "dataset") == local_files("dataset")

    # the pushed repos read back like the local ones
    import datasets

    from cloome_hf.processing_cloome import load_model_and_processor

    pushed_data = fake_hub.folder("me/cloome-tiny-embeddings", "dataset")
    for config in ("images", "molecules"):
        ds = datasets.load_dataset(pushed_data, config, split="train", cache_dir=str(tmp_path / "cache"))
        ref = _read_embeddings(root / "emb", config)
        np.testing.assert_array_equal(np.asarray(ds["embedding"], dtype=np.float32), np.stack(ref["embedding"]))
    from huggingface_hub import DatasetCard

    card = DatasetCard.load(os.path.join(pushed_data, "README.md"))
    assert "me/cloome-tiny-embeddings" in card.text  # our card body survived datasets' metadata update
    assert {c["config_name"] for c in card.data.to_dict()["configs"]} == {"images", "molecules"}
    model, _ = load_model_and_processor(fake_hub.folder("me/cloome-tiny", "model"))
    torch.testing.assert_close(model.state_dict()["visual_projection.weight"],
                               artifacts["model"].state_dict()["visual_projection.weight"])


def test_bad_arguments(artifacts, tmp_path):
    with pytest.raises(SystemExit):
        push_to_hub.main(["--repo_id", "me/x"])  # neither --model_dir nor --embeddings
    with pytest.raises(ValueError, match="holds no embeddings"):
        push_to_hub.main(["--embeddings", str(tmp_path), "--repo_id", "me/x", "--local_dir", str(tmp_path / "o")])


# ------------------------------------------------------------------------------ site thumbnails in the dataset repo
def _pictures_by_key(folder):
    """``{sample_key: WebP bytes}`` of every thumbnail shard under ``folder/thumbnails`` (read with pyarrow)."""
    import pyarrow.parquet as pq

    tables = [pq.read_table(p) for p in sorted((folder / "thumbnails").glob("*.parquet"))]
    return {k: v for t in tables for k, v in zip(t["sample_key"].to_pylist(), t["thumbnail"].to_pylist())}


def _store_copy(tiny_served_store, tmp_path, name="store"):
    import shutil

    return Path(shutil.copytree(tiny_served_store["store"], tmp_path / name))


def test_pushed_thumbnails_follow_the_image_shards_and_match_the_stores_by_key(tiny_served_store, tmp_path,
                                                                              monkeypatch):
    import pyarrow.parquet as pq

    from cloome_hf.inference.thumbnails import ThumbnailStore
    from cloome_hf.publish import hub

    monkeypatch.setattr(hub, "_num_shards", lambda ds: 3)  # several shards of 8 sites, cut unlike the store's 10s
    store = tiny_served_store["store"]
    out = tmp_path / "repo"
    files = hub.write_dataset_repo(store, out, dataset_id="me/emb")
    thumbs = [f"thumbnails/train-{i:05d}-of-00003.parquet" for i in range(3)]
    assert [f for f in files if f.startswith("thumbnails/")] == thumbs
    for i, name in enumerate(thumbs):
        images = pq.read_table(out / f"images/train-{i:05d}-of-00003.parquet")
        assert pq.read_table(out / name)["sample_key"].to_pylist() == images["sample_key"].to_pylist()
    local = _pictures_by_key(store)
    assert len(local) == 24 and _pictures_by_key(out) == local
    pushed = ThumbnailStore(out)  # as the page reads the pushed repo: by a hit's row in the images config
    keys = [k for i in range(3) for k in pq.read_table(out / f"images/train-{i:05d}-of-00003.parquet")["sample_key"].to_pylist()]
    assert all(pushed.picture_bytes(row, key) == local[key] for row, key in enumerate(keys))


def test_sites_without_a_thumbnail_get_none_and_the_rest_keep_theirs(tiny_served_store, tmp_path):
    import pyarrow.parquet as pq

    from cloome_hf.inference.thumbnails import ThumbnailStore
    from cloome_hf.publish.hub import write_dataset_repo

    store = _store_copy(tiny_served_store, tmp_path)
    lost = pq.read_table(store / "thumbnails" / "shard-00001.parquet")["sample_key"].to_pylist()
    (store / "thumbnails" / "shard-00001.parquet").unlink()
    local = _pictures_by_key(tiny_served_store["store"])
    write_dataset_repo(store, tmp_path / "repo", dataset_id="me/emb")
    pushed, keys = ThumbnailStore(tmp_path / "repo"), pq.read_table(tmp_path / "repo" / "images").column("sample_key")
    got = {key: pushed.picture_bytes(row, key) for row, key in enumerate(keys.to_pylist())}
    assert len(lost) == 10 and all(got[k] is None for k in lost)
    assert {k: v for k, v in got.items() if k not in lost} == {k: v for k, v in local.items() if k not in lost}


def test_thumbnails_of_other_sites_are_left_out_with_a_warning(tiny_served_store, tmp_path):
    from cloome_hf.inference.thumbnails import write_thumbnail_table
    from cloome_hf.publish.hub import write_dataset_repo

    store = _store_copy(tiny_served_store, tmp_path)
    for shard in (store / "thumbnails").glob("*.parquet"):
        shard.unlink()
    write_thumbnail_table(str(store / "thumbnails" / "shard-00000.parquet"), ["other-run-A01-1"], [b"RIFF"])
    with pytest.warns(UserWarning, match="no sample_key matches"):
        files = write_dataset_repo(store, tmp_path / "repo", dataset_id="me/emb")
    assert not [f for f in files if f.startswith("thumbnails/")]


def test_a_rewrite_from_a_store_without_thumbnails_removes_the_old_ones(tiny_served_store, tmp_path, monkeypatch):
    import shutil

    from cloome_hf.publish import hub

    out = tmp_path / "repo"
    monkeypatch.setattr(hub, "_num_shards", lambda ds: 2)
    hub.write_dataset_repo(tiny_served_store["store"], out, dataset_id="me/emb")
    assert len(list((out / "thumbnails").glob("train-*.parquet"))) == 2
    bare = _store_copy(tiny_served_store, tmp_path, "bare")
    shutil.rmtree(bare / "thumbnails")
    monkeypatch.setattr(hub, "_num_shards", lambda ds: 1)
    files = hub.write_dataset_repo(bare, out, dataset_id="me/emb")
    assert not list((out / "thumbnails").glob("*.parquet")) and not [f for f in files if "thumbnails" in f]
    assert "images/train-00000-of-00001.parquet" in files and not (out / "images/train-00000-of-00002.parquet").exists()


def test_push_commits_the_thumbnails_with_the_card_and_a_later_push_removes_them(tiny_served_store, fake_hub,
                                                                                 tmp_path, capsys):
    import shutil

    store = tiny_served_store["store"]
    repo = "me/tiny-embeddings"
    push_to_hub.main(["--embeddings", str(store), "--repo_id", "me/tiny", "--dataset_repo_id", repo])
    assert "with 24 site thumbnails" in capsys.readouterr().err
    push_to_hub.main(["--embeddings", str(store), "--repo_id", "me/tiny", "--dataset_repo_id", repo,
                      "--local_dir", str(tmp_path / "local")])
    first = fake_hub.commits[0]
    assert first["added"] == ["README.md", "embedding_info.json", "thumbnails/train-00000-of-00001.parquet"]
    local = tmp_path / "local" / "dataset"
    assert fake_hub.files(repo, "dataset") == sorted(str(p.relative_to(local)) for p in local.rglob("*") if p.is_file())
    assert _pictures_by_key(Path(fake_hub.folder(repo, "dataset"))) == _pictures_by_key(store)

    bare = _store_copy(tiny_served_store, tmp_path, "bare")
    shutil.rmtree(bare / "thumbnails")
    push_to_hub.main(["--embeddings", str(bare), "--repo_id", "me/tiny", "--dataset_repo_id", repo])
    assert "without site thumbnails" in capsys.readouterr().err
    assert fake_hub.commits[3]["deleted"] == ["thumbnails/train-00000-of-00001.parquet"]
    assert not [f for f in fake_hub.files(repo, "dataset") if f.startswith("thumbnails")]
