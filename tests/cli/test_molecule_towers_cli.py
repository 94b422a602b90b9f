"""Molecule towers (#25): the whole path with a gnn tower through the CLI: train, embed --molecules, search by
SMILES, evaluate; and the pipeline on the trained folder."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import TINY_TRAIN_ARGS, run_cloome

LIBRARY = ["CCO", "c1ccccc1O", "CC(=O)Oc1ccccc1C(=O)O", "CCN(CC)CC", "O=C(O)CCc1ccccc1"]


def _cli(args, cwd, ok=True):
    proc = run_cloome(args, cwd)
    assert (proc.returncode == 0) == ok, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def gnn_run(tmp_path_factory):
    """A tiny run trained through ``cloome train --molecule_encoder gnn`` (2 steps on synthetic data), and the
    ``cloome embed`` store of the synthetic sites and a molecule library made with it."""
    work = tmp_path_factory.mktemp("gnn_cli")
    _cli(["train", "--output_dir", "run", *TINY_TRAIN_ARGS, "--molecule_encoder", "gnn", "--gnn_layer", "gine",
          "--gnn_readout", "attention"], work)
    pd.DataFrame({"smiles": LIBRARY}).to_csv(work / "library.csv", index=False)
    from cloome_hf.data.synthetic import make_synthetic_dataset

    make_synthetic_dataset(num_molecules=12, sites_per_molecule=2, num_plates=2, image_size=64,
                           seed=0).save_to_disk(str(work / "sites"))
    _cli(["embed", "--model", "run", "--dataset", "sites", "--molecules", "library.csv", "--output_dir", "store"],
         work)
    return work


def test_train_saves_a_gnn_model_whose_processor_makes_graphs(gnn_run):
    from cloome_hf.processing_cloome import load_model_and_processor

    config = json.loads((gnn_run / "run" / "config.json").read_text())
    assert config["molecule_config"]["encoder"] == "gnn"
    assert config["molecule_config"]["gnn_readout"] == "attention"
    processor_config = json.loads((gnn_run / "run" / "processor_config.json").read_text())
    assert processor_config["featurizer"]["tower"] == "gnn"
    model, processor = load_model_and_processor(gnn_run / "run")
    assert set(processor(smiles=["CCO"])) == {"x", "edge_index", "edge_attr", "batch"}
    log = [json.loads(line) for line in (gnn_run / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log if "loss" in e][-1] == 2 and all(np.isfinite(e["loss"]) for e in log if "loss" in e)


def test_embed_molecules_stores_the_gnn_embeddings(gnn_run):
    import datasets

    from cloome_hf.processing_cloome import load_model_and_processor

    rows = datasets.load_dataset(str(gnn_run / "store"), "molecules", split="train", cache_dir=str(gnn_run / "cache")).to_pandas()
    assert rows["smiles"].tolist() == LIBRARY
    model, processor = load_model_and_processor(gnn_run / "run")
    with torch.no_grad():
        expected = model(**processor(smiles=LIBRARY, return_tensors="pt")).molecule_embeds.numpy()
    np.testing.assert_allclose(np.stack(rows["embedding"].to_numpy()), expected, atol=1e-5)


def test_search_by_smiles_ranks_the_stored_images(gnn_run):
    import datasets

    from cloome_hf.processing_cloome import load_model_and_processor

    _cli(["search", "--embeddings", "store", "--smiles", "CCO", "c1ccccc1O", "--k", "3", "--output", "hits.csv"],
         gnn_run)
    hits = pd.read_csv(gnn_run / "hits.csv")
    assert hits.groupby("query_index").size().tolist() == [3, 3]
    images = datasets.load_dataset(str(gnn_run / "store"), "images", split="train", cache_dir=str(gnn_run / "cache")).to_pandas()
    model, processor = load_model_and_processor(gnn_run / "run")
    with torch.no_grad():
        query = model(**processor(smiles=["CCO", "c1ccccc1O"], return_tensors="pt")).molecule_embeds.numpy()
    scores = query @ np.stack(images["embedding"].to_numpy()).T
    for q in (0, 1):
        top = np.sort(scores[q])[::-1][:3]
        np.testing.assert_allclose(hits[hits.query_index == q]["score"].to_numpy(), top, atol=1e-5)


def test_search_names_an_atom_outside_the_graph_schema(gnn_run):
    proc = _cli(["search", "--embeddings", "store", "--smiles", "CC[U]"], gnn_run, ok=False)
    assert "cloome search: error: molecule 'CC[U]': atom 2 (U) has element 'U'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_evaluate_retrieval_with_a_gnn_tower(gnn_run):
    proc = _cli(["evaluate", "--model", "run", "--dataset", "synthetic", "--synthetic_molecules", "12",
                 "--synthetic_sites_per_molecule", "2", "--synthetic_plates", "2", "--tasks", "retrieval",
                 "--output_dir", "eval"], gnn_run)
    assert any(line.startswith("retrieval image to molecule") and line.split()[-1] == "12"
               for line in proc.stdout.splitlines())


def test_retrieval_pipeline_with_a_gnn_tower(gnn_run):
    from transformers import pipeline

    import cloome_hf  # noqa: F401  (registers the pipelines)
    from cloome_hf.inference import CloomeIndex

    index = CloomeIndex.from_store(str(gnn_run / "store"), model_id=str(gnn_run / "run"))
    index.load_encoder()
    direct = index.search_images(smiles=["CCO", "c1ccccc1O"], k=2)
    retrieve = pipeline("molecule-image-retrieval", model=str(gnn_run / "run"), index=index)
    hits = retrieve(["CCO", "c1ccccc1O"], top_k=2)
    assert [h["sample_key"] for q in hits for h in q] == direct["sample_key"].tolist()
