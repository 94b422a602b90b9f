"""Pipelines registered with transformers: callable by name, outputs equal the model's own computation."""

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import pipeline

import cloome_hf.pipelines  # noqa: F401  (registers the tasks)
from cloome_hf import CloomeConfig, CloomeModel
from cloome_hf.inference.search import EmbeddingIndex

SIZE = 40


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from cloome_hf.featurization_cloome import MoleculeFeaturizer
    from cloome_hf.image_processing_cloome import CloomeImageProcessor
    from cloome_hf.processing_cloome import CloomeProcessor

    torch.manual_seed(0)
    cfg = CloomeConfig(vision_config={"backbone": "cloome_resnet50", "num_channels": 5, "layers": [1, 1, 1, 1],
                                      "image_size": [SIZE, SIZE], "head_pool_size": 1, "base_width": 8},
                       molecule_config={"fingerprint_size": 128, "hidden_size": 32, "num_hidden_layers": 2},
                       projection_dim=16)
    path = tmp_path_factory.mktemp("pipe") / "model"
    CloomeModel(cfg).save_pretrained(path)
    CloomeProcessor(CloomeImageProcessor(crop_size={"height": SIZE, "width": SIZE}),
                    MoleculeFeaturizer(fingerprint_size=128)).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def reference(model_dir):
    from cloome_hf.processing_cloome import load_model_and_processor

    model, proc = load_model_and_processor(model_dir)
    return model.eval(), proc


def _sites(n, seed=0):
    return np.random.default_rng(seed).integers(0, 4096, size=(n, 5, SIZE + 8, SIZE + 8), dtype=np.uint16)


def test_feature_extraction_by_name_matches_model(model_dir, reference):
    extractor = pipeline("cell-painting-feature-extraction", model=str(model_dir))
    sites = _sites(5)
    model, proc = reference
    with torch.no_grad():
        ref = torch.nn.functional.normalize(model.get_image_features(proc(images=sites, return_tensors="pt")["pixel_values"]).pooler_output, dim=-1)
    batched = extractor(list(sites), batch_size=2)  # 3 chunks
    assert len(batched) == 5 and batched[0].shape == (16,) and batched[0].dtype == np.float32
    np.testing.assert_allclose(np.stack(batched), ref.numpy(), atol=1e-5)
    np.testing.assert_allclose(extractor(sites[3]), ref[3].numpy(), atol=1e-5)  # one site -> one array
    np.testing.assert_allclose(np.stack(extractor(sites)), ref.numpy(), atol=1e-5)  # 4-D array = batch
    with pytest.raises(ValueError, match="normalize"):
        extractor(sites[0], normalize=False)  # embeddings are unit vectors, as cloome embed stores them
    with pytest.raises(ValueError):
        extractor(np.zeros((3, SIZE, SIZE), dtype=np.uint8))  # 3 channels for a 5-channel processor


def test_npz_path_input(model_dir, reference, tmp_path):
    site = _sites(1)[0].astype(np.uint8)
    np.savez(tmp_path / "site.npz", sample=site.transpose(1, 2, 0))
    extractor = pipeline("cell-painting-feature-extraction", model=str(model_dir))
    model, proc = reference
    with torch.no_grad():
        ref = torch.nn.functional.normalize(model.get_image_features(proc(images=site, return_tensors="pt")["pixel_values"]).pooler_output, dim=-1)
    np.testing.assert_allclose(extractor(str(tmp_path / "site.npz")), ref[0].numpy(), atol=1e-5)


def test_molecule_image_retrieval_by_name(model_dir, reference, tmp_path):
    model, proc = reference
    rng = np.random.default_rng(1)
    db = rng.normal(size=(300, 16)).astype(np.float32)
    meta = pd.DataFrame({"sample_key": [f"s{i}" for i in range(300)]})
    EmbeddingIndex(db, meta).save(tmp_path / "ix")
    from cloome_hf.inference.search import CloomeIndex

    CloomeIndex(EmbeddingIndex.load(tmp_path / "ix")).save(tmp_path / "cindex")
    smiles = ["CCO", "c1ccccc1O", "CC(=O)Oc1ccccc1C(=O)O"]
    with torch.no_grad():
        q = torch.nn.functional.normalize(model.get_molecule_features(proc(smiles=smiles, return_tensors="pt")["fingerprints"]).pooler_output, dim=-1).numpy()
    unit = db / np.linalg.norm(db, axis=1, keepdims=True)
    ref_ids = np.argsort(-(q @ unit.T), axis=1)[:, :4]
    for index in (str(tmp_path / "cindex"), meta.assign(embedding=list(db))):
        retriever = pipeline("molecule-image-retrieval", model=str(model_dir), index=index)
        out = retriever(smiles, top_k=4)
        assert [[h["sample_key"] for h in hits] for hits in out] == [[f"s{i}" for i in row] for row in ref_ids]
        assert [h["rank"] for h in out[0]] == [0, 1, 2, 3]
        single = retriever("CCO", top_k=2)
        assert [h["sample_key"] for h in single] == [f"s{i}" for i in ref_ids[0, :2]]
    with pytest.raises(ValueError, match="not_a_smiles"):
        retriever(["CCO", "not_a_smiles"])
    with pytest.raises(ValueError, match="needs index"):
        pipeline("molecule-image-retrieval", model=str(model_dir))
