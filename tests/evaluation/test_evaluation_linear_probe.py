"""Linear probing on the real activity label matrix structure with synthetic features."""

from pathlib import Path

import numpy as np
import pytest
from joblib import parallel_config
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler

from cloome_hf.evaluation import (
    DEFAULT_C_GRID,
    aggregate_by_molecule,
    linear_probe,
    load_activity_matrix,
    molecule_split,
)

DATA = Path(__file__).resolve().parents[1] / "fixtures"
SIGNAL_ASSAYS = ["688239", "1495405", "752594"]
NOISE_ASSAYS = ["752347", "845173", "954338"]
SMALL_GRID = (1e-3, 1e-1, 1e1)


@pytest.fixture(scope="module")
def labels():
    return load_activity_matrix(
        DATA / "activity_label_matrix.mtx.gz",
        DATA / "activity_row_compound_index.csv.gz",
        DATA / "activity_column_assay_index.csv",
    )


@pytest.fixture(scope="module")
def probe_problem(labels):
    cols = [labels.assay_ids.index(a) for a in SIGNAL_ASSAYS + NOISE_ASSAYS]
    y = labels.matrix[:, cols].toarray()
    rows = np.flatnonzero((y != 0).any(1))  # molecules measured in at least one of the six tasks
    y = y[rows]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(len(rows), 8)).astype(np.float32)
    for j in range(len(SIGNAL_ASSAYS)):  # feature j carries task j's label where it is known
        x[:, j] += 2.0 * y[:, j]
    split = molecule_split(np.asarray(labels.inchikeys)[rows], seed=0)
    return x, y, split


def test_loader_reads_real_matrix(labels):
    assert labels.matrix.shape == (10574, 209)
    assert labels.matrix.nnz == 55542
    assert set(np.unique(labels.matrix.data)) == {-1, 1}
    assert labels.inchikeys[0] == "IENZQIKPVFGBNW-UHFFFAOYSA-N"
    assert labels.assay_ids[:2] == ["600885", "688422"]


def test_signal_tasks_high_auc_noise_tasks_chance(probe_problem):
    x, y, split = probe_problem
    res = linear_probe(x, y, split, Cs=SMALL_GRID, task_names=SIGNAL_ASSAYS + NOISE_ASSAYS, show_progress=False)
    assert res["n_tasks"] == 6 and res["n_tasks_evaluated"] == 6 and res["skipped"] == {}
    by_task = {r["task"]: r for r in res["per_task"]}
    for a in SIGNAL_ASSAYS:
        assert by_task[a]["test_auc"] > 0.9, by_task[a]
        assert by_task[a]["test_f1"] > 0.7
    for a in NOISE_ASSAYS:
        assert abs(by_task[a]["test_auc"] - 0.5) < 0.2, by_task[a]
    aucs = np.array([r["test_auc"] for r in res["per_task"]])
    assert res["auc"]["mean"] == pytest.approx(aucs.mean())
    assert res["auc"]["std"] == pytest.approx(aucs.std())
    assert res["auc_above"]["0.9"]["count"] == int(np.sum(aucs > 0.9)) >= 3
    assert res["auc_above"]["0.7"]["count"] == int(np.sum(aucs > 0.7))

    # Independent check of the model selection for one task: best validation AUC, refit on train+val.
    t = 0
    known = y[:, t] != 0
    parts = {s: (x[known & (split == s)], (y[known & (split == s), t] == 1).astype(int))
             for s in ("train", "validation", "test")}
    val = []
    for C in SMALL_GRID:
        sc = StandardScaler().fit(parts["train"][0])
        clf = LogisticRegression(C=C, max_iter=1000, class_weight="balanced")
        clf.fit(sc.transform(parts["train"][0]), parts["train"][1])
        val.append(roc_auc_score(parts["validation"][1], clf.predict_proba(sc.transform(parts["validation"][0]))[:, 1]))
    best = SMALL_GRID[int(np.argmax(val))]
    assert by_task[SIGNAL_ASSAYS[0]]["C"] == best
    xa = np.concatenate([parts["train"][0], parts["validation"][0]])
    ya = np.concatenate([parts["train"][1], parts["validation"][1]])
    sc = StandardScaler().fit(xa)
    clf = LogisticRegression(C=best, max_iter=1000, class_weight="balanced").fit(sc.transform(xa), ya)
    ref_auc = roc_auc_score(parts["test"][1], clf.predict_proba(sc.transform(parts["test"][0]))[:, 1])
    assert by_task[SIGNAL_ASSAYS[0]]["test_auc"] == pytest.approx(ref_auc, abs=1e-6)
    assert by_task[SIGNAL_ASSAYS[0]]["n_test"] == len(parts["test"][1])


def test_parallel_jobs_match_serial_and_skip_rule(probe_problem):
    x, y, split = probe_problem
    y = y[:, :2].copy()
    serial = linear_probe(x, y, split, Cs=(1e-1,), show_progress=False)
    # Task 1 loses all its validation actives: it must be skipped, not scored.
    y[(split == "validation") & (y[:, 1] == 1), 1] = 0
    with parallel_config(backend="threading"):  # same code path as loky, without process start-up in tests
        parallel = linear_probe(x, y, split, Cs=(1e-1,), n_jobs=2, show_progress=False)
    assert parallel["per_task"][0] == serial["per_task"][0]
    assert parallel["skipped"] == {"1": "not both classes in validation"}
    assert parallel["n_tasks_evaluated"] == 1


def test_default_grid_split_and_aggregation():
    assert DEFAULT_C_GRID == pytest.approx(tuple(10.0**e for e in range(-6, 7)))
    keys = np.repeat([f"k{i}" for i in range(100)], 3)
    split = molecule_split(keys, seed=1)
    for k in np.unique(keys):
        assert len(set(split[keys == k])) == 1  # a molecule never straddles splits
    counts = {s: np.sum(split == s) / 3 for s in ("train", "validation", "test")}
    assert counts == {"train": 60, "validation": 20, "test": 20}
    emb = np.arange(12, dtype=np.float32).reshape(6, 2)
    uk, feats = aggregate_by_molecule(emb, ["b", "a", "b", "a", "c", "c"])
    assert list(uk) == ["a", "b", "c"]
    np.testing.assert_allclose(feats, [[4, 5], [2, 3], [9, 10]])


def test_bad_inputs_name_the_problem(tmp_path):
    x = np.zeros((4, 2))
    with pytest.raises(ValueError, match="'holdout'"):
        linear_probe(x, np.zeros((4, 1)), ["train", "validation", "test", "holdout"])
    with pytest.raises(ValueError, match="must agree"):
        linear_probe(x, np.zeros((5, 1)), ["train"] * 4)
    bad = tmp_path / "bad.mtx"
    bad.write_text("%%MatrixMarket matrix coordinate integer general\n2 2 1\n1 1 2\n")
    with pytest.raises(ValueError, match="bad.mtx: labels must be"):
        load_activity_matrix(bad)
