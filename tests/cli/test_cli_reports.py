"""Commands say what they did: ``search`` prints its top hits and where the file went, ``push --local_dir`` the
files and the folder, ``evaluate`` a labelled table and how many of its molecules the model trained on."""

import os

import pytest

from conftest import run_cloome

SIZE = 64


def _cloome(args, cwd):
    proc = run_cloome(args, cwd)
    assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A tiny model folder (model + processor) and an embedding store of 6 molecules made with it."""
    from cloome_hf import CloomeConfig, CloomeModel
    from cloome_hf.cli import embed
    from cloome_hf.featurization_cloome import MoleculeFeaturizer
    from cloome_hf.image_processing_cloome import CloomeImageProcessor
    from cloome_hf.processing_cloome import CloomeProcessor
    from conftest import TINY_MOLECULE, TINY_VISION

    root = tmp_path_factory.mktemp("reports")
    config = CloomeConfig(vision_config=dict(TINY_VISION), molecule_config=dict(TINY_MOLECULE), projection_dim=16)
    CloomeModel(config).save_pretrained(root / "model")
    CloomeProcessor(CloomeImageProcessor(crop_size={"height": SIZE, "width": SIZE}),
                    MoleculeFeaturizer(fingerprint_size=64)).save_pretrained(root / "model")
    from cloome_hf.data.synthetic import make_synthetic_dataset

    make_synthetic_dataset(num_molecules=6, sites_per_molecule=1, num_plates=1, image_size=SIZE,
                           seed=0).save_to_disk(str(root / "sites"))
    embed.main(["--model", str(root / "model"), "--dataset", str(root / "sites"), "--output_dir", str(root / "emb")])
    return root


def test_search_prints_its_top_hits_and_where_the_file_went(folder):
    proc = _cloome(["search", "--embeddings", "emb", "--smiles", "CCO", "--k", "3", "--output", "hits.csv"], folder)
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:3] == ["query_index", "rank", "score"]
    assert [line.split()[1] for line in lines[1:4]] == ["0", "1", "2"]  # the three hits, best first
    assert "wrote 3 hits (1 queries x top 3) to hits.csv" in proc.stderr
    assert (folder / "hits.csv").read_text().count("\n") == 4


def test_push_to_a_local_folder_names_the_files_and_the_folder(folder):
    proc = _cloome(["push", "--model", "model", "--repo_id", "me/tiny", "--local_dir", "pub"], folder)
    line = next(x for x in proc.stderr.splitlines() if x.startswith("wrote the model repo"))
    assert os.path.join("pub", "model") in line
    for name in ("config.json", "model.safetensors", "README.md"):
        assert name in line and (folder / "pub" / "model" / name).is_file()


def test_evaluate_prints_a_labelled_table_and_says_when_it_ran_on_training_molecules(folder):
    from cloome_hf.data.synthetic import make_synthetic_dataset
    from cloome_hf.evaluation.training_overlap import write_training_molecules

    ds = make_synthetic_dataset(num_molecules=12, sites_per_molecule=2, num_plates=2, image_size=SIZE, seed=0)
    keys = sorted(set(ds["inchikey"]))
    write_training_molecules(str(folder / "model"), keys[:9], keys[9:10])  # 9 of 12 trained on, 1 validated on
    proc = _cloome(["evaluate", "--model", "model", "--dataset", "synthetic", "--synthetic_molecules", "12",
                    "--synthetic_sites_per_molecule", "2", "--synthetic_plates", "2", "--synthetic_image_size",
                    str(SIZE), "--tasks", "retrieval", "--output_dir", "eval"], folder)
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("EVALUATED ON THE TRAINING DATA: molecules seen in training: 9 of the 12 "
                               "evaluation molecules were in the model's training split, 1 in its validation")
    assert lines[1].split() == ["task", "metric", "value", "95", "%", "CI", "n"]
    assert lines[2].startswith("retrieval image to molecule") and lines[2].split()[-1] == "12"
    report = (folder / "eval" / "report.md").read_text().splitlines()
    assert report[0].startswith("**EVALUATED ON THE TRAINING DATA: molecules seen in training: 9 of the 12")
    assert "not drawn: t-SNE by MoA (no MoA annotations" in proc.stderr
