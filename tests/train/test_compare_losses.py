"""benchmarks/compare_losses.py: its top-1 % retrieval of active molecules against a loop over the definition."""

import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from compare_losses import active_top1pct  # noqa: E402


def reference_active_top1pct(images, molecules, inchikeys, active):
    """Per molecule: the normalised mean of its sites' image embeddings is the query; its own molecule must rank
    within ceil(M / 100) of the M molecules (ties against it); the fraction of hits over active molecules."""
    keys = sorted(set(inchikeys))
    unit = lambda v: v / np.linalg.norm(v)  # noqa: E731
    queries = [unit(np.mean([unit(images[i]) for i in range(len(inchikeys)) if inchikeys[i] == k], axis=0))
               for k in keys]
    candidates = [unit(molecules[list(inchikeys).index(k)]) for k in keys]
    cutoff = math.ceil(len(keys) / 100)
    hits = []
    for i, key in enumerate(keys):
        if not active[key]:
            continue
        own = float(queries[i] @ candidates[i])
        rank = 1 + sum(float(queries[i] @ candidates[j]) >= own for j in range(len(keys)) if j != i)
        hits.append(rank <= cutoff)
    return sum(hits) / len(hits), cutoff, len(hits)


def test_active_top1pct_matches_the_definition():
    rng = np.random.default_rng(0)
    num_molecules, sites = 230, 2  # 230 candidates: the top 1 % is the top 3
    centres = rng.normal(size=(num_molecules, 8))
    inchikeys = np.repeat([f"K{i:03d}" for i in range(num_molecules)], sites)
    images = np.repeat(centres, sites, axis=0) + rng.normal(scale=1.5, size=(num_molecules * sites, 8))
    images[::2] *= 3.0  # site norms differ: each site counts through its direction only
    molecules = np.repeat(centres + rng.normal(scale=0.8, size=centres.shape), sites, axis=0)
    active = {f"K{i:03d}": bool(i % 3) for i in range(num_molecules)}
    got = active_top1pct(images, molecules, inchikeys, active)
    value, cutoff, count = reference_active_top1pct(images, molecules, inchikeys, active)
    assert (got["cutoff"], got["num_candidates"], got["num_active"]) == (cutoff, num_molecules, count) == (3, 230, 153)
    assert 0 < value < 1
    assert got["top1pct"]["value"] == pytest.approx(value)
    assert got["top1pct"]["ci_low"] < value < got["top1pct"]["ci_high"]
    assert got["random"] == pytest.approx(cutoff / num_molecules)
