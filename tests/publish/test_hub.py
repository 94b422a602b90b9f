"""Publishing: --local_dir layouts read back by from_pretrained / load_dataset; pushes recorded at the
huggingface_hub boundary (HfApi methods + the HfFileSystem datasets reads the card back with), offline."""

import json
import os
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
            raise RepositoryNotFoundError(f"{repo_id} not found", response=None)
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
    for name in ("create_repo", "repo_info", "preupload_lfs_files", "create_commit"):
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
