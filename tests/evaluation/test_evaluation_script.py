"""cloome evaluate end to end: synthetic data, a tiny saved model, every task, a features baseline."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from cloome_hf import CloomeConfig, CloomeImageProcessor, CloomeModel, CloomeProcessor, MoleculeFeaturizer
from cloome_hf.evaluation import retrieval_metrics, zeroshot_classification
from cloome_hf.cli import evaluate as evaluate_command
from cloome_hf.data.splits import one_site_per_molecule

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(__file__).resolve().parents[1] / "fixtures"
VISION = {"backbone": "cloome_resnet50", "num_channels": 5, "layers": [1, 1, 1, 1], "image_size": [64, 64],
          "base_width": 8, "head_pool_size": 2}
MOLECULE = {"fingerprint_size": 64, "hidden_size": 32, "num_hidden_layers": 2}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    torch.manual_seed(0)
    tmp = tmp_path_factory.mktemp("eval")
    model = CloomeModel(CloomeConfig(vision_config=VISION, molecule_config=MOLECULE, projection_dim=16))
    model.save_pretrained(tmp / "model")
    CloomeProcessor(CloomeImageProcessor(crop_size={"height": 64, "width": 64}),
                    MoleculeFeaturizer(fingerprint_size=64)).save_pretrained(tmp / "model")
    out = tmp / "out"
    argv = [
        "--model", str(tmp / "model"), "--dataset", "synthetic", "--synthetic_molecules", "30",
        "--synthetic_sites_per_molecule", "3", "--synthetic_plates", "3", "--batch_size", "32",
        "--tasks", "retrieval,zeroshot_molecule,zeroshot_moa,linear_probe,map",
        "--moa_annotations", str(DATA / "compound_moa_annotations_subset.csv"),
        "--activity_labels", str(DATA / "activity_label_matrix.mtx.gz"),
        "--activity_row_index", str(DATA / "activity_row_compound_index.csv.gz"),
        "--activity_column_index", str(DATA / "activity_column_assay_index.csv"),
        "--linear_probe_C", "0.1", "1", "--map_null_size", "300",
        "--baseline_features", str(DATA / "cellprofiler_profiles_SQ00015054_subset.csv.gz"),
        "--gallery_queries", "3", "--output_dir", str(out),
    ]
    script = evaluate_command
    gallery_calls = []
    import cloome_hf.evaluation.figures as figures

    def recording_gallery(sites, top_smiles, top_scores, true_positions, path, **kwargs):
        gallery_calls.append((np.asarray(top_scores), list(true_positions), kwargs["query_titles"]))
        return original(sites, top_smiles, top_scores, true_positions, path, **kwargs)

    original = figures.plot_retrieval_gallery
    figures.plot_retrieval_gallery = recording_gallery
    try:
        results = script.main(argv)
    finally:
        figures.plot_retrieval_gallery = original
    results["_gallery_calls"] = gallery_calls
    return script, results, out, tmp / "model"


def test_gallery_titles_agree_with_the_framed_match(run):
    """A match shown at position p of the top 5 has rank p + 1 in the title; scores are sorted best first."""
    _, results, _, _ = run
    (scores, true_positions, titles), = results["_gallery_calls"]
    assert np.all(np.diff(scores, axis=1) <= 0)
    for position, title in zip(true_positions, titles):
        rank = int(title.split("true rank ")[1].rstrip(")"))
        if position >= 0:
            assert rank == position + 1
        else:
            assert rank > scores.shape[1]


def _recompute_embeddings(model_dir):
    """Image and molecule embeddings computed here, without the script's embedding code."""
    from cloome_hf.data.schema import decode_row
    from cloome_hf.data.synthetic import make_synthetic_dataset
    from cloome_hf.featurization_cloome import MoleculeFeaturizer
    from cloome_hf.image_processing_cloome import CloomeImageProcessor

    ds = make_synthetic_dataset(num_molecules=30, sites_per_molecule=3, num_plates=3, image_size=64, seed=0)
    model = CloomeModel.from_pretrained(model_dir).eval()
    ip = CloomeImageProcessor(crop_size={"height": 64, "width": 64})
    with torch.no_grad():
        pix = ip([decode_row(r) for r in ds], return_tensors="pt")["pixel_values"]
        img = torch.nn.functional.normalize(model.get_image_features(pix).pooler_output, dim=-1).numpy()
        fps = torch.as_tensor(MoleculeFeaturizer(fingerprint_size=64)(ds["smiles"]))
        mol = torch.nn.functional.normalize(model.get_molecule_features(fps).pooler_output, dim=-1).numpy()
    return ds, img, mol


def test_artefacts_and_metrics_consistent_with_recomputed_embeddings(run):
    _, results, out, model_dir = run
    ds, img, mol = _recompute_embeddings(model_dir)
    np.testing.assert_allclose(np.load(out / "image_embeddings.npy"), img, atol=1e-5)

    saved = json.loads((out / "results.json").read_text())
    assert saved["n_sites"] == 90 and saved["n_molecules"] == 30
    assert set(saved["tasks"]) == {"retrieval", "zeroshot_molecule", "zeroshot_moa", "linear_probe", "map"}

    meta = ds.select_columns(["inchikey", "plate"]).to_pandas()
    sub = one_site_per_molecule(meta["inchikey"], seed=0)
    assert len(sub) == 30 and meta["inchikey"].iloc[sub].is_unique
    expected = retrieval_metrics(img[sub], mol[sub], seed=0)
    for direction in ("image_to_molecule", "molecule_to_image"):
        for key in ("top1", "top5", "top10"):
            assert saved["tasks"]["retrieval"][direction][key]["k"] == expected[direction][key]["k"]
        assert saved["tasks"]["retrieval"][direction]["mean_rank"] == pytest.approx(expected[direction]["mean_rank"])
    keys, plates = meta["inchikey"].to_numpy(), meta["plate"].to_numpy()
    zs = zeroshot_classification(img, keys, keys, plates, seed=0)
    assert saved["tasks"]["zeroshot_molecule"]["top5"]["k"] == zs["top5"]["k"]
    assert saved["tasks"]["zeroshot_molecule"]["n_queries"] == zs["n_queries"]

    assert saved["tasks"]["zeroshot_moa"]["n_classes"] >= 2
    matrix_keys = set(pd.read_csv(DATA / "activity_row_compound_index.csv.gz")["INCHIKEY"])
    assert saved["tasks"]["linear_probe"]["n_molecules_matched"] == len(set(keys) & matrix_keys) > 10
    assert len(saved["tasks"]["linear_probe"]["C_grid"]) == 2
    assert saved["tasks"]["map"]["n_molecules"] == 30

    base = saved["baselines"]["CellProfiler features"]
    assert base["n_rows"] == 384 and base["n_features"] == 48
    assert "retrieval" in base["skipped"] and {"map", "zeroshot_moa"} <= set(base["tasks"])

    md = (out / "report.md").read_text()
    top1 = saved["tasks"]["retrieval"]["image_to_molecule"]["top1"]["value"]
    assert f"| Structure retrieval | CLOOME (this model) | {100 * top1:.1f} [" in md
    assert "| CellProfiler features | replicate_retrieval | 59 |" in md
    for section in ("(Table 1)", "(Table 2)", "(Table 3)", "(Table 4)", "copairs"):
        assert section in md


def test_figures_are_pngs_of_the_documented_size(run):
    _, results, out, _ = run
    assert set(results["figures"]) == {"tsne_molecule", "tsne_moa", "retrieval_gallery"}
    sizes = {"tsne_molecule.png": (800, 600), "tsne_moa.png": (800, 600), "retrieval_gallery.png": (1200, 720)}
    for name, size in sizes.items():
        with Image.open(out / name) as im:
            assert im.format == "PNG" and im.size == size
            pixels = np.asarray(im.convert("L"))
            assert pixels.std() > 5  # something was drawn


def test_help_and_bad_arguments(run, capsys):
    script = run[0]
    with pytest.raises(SystemExit) as exit_info:
        script.main(["--help"])
    assert exit_info.value.code == 0 and "--tasks" in capsys.readouterr().out
    with pytest.raises(ValueError, match="needs --moa_column or --moa_annotations"):
        script.main(["--model", "x", "--tasks", "zeroshot_moa", "--output_dir", "o"])
    with pytest.raises(ValueError, match="'tsne'"):
        script.main(["--model", "x", "--tasks", "retrieval,tsne", "--output_dir", "o"])
