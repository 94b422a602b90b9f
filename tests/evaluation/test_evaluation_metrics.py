"""Retrieval, zero-shot and interval functions against brute-force references and hand-made cases."""

import numpy as np
import pytest
from scipy import stats

from cloome_hf.evaluation import (
    clopper_pearson,
    retrieval_accuracy,
    retrieval_metrics,
    retrieval_ranks,
    retrieval_ranks_one_in_n,
    select_prototypes,
    top_k_candidates,
    zeroshot_classification,
    zeroshot_query_mask,
)
from cloome_hf.evaluation.retrieval import sample_non_matches


def _unit(x):
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_force_ranks(queries, candidates, groups=None):
    """1 + number of other-group candidates scoring >= the match (float64, near-equal counts as a tie)."""
    s = _unit(queries) @ _unit(candidates).T
    n = len(s)
    groups = np.arange(n) if groups is None else np.asarray(groups)
    ranks = np.empty(n, dtype=int)
    for i in range(n):
        competitor = groups != groups[i]
        ranks[i] = 1 + int(np.sum(competitor & (s[i] >= s[i, i] - 1e-6)))
    return ranks


@pytest.fixture
def tied_pairs():
    rng = np.random.default_rng(1)
    img = rng.normal(size=(60, 12)).astype(np.float32)
    mol = (img + rng.normal(scale=1.5, size=img.shape)).astype(np.float32)
    # Exact ties: duplicated molecules (same structure at two sites) and duplicated images.
    mol[7] = mol[5]
    mol[20] = mol[5]
    img[31] = img[30]
    mol[40] = 3.0 * mol[41]  # same direction, different norm: a cosine tie
    return img, mol


@pytest.mark.parametrize("max_chunk_elements", [7 * 60, 2**25])
def test_ranks_match_brute_force_both_directions_with_ties(tied_pairs, max_chunk_elements):
    img, mol = tied_pairs
    for q, c in ((img, mol), (mol, img)):
        got = retrieval_ranks(q, c, max_chunk_elements=max_chunk_elements)
        np.testing.assert_array_equal(got, brute_force_ranks(q, c))
    # Pessimistic: query 5's match ties with candidates 7 and 20, so it cannot be better than rank 3.
    assert retrieval_ranks(img, mol)[5] >= 3


def test_groups_exclude_same_molecule_competitors(tied_pairs):
    img, mol = tied_pairs
    groups = np.arange(60)
    groups[[7, 20]] = 5  # the duplicated molecule is one molecule
    got = retrieval_ranks(img, mol, groups, max_chunk_elements=100)
    np.testing.assert_array_equal(got, brute_force_ranks(img, mol, groups))
    assert got[5] < retrieval_ranks(img, mol)[5]


def test_metrics_from_ranks_against_reference(tied_pairs):
    img, mol = tied_pairs
    res = retrieval_metrics(img, mol, one_in_n=None)
    for direction, (q, c) in {"image_to_molecule": (img, mol), "molecule_to_image": (mol, img)}.items():
        ref = brute_force_ranks(q, c)
        d = res[direction]
        for k in (1, 5, 10):
            assert d[f"top{k}"]["k"] == int(np.sum(ref <= k))
            assert d[f"top{k}"]["value"] == pytest.approx(np.mean(ref <= k))
            assert d["random"][f"top{k}"] == pytest.approx(k / 60)
        assert d["top1pct_cutoff"] == 1  # ceil(0.6)
        assert d["top1pct_recall"]["value"] == pytest.approx(np.mean(ref <= 1))
        assert d["mean_rank"] == pytest.approx(ref.mean())
        assert d["median_rank"] == pytest.approx(np.median(ref))
        lo, hi = stats.binomtest(int(np.sum(ref <= 5)), 60).proportion_ci(0.95, method="exact")
        assert (d["top5"]["ci_low"], d["top5"]["ci_high"]) == pytest.approx((lo, hi))
    assert "one_in_100" not in res


def test_identity_perfect_reversed_zero_and_collapsed_worst():
    n = 150
    eye = np.eye(n, dtype=np.float32)
    perfect = retrieval_metrics(eye, eye, seed=3)
    reversed_ = retrieval_metrics(eye, -eye, seed=3)
    collapsed = retrieval_metrics(np.ones((n, 4)), np.ones((n, 4)), one_in_n=None)
    for direction in ("image_to_molecule", "molecule_to_image"):
        assert perfect[direction]["top1"]["value"] == 1.0
        assert perfect[direction]["mean_rank"] == 1.0
        assert perfect["one_in_100"][direction]["top1"]["value"] == 1.0
        assert reversed_[direction]["top10"]["value"] == 0.0
        assert reversed_[direction]["mean_rank"] == n
        assert reversed_["one_in_100"][direction]["mean_rank"] == 100
        # Every candidate ties with the match: pessimistic ranking puts the match last, not first.
        assert collapsed[direction]["top1"]["value"] == 0.0
        assert collapsed[direction]["median_rank"] == n
    assert perfect["one_in_100"]["image_to_molecule"]["random"]["top5"] == pytest.approx(0.05)
    assert retrieval_accuracy(eye, eye)["molecule_to_image_top1"] == 1.0
    assert retrieval_accuracy(eye, -eye)["image_to_molecule_top10"] == 0.0


def test_one_in_n_is_seeded_subset_of_full_ranking():
    rng = np.random.default_rng(0)
    img = rng.normal(size=(400, 8)).astype(np.float32)
    mol = (img + rng.normal(scale=2.0, size=img.shape)).astype(np.float32)
    full = retrieval_ranks(img, mol)
    a = retrieval_ranks_one_in_n(img, mol, n_candidates=100, seed=0, max_chunk_elements=5000)
    b = retrieval_ranks_one_in_n(img, mol, n_candidates=100, seed=0)
    c = retrieval_ranks_one_in_n(img, mol, n_candidates=100, seed=1)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert np.all((a >= 1) & (a <= 100) & (a <= full))
    # Uniform sampling of 99 of the 399 competitors: expected rank = 1 + 99 * (full - 1) / 399.
    expected = 1 + 99 * (full - 1) / 399
    assert abs(a.mean() - expected.mean()) < 2.0


def test_non_match_sampler_excludes_self_group_and_duplicates():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(30), 4)  # 120 items, 4 per group
    neg = sample_non_matches(groups, 99, rng)
    assert neg.shape == (120, 99)
    for i, row in enumerate(neg):
        assert len(set(row)) == 99
        assert np.all(groups[row] != groups[i])
    with pytest.raises(ValueError, match="query 0 has only 116"):
        sample_non_matches(groups, 117, rng)


def test_top_k_candidates_and_bad_input():
    rng = np.random.default_rng(0)
    q, c = rng.normal(size=(9, 5)), rng.normal(size=(40, 5))
    idx, val = top_k_candidates(q, c, k=5, max_chunk_elements=80)
    ref = np.argsort(-(_unit(q) @ _unit(c).T), axis=1)[:, :5]
    np.testing.assert_array_equal(idx, ref)
    assert np.all(np.diff(val, axis=1) <= 0)
    bad = rng.normal(size=(10, 5))
    bad[3] = 0
    with pytest.raises(ValueError, match="all-zero row 3"):
        retrieval_ranks(bad, rng.normal(size=(10, 5)))
    bad[3] = np.nan
    with pytest.raises(ValueError, match="non-finite values in row 3"):
        retrieval_ranks(bad, rng.normal(size=(10, 5)))
    with pytest.raises(ValueError, match="equal shapes"):
        retrieval_ranks(rng.normal(size=(10, 5)), rng.normal(size=(11, 5)))


@pytest.mark.parametrize("k,n", [(0, 10), (10, 10), (3, 17), (1, 1), (250, 1000)])
def test_clopper_pearson_matches_scipy_exact(k, n):
    lo, hi = clopper_pearson(k, n)
    ref = stats.binomtest(k, n).proportion_ci(0.95, method="exact")
    assert (lo, hi) == pytest.approx((ref.low, ref.high), abs=1e-10)
    assert 0.0 <= lo <= k / n <= hi <= 1.0


def test_clopper_pearson_edges_and_errors():
    assert clopper_pearson(0, 20)[0] == 0.0
    assert clopper_pearson(0, 20)[1] == pytest.approx(1 - 0.025 ** (1 / 20))
    assert clopper_pearson(20, 20) == pytest.approx((0.025 ** (1 / 20), 1.0))
    assert clopper_pearson(5, 50, confidence=0.99)[0] < clopper_pearson(5, 50)[0]
    for args, msg in [((3, 0), "n >= 1"), ((11, 10), "0 <= k <= n"), ((-1, 10), "0 <= k <= n"), ((1.5, 3), "integer")]:
        with pytest.raises(ValueError, match=msg):
            clopper_pearson(*args)
    with pytest.raises(ValueError, match="confidence"):
        clopper_pearson(1, 3, confidence=1.0)


# ---- zero-shot ---------------------------------------------------------------------------------------------

def test_query_mask_removes_prototypes_and_same_molecule_and_plate():
    #            0    1    2    3    4    5    6    7
    molecules = ["A", "A", "A", "B", "B", "C", "C", "A"]
    plates = ["p1", "p1", "p2", "p1", "p2", "p1", "p2", "p3"]
    protos = [0, 4]  # (A, p1) and (B, p2)
    mask = zeroshot_query_mask(molecules, plates, protos)
    # 1 shares A+p1 with prototype 0; 2 (A, p2) shares only the plate of prototype 4's plate, not its molecule.
    np.testing.assert_array_equal(mask, [False, False, True, True, False, True, True, True])


def test_zeroshot_counts_and_accuracy_against_reference():
    rng = np.random.default_rng(0)
    n_mol, per_plate, plates = 8, 2, ["p1", "p2", "p3"]
    molecules = np.repeat([f"m{i}" for i in range(n_mol)], per_plate * len(plates))
    plate = np.tile(np.repeat(plates, per_plate), n_mol)
    moa = np.array([f"moa{int(m[1:]) % 3}" for m in molecules], dtype=object)
    moa[molecules == "m7"] = None  # unannotated: takes no part in the MoA task
    centres = rng.normal(size=(n_mol, 16))
    x = centres[[int(m[1:]) for m in molecules]] + 0.8 * rng.normal(size=(len(molecules), 16))

    for labels in (molecules, moa):
        res = zeroshot_classification(x, labels, molecules, plate, seed=4, ks=(1, 2, 5))
        present = np.flatnonzero([lab is not None for lab in labels])
        lab = np.asarray(labels, dtype=object)[present].astype(str)
        classes, protos = select_prototypes(lab, seed=4)
        assert sorted(set(lab[protos])) == list(classes) and all(lab[p] == c for p, c in zip(protos, classes))
        keep = zeroshot_query_mask(molecules[present], plate[present], protos)
        s = _unit(x[present]) @ _unit(x[present][protos]).T
        true = np.searchsorted(classes, lab)
        ranks = np.array([np.sum(s[i] >= s[i, true[i]]) for i in np.flatnonzero(keep)])
        assert res["n_classes"] == len(classes)
        assert res["n_queries"] == keep.sum()
        assert res["n_removed"] == len(lab) - len(classes) - keep.sum()
        for k in (1, 2, 5):
            assert res[f"top{k}"]["k"] == int(np.sum(ranks <= k))
            assert res["random"][f"top{k}"] == pytest.approx(min(1.0, k / len(classes)))
    # molecule task: each prototype removes its own (molecule, plate) replicate: exactly one site per class.
    mol_res = zeroshot_classification(x, molecules, molecules, plate, seed=4)
    assert mol_res["n_removed"] == n_mol and mol_res["n_queries"] == len(molecules) - 2 * n_mol


def test_zeroshot_separable_clusters_are_perfect_and_errors():
    molecules = np.repeat(["a", "b", "c"], 4)
    plates = np.tile(["p1", "p2"], 6)
    x = np.repeat(np.eye(3), 4, axis=0) + 0.01 * np.random.default_rng(0).normal(size=(12, 3))
    res = zeroshot_classification(x, molecules, molecules, plates, ks=(1,))
    assert res["top1"]["value"] == 1.0
    with pytest.raises(ValueError, match="one entry per site"):
        zeroshot_classification(x, molecules[:-1], molecules, plates)
    with pytest.raises(ValueError, match="no query sites remain"):
        zeroshot_classification(x[:3], ["a", "b", "c"], ["a", "b", "c"], ["p"] * 3)
