"""`evaluate` modules load offline and agree with the plain functions; replicate mAP and the report."""

import json

import numpy as np
import pytest

from cloome_hf.evaluation import (
    METRIC_NAMES,
    flatten_results,
    linear_probe,
    metric_path,
    render_report,
    replicate_map,
    retrieval_metrics,
    write_report,
    zeroshot_classification,
)


def reference_replicate_map(x, molecules):
    """Per-molecule mean of each site's AP when ranking all other sites by cosine similarity."""
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    s = x @ x.T
    ap = {}
    for i in range(len(x)):
        others = np.delete(np.arange(len(x)), i)
        order = others[np.argsort(-s[i, others], kind="stable")]
        rel = molecules[order] == molecules[i]
        if rel.sum() == 0:
            continue
        hits = np.cumsum(rel)
        ap.setdefault(molecules[i], []).append(np.mean(hits[rel] / (np.flatnonzero(rel) + 1)))
    return {m: float(np.mean(v)) for m, v in ap.items()}


@pytest.fixture(scope="module")
def replicates():
    rng = np.random.default_rng(0)
    molecules = np.repeat([f"m{i}" for i in range(8)], 4)
    centres = rng.normal(size=(8, 10))
    strength = np.repeat(np.linspace(0.0, 3.0, 8), 4)[:, None]  # m0 pure noise ... m7 strong phenotype
    x = strength * centres[np.repeat(np.arange(8), 4)] + rng.normal(size=(32, 10))
    return x.astype(np.float32), molecules


def test_replicate_map_matches_reference_and_detects_signal(replicates):
    x, molecules = replicates
    res = replicate_map(x, molecules, null_size=2000, seed=0)
    ref = reference_replicate_map(x.astype(np.float64), molecules)
    got = {r["molecule"]: r["map"] for r in res["per_molecule"]}
    assert got.keys() == ref.keys()
    for m in ref:
        assert got[m] == pytest.approx(ref[m], abs=1e-5)
    assert res["mean_map"] == pytest.approx(np.mean(list(ref.values())), abs=1e-5)
    significant = {r["molecule"] for r in res["per_molecule"] if r["corrected_p_value"] < 0.05}
    assert {"m6", "m7"} <= significant and "m0" not in significant
    assert res["fraction_retrieved"]["k"] == len(significant)


def test_evaluate_modules_load_offline_and_agree(replicates):
    import evaluate  # here: importing it takes seconds

    rng = np.random.default_rng(1)
    img = rng.normal(size=(120, 8)).astype(np.float32)
    mol = (img + rng.normal(size=img.shape)).astype(np.float32)
    retrieval = evaluate.load(metric_path("cloome_retrieval"))
    got = retrieval.compute(image_embeds=img, molecule_embeds=mol)
    assert got == pytest.approx(flatten_results(retrieval_metrics(img, mol)))
    assert 0 < got["image_to_molecule_top10"] < 1 and "one_in_100_molecule_to_image_top1" in got

    x, molecules = replicates
    plates = np.tile(["p1", "p2", "p3", "p4"], 8)
    zs = evaluate.load(metric_path("cloome_zeroshot"))
    got = zs.compute(embeds=x, labels=molecules, molecules=molecules, plates=plates, ks=(1, 3))
    assert got == pytest.approx(flatten_results(zeroshot_classification(x, molecules, molecules, plates, ks=(1, 3))))

    rm = evaluate.load(metric_path("cloome_replicate_map"))
    got = rm.compute(embeds=x, molecules=molecules, null_size=500)
    assert got["mean_map"] == pytest.approx(replicate_map(x, molecules, null_size=500)["mean_map"], abs=1e-6)

    lp = evaluate.load(metric_path("cloome_linear_probe"))
    feats = rng.normal(size=(60, 4)).astype(np.float32)
    labels = np.where(feats[:, :1] + 0.3 * rng.normal(size=(60, 1)) > 0, 1, -1).astype(np.int8)
    split = np.array(["train"] * 30 + ["validation"] * 15 + ["test"] * 15)
    got = lp.compute(features=feats, labels=labels, split=split, Cs=(0.1, 1.0))
    ref = flatten_results(linear_probe(feats, labels, split, Cs=(0.1, 1.0), show_progress=False))
    assert got == pytest.approx(ref)
    assert got["auc_mean"] > 0.9


def test_metric_path_names():
    assert set(METRIC_NAMES) == {"cloome_retrieval", "cloome_zeroshot", "cloome_linear_probe", "cloome_replicate_map",
                                 "cloome_jump_activity", "cloome_jump_consistency"}
    for name in METRIC_NAMES:
        src = open(metric_path(name)).read()
        assert "\nimport datasets\nimport evaluate\n" in src  # separate lines: evaluate's import scanner
    with pytest.raises(ValueError, match="'bleu'"):
        metric_path("bleu")


def test_report_tables_and_strict_json(tmp_path):
    eye = np.eye(150, dtype=np.float32)
    molecules = np.repeat(["a", "b", "c"], 4)
    x = np.repeat(np.eye(3), 4, axis=0) + 0.01
    results = {
        "model": "m",
        "dataset": "d",
        "tasks": {
            "retrieval": retrieval_metrics(eye, eye),
            "zeroshot_molecule": zeroshot_classification(x, molecules, molecules, np.tile(["p1", "p2"], 6)),
            "linear_probe": {"n_tasks_evaluated": 0, "auc": {"mean": float("nan"), "std": float("nan")},
                             "f1": {"mean": float("nan"), "std": float("nan")},
                             "auc_above": {t: {"count": 0} for t in ("0.9", "0.8", "0.7")}},
        },
        "baselines": {"CP": {"tasks": {}, "skipped": {"retrieval": "no molecule encoder"}}},
    }
    json_path, md_path = write_report(results, tmp_path)
    loaded = json.loads(json_path.read_text())  # strict JSON: NaN written as null
    assert loaded["tasks"]["linear_probe"]["auc"]["mean"] is None
    md = md_path.read_text()
    assert md == render_report(results) + "\n"
    assert "| Structure retrieval | CLOOME (this model) | 100.0 [97.6, 100.0] |" in md
    assert "| Structure retrieval | Random | 0.7 | 3.3 | 6.7 | 1.3 | 75.5 | 75.5 |" in md
    assert "### 1 in 100" in md and "Zero-shot molecule classification (Table 3)" in md
    assert "- CP, retrieval: no molecule encoder" in md
