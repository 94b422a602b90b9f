"""JUMP evaluation tasks: the results fragment, the CellProfiler baseline through the same pipeline, the report
table and figure, and the offline `evaluate` modules."""

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cloome_hf.data.synthetic_plates import plan_site_features, plan_synthetic_plates
from cloome_hf.evaluation import (
    METRIC_NAMES,
    FeatureBaseline,
    flatten_results,
    jump_report_sections,
    jump_tasks,
    metric_path,
    write_results_json,
)
from cloome_hf.evaluation.jump import activity_task, consistency_task, load_feature_table
from cloome_hf.evaluation.stats import proportion_with_ci
from cloome_hf.profiling import aggregate, normalize, phenotypic_activity, phenotypic_consistency

DATA = Path(__file__).resolve().parents[1] / "fixtures"
CP_TABLE = DATA / "cellprofiler_profiles_SQ00015054_subset.csv.gz"
CP_CONTROLS = "Metadata_broad_sample == 'DMSO'"
PIPELINE = "mad_robustize,sphering"
META = ["sample_key", "plate", "well", "site", "inchikey", "smiles", "perturbation_type", "batch", "source"]


@pytest.fixture(scope="module")
def synthetic():
    plan = plan_synthetic_plates(num_compounds=24, inactive_fraction=0.25, num_moas=3, replicates=4,
                                 controls_per_plate=16, image_size=32, seed=1)
    return plan, plan_site_features(plan), plan.records[META]


@pytest.fixture(scope="module")
def results(synthetic, tmp_path_factory):
    plan, feats, meta = synthetic
    annotations = plan.annotations.rename(columns={"inchikey": "Metadata_InChIKey"})
    out = tmp_path_factory.mktemp("jump")
    res = jump_tasks(["jump_activity", "jump_consistency"], feats, metadata=meta, pipeline=PIPELINE,
                     annotations=annotations, by="moa", null_size=1000,
                     baseline=FeatureBaseline(CP_TABLE, controls=CP_CONTROLS), output_dir=out)
    return res, out


def test_model_results_are_the_profiling_protocol(synthetic, results):
    plan, feats, meta = synthetic
    res, _ = results
    wells = normalize(aggregate(feats, metadata=meta), PIPELINE)
    activity = phenotypic_activity(wells, null_size=1000)
    got = res["tasks"]["jump_activity"]
    assert got["pipeline"] == ["mad_robustize", "sphering"]
    assert got["mean_map"] == pytest.approx(activity.mean_map)
    assert got["fraction_retrieved"] == proportion_with_ci(activity.n_retrieved, activity.n_groups)
    assert got["n_compounds"] == 24 and sorted(got["retrieved"]) == sorted(activity.retrieved())
    rows = {r["compound"]: r for r in got["per_compound"]}
    for r in activity.per_group.itertuples():
        assert rows[r.Metadata_InChIKey]["map"] == pytest.approx(r.mean_average_precision)
        assert rows[r.Metadata_InChIKey]["corrected_p_value"] == pytest.approx(r.corrected_p_value)
    consistency = phenotypic_consistency(wells, plan.annotations, by="moa", null_size=1000)
    got = res["tasks"]["jump_consistency"]
    assert got["mean_map"] == pytest.approx(consistency.mean_map)
    assert got["n_labels"] == 3 and got["n_compounds"] == 18 and got["by"] == "moa"


def test_cellprofiler_baseline_goes_through_the_same_pipeline(results):
    res, _ = results
    base = res["baselines"]["CellProfiler features"]["tasks"]
    table = pd.read_csv(CP_TABLE)
    wells = normalize(aggregate(table, by=("Metadata_Plate", "Metadata_Well")), PIPELINE, controls=CP_CONTROLS)
    activity = phenotypic_activity(wells, compound_column="Metadata_broad_sample", controls=CP_CONTROLS,
                                   null_size=1000)
    assert base["jump_activity"]["pipeline"] == ["mad_robustize", "sphering"]
    assert base["jump_activity"]["mean_map"] == pytest.approx(activity.mean_map)
    assert base["jump_activity"]["controls"] == CP_CONTROLS
    # its own Metadata_moa labels, consensus on the 14-character InChIKey
    consistency = phenotypic_consistency(wells, _own_labels(table), by="moa", compound_column="Metadata_InChIKey14",
                                         controls=CP_CONTROLS, null_size=1000)
    assert base["jump_consistency"]["mean_map"] == pytest.approx(consistency.mean_map)


def _own_labels(table):
    rows = table[["Metadata_InChIKey14", "Metadata_moa"]].dropna()
    return rows.groupby("Metadata_InChIKey14").Metadata_moa.agg(lambda s: "|".join(sorted(set(s)))).reset_index()


def test_report_table_figure_and_json(results, tmp_path):
    res, out = results
    lines = "\n".join(jump_report_sections(res))
    assert "## JUMP phenotypic activity" in lines and "## JUMP phenotypic consistency" in lines
    activity = res["tasks"]["jump_activity"]
    assert f"| CLOOME (this model) | mad_robustize,sphering | `Metadata_pert_type == 'negcon'` | 24 | " \
           f"{activity['mean_map']:.3f} |" in lines
    assert "| CellProfiler features | mad_robustize,sphering | `Metadata_broad_sample == 'DMSO'` |" in lines
    for task in ("jump_activity", "jump_consistency"):
        path = Path(res["figures"][task])
        assert path.parent == out and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    json.loads(write_results_json(res, tmp_path / "results.json").read_text())


def test_consistency_among_active_compounds_only(synthetic):
    plan, feats, meta = synthetic
    res = jump_tasks(["jump_consistency"], feats, metadata=meta, pipeline=PIPELINE, annotations=plan.annotations,
                     annotation_key="inchikey", by="target", active_only=True, null_size=500)
    assert set(res["tasks"]) == {"jump_consistency"}
    wells = normalize(aggregate(feats, metadata=meta), PIPELINE)
    retrieved = set(phenotypic_activity(wells, null_size=500).retrieved())
    annotated = set(plan.annotations.inchikey[plan.annotations.target.notna()])
    assert res["tasks"]["jump_consistency"]["n_compounds"] == len(retrieved & annotated)
    assert res["tasks"]["jump_consistency"]["active_only"] is True
    with pytest.raises(ValueError, match="unknown JUMP task 'jump_x'"):
        jump_tasks(["jump_x"], feats, metadata=meta)


def test_feature_table_reader_refuses_damaged_files(tmp_path):
    bad = tmp_path / "profiles.csv.gz"
    bad.write_bytes(gzip.compress(b"Metadata_Plate,f0\nP1,1\n")[:-12])
    with pytest.raises(ValueError, match="cannot read the feature table .*profiles.csv.gz"):
        load_feature_table(bad)
    with pytest.raises(ValueError, match="does not exist"):
        load_feature_table(tmp_path / "missing.parquet")
    with pytest.raises(ValueError, match="lacks column 'Metadata_broad_sample'"):
        jump_tasks(["jump_activity"], pd.read_csv(CP_TABLE).drop(columns="Metadata_broad_sample"),
                   baseline=FeatureBaseline(pd.read_csv(CP_TABLE).drop(columns="Metadata_broad_sample")),
                   controls=CP_CONTROLS, pipeline="")


def test_evaluate_modules_load_offline_and_agree(synthetic):
    import evaluate  # here: importing it takes seconds

    plan, feats, meta = synthetic
    assert {"cloome_jump_activity", "cloome_jump_consistency"} <= set(METRIC_NAMES)
    wells = aggregate(feats, metadata=meta)
    feature_cols = [c for c in wells.columns if c.startswith("emb_")]
    inputs = dict(profiles=wells[feature_cols].to_numpy(np.float32), compounds=wells.Metadata_InChIKey.tolist(),
                  plates=wells.Metadata_Plate.tolist(), perturbation_types=wells.Metadata_pert_type.tolist())
    metric = evaluate.load(metric_path("cloome_jump_activity"))
    got = metric.compute(**inputs, null_size=500)
    # the module sees float32 profiles; the reference, the same values
    ref = activity_task(normalize(wells.assign(**{c: wells[c].astype(np.float32) for c in feature_cols}), PIPELINE),
                        null_size=500)
    assert got == pytest.approx(flatten_results(ref))
    assert 0 < got["fraction_retrieved"] <= 1 and got["n_compounds"] == 24
    moa = plan.annotations.dropna(subset=["moa"]).set_index("inchikey").moa
    labels = [moa.get(k, "") for k in wells.Metadata_InChIKey]
    metric = evaluate.load(metric_path("cloome_jump_consistency"))
    got = metric.compute(**inputs, labels=labels, null_size=500)
    ref = consistency_task(normalize(wells.assign(**{c: wells[c].astype(np.float32) for c in feature_cols}),
                                     PIPELINE).assign(Metadata_label=[lab or None for lab in labels]), None,
                           by="label", null_size=500)
    assert got == pytest.approx(flatten_results(ref))
    assert got["n_labels"] == 3


def test_cloome_evaluate_runs_the_protocol_on_the_models_embeddings(tmp_path):
    """``cloome evaluate --tasks jump_activity,jump_consistency``: the model's site embeddings, recomputed here
    (processor -> model -> normalise), through aggregate -> normalize -> copairs give the reported numbers."""
    import torch

    from cloome_hf import CloomeConfig, CloomeImageProcessor, CloomeModel, CloomeProcessor, MoleculeFeaturizer
    from cloome_hf.cli import evaluate as evaluate_command
    from cloome_hf.data.schema import decode_row
    from cloome_hf.data.synthetic_plates import make_synthetic_plates

    options = dict(num_compounds=10, num_moas=2, replicates=2, controls_per_plate=6, num_batches=1, image_size=32,
                   seed=2)
    ds = make_synthetic_plates(**options)
    ds.save_to_disk(str(tmp_path / "plates"))
    plan = plan_synthetic_plates(**options)
    plan.annotations.rename(columns={"inchikey": "Metadata_InChIKey"}).to_csv(tmp_path / "moa.csv", index=False)
    torch.manual_seed(0)
    model = CloomeModel(CloomeConfig(vision_config={"layers": [1, 1, 1, 1], "base_width": 8, "head_pool_size": 1,
                                                    "image_size": [32, 32]},
                                     molecule_config={"fingerprint_size": 64, "hidden_size": 32,
                                                      "num_hidden_layers": 2}, projection_dim=16))
    processor = CloomeProcessor(CloomeImageProcessor(crop_size={"height": 32, "width": 32}),
                                MoleculeFeaturizer(fingerprint_size=64))
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    results = evaluate_command.main([
        "--model", str(tmp_path / "model"), "--dataset", str(tmp_path / "plates"), "--output_dir", str(tmp_path / "out"),
        "--tasks", "jump_activity,jump_consistency", "--profile_pipeline", "mad_robustize", "--annotations",
        str(tmp_path / "moa.csv"), "--consistency_by", "moa", "--map_null_size", "300"])

    with torch.no_grad():
        pixels = processor(images=[decode_row(r) for r in ds], return_tensors="pt")["pixel_values"]
        embeddings = torch.nn.functional.normalize(model.eval().get_image_features(pixels).pooler_output, dim=-1).numpy()
    meta = ds.select_columns(["sample_key", "plate", "well", "inchikey", "smiles", "perturbation_type"]).to_pandas()
    activity = phenotypic_activity(normalize(aggregate(embeddings, metadata=meta), "mad_robustize"), null_size=300)
    assert results["tasks"]["jump_activity"]["mean_map"] == pytest.approx(activity.mean_map, abs=1e-5)
    assert results["tasks"]["jump_activity"]["fraction_retrieved"]["n"] == activity.n_groups == 10
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(saved["tasks"]) == {"jump_activity", "jump_consistency"}
    for name in ("jump_activity", "jump_consistency"):
        assert (tmp_path / "out" / results["figures"][name]).is_file()
    assert "phenotypic activity" in (tmp_path / "out" / "report.md").read_text().lower()
