"""Cross-modal retrieval metrics (CLOOME paper, Table 1).

Given ``N`` matched pairs ``(image_i, molecule_i)`` of embeddings, every image is used as a query against all
``N`` molecules ("structure retrieval", ``image_to_molecule``) and every molecule as a query against all ``N``
images ("image retrieval", ``molecule_to_image``). Similarity is cosine similarity (inputs are L2-normalised
here, so un-normalised ``get_*_features`` outputs are fine).

Ranks and ties: the rank of the true match is ``1 + #{competitors j : s(q, j) >= s(q, match)}``, i.e. ties
are broken *pessimistically* — a candidate that scores exactly as high as the true match is ranked above it.
A collapsed model that maps everything to one point therefore gets rank ``N`` for every query, not rank 1.
When ``groups`` is given (e.g. the molecule id of each pair, for data with several sites per molecule), a
candidate of the query's own group is not a competitor: it is an equally correct answer.

Memory: similarities are computed for blocks of queries of at most ``max_chunk_elements`` scores, so the peak
extra memory is ``O(max_chunk_elements)`` regardless of ``N`` (``N = 100,000`` runs in a few hundred MB).
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from .stats import proportion_with_ci, random_topk_accuracy, top_percent_k

__all__ = [
    "retrieval_ranks",
    "retrieval_ranks_one_in_n",
    "retrieval_metrics",
    "retrieval_accuracy",
    "top_k_candidates",
    "metrics_from_ranks",
]

DEFAULT_MAX_CHUNK_ELEMENTS = 2**25  # 128 MiB of float32 scores per block


def as_normalized_tensor(x, name: str, device) -> torch.Tensor:
    """(N, D) array-like -> float32 tensor on ``device`` with unit-norm rows; rejects NaN/inf and zero rows."""
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).detach()
    if t.ndim != 2 or t.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty (N, D) array, got shape {tuple(t.shape)}")
    t = t.to(device=device, dtype=torch.float32)
    finite = torch.isfinite(t).all(dim=1)
    if not bool(finite.all()):
        raise ValueError(f"{name} has non-finite values in row {int((~finite).nonzero()[0])}")
    norms = t.norm(dim=1, keepdim=True)
    if bool((norms == 0).any()):
        raise ValueError(f"{name} has an all-zero row {int((norms[:, 0] == 0).nonzero()[0])}; cosine undefined")
    return t / norms


def _check_pairs(queries: torch.Tensor, candidates: torch.Tensor, groups) -> torch.Tensor | None:
    if queries.shape != candidates.shape:
        raise ValueError(
            f"matched pairs need equal shapes, got queries {tuple(queries.shape)} and candidates "
            f"{tuple(candidates.shape)}"
        )
    if groups is None:
        return None
    codes = np.unique(np.asarray(groups), return_inverse=True)[1].reshape(-1)
    if codes.shape[0] != queries.shape[0]:
        raise ValueError(f"groups has {codes.shape[0]} entries, expected one per pair ({queries.shape[0]})")
    return torch.as_tensor(codes, device=queries.device)


def _chunk_size(n_candidates: int, max_chunk_elements: int) -> int:
    return max(1, int(max_chunk_elements) // max(1, n_candidates))


def retrieval_ranks(
    queries,
    candidates,
    groups=None,
    *,
    max_chunk_elements: int = DEFAULT_MAX_CHUNK_ELEMENTS,
    device=None,
    show_progress: bool = False,
) -> np.ndarray:
    """Pessimistic rank of candidate ``i`` for query ``i`` among all ``N`` candidates.

    Args:
        queries: ``(N, D)`` query embeddings (row ``i`` matches ``candidates[i]``).
        candidates: ``(N, D)`` candidate embeddings.
        groups: optional ``(N,)`` labels; candidates sharing the query's label are not counted as competitors.
        max_chunk_elements: bound on the number of scores held at once.
        device: torch device for the matrix products (default CPU).

    Returns:
        ``(N,)`` int64 ranks in ``[1, N]``.
    """
    q = as_normalized_tensor(queries, "queries", device)
    c = as_normalized_tensor(candidates, "candidates", device)
    codes = _check_pairs(q, c, groups)
    n = q.shape[0]
    step = _chunk_size(n, max_chunk_elements)
    ranks = torch.empty(n, dtype=torch.int64)
    for start in tqdm(range(0, n, step), desc="retrieval", disable=not show_progress):
        stop = min(n, start + step)
        scores = q[start:stop] @ c.T  # (chunk, N)
        rows = torch.arange(stop - start, device=scores.device)
        # The true score comes from the same product, so an identical competitor ties exactly.
        true = scores[rows, rows + start].unsqueeze(1)
        beats = scores >= true
        if codes is None:
            ranks[start:stop] = beats.sum(1).cpu()  # includes the match itself, i.e. 1 + competitors
        else:
            other = codes.unsqueeze(0) != codes[start:stop].unsqueeze(1)
            ranks[start:stop] = (1 + (beats & other).sum(1)).cpu()
    return ranks.numpy()


def sample_non_matches(codes: np.ndarray, n_negatives: int, rng: np.random.Generator) -> np.ndarray:
    """(N, n_negatives) indices, row i drawn without replacement from the items whose group differs from i's."""
    order = np.argsort(codes, kind="stable")
    sorted_codes = codes[order]
    starts = np.searchsorted(sorted_codes, codes, side="left")
    sizes = np.searchsorted(sorted_codes, codes, side="right") - starts
    pool = len(codes) - sizes
    too_small = np.flatnonzero(pool < n_negatives)
    if too_small.size:
        i = int(too_small[0])
        raise ValueError(
            f"query {i} has only {int(pool[i])} non-matching candidates, fewer than the {n_negatives} needed"
        )
    out = np.empty((len(codes), n_negatives), dtype=np.int64)
    for i in range(len(codes)):
        # Positions in the sorted order that skip the query's own (contiguous) group block.
        r = rng.choice(int(pool[i]), size=n_negatives, replace=False)
        r = np.where(r >= starts[i], r + sizes[i], r)
        out[i] = order[r]
    return out


def retrieval_ranks_one_in_n(
    queries,
    candidates,
    groups=None,
    *,
    n_candidates: int = 100,
    seed: int = 0,
    max_chunk_elements: int = DEFAULT_MAX_CHUNK_ELEMENTS,
    device=None,
) -> np.ndarray:
    """Pessimistic rank of the match among itself plus ``n_candidates - 1`` seeded random non-matches.

    This is the paper's "1 in 100" variant. Non-matches are drawn per query without replacement from the
    candidates of other groups (all other pairs when ``groups`` is None). Returns ``(N,)`` ranks in
    ``[1, n_candidates]``.
    """
    q = as_normalized_tensor(queries, "queries", device)
    c = as_normalized_tensor(candidates, "candidates", device)
    _check_pairs(q, c, groups)
    n = q.shape[0]
    if n_candidates < 2:
        raise ValueError(f"n_candidates must be >= 2, got {n_candidates}")
    codes = np.arange(n) if groups is None else np.unique(np.asarray(groups), return_inverse=True)[1].reshape(-1)
    negatives = sample_non_matches(codes, n_candidates - 1, np.random.default_rng(seed))
    index = torch.as_tensor(np.concatenate([np.arange(n)[:, None], negatives], axis=1), device=q.device)
    step = _chunk_size(n_candidates * q.shape[1], max_chunk_elements)
    ranks = torch.empty(n, dtype=torch.int64)
    for start in range(0, n, step):
        stop = min(n, start + step)
        cand = c[index[start:stop]]  # (chunk, n_candidates, D); column 0 is the true match
        scores = torch.bmm(cand, q[start:stop].unsqueeze(2)).squeeze(2)
        ranks[start:stop] = (scores >= scores[:, :1]).sum(1).cpu()
    return ranks.numpy()


def metrics_from_ranks(
    ranks: np.ndarray, n_candidates: int, ks=(1, 5, 10), confidence: float = 0.95, top_percent: bool = True
) -> dict:
    """Top-k accuracies (with Clopper–Pearson intervals), top-1 % recall, mean/median rank and random baseline."""
    ranks = np.asarray(ranks)
    n = int(ranks.shape[0])
    out: dict = {}
    random: dict = {}
    for k in ks:
        out[f"top{k}"] = proportion_with_ci(int((ranks <= k).sum()), n, confidence)
        random[f"top{k}"] = random_topk_accuracy(k, n_candidates)
    if top_percent:
        cutoff = top_percent_k(n_candidates, 1.0)
        out["top1pct_recall"] = proportion_with_ci(int((ranks <= cutoff).sum()), n, confidence)
        out["top1pct_cutoff"] = cutoff
        random["top1pct_recall"] = random_topk_accuracy(cutoff, n_candidates)
    out["mean_rank"] = float(ranks.mean())
    out["median_rank"] = float(np.median(ranks))
    random["mean_rank"] = (n_candidates + 1) / 2
    random["median_rank"] = (n_candidates + 1) / 2
    out["random"] = random
    return out


def retrieval_metrics(
    image_embeds,
    molecule_embeds,
    *,
    ks=(1, 5, 10),
    groups=None,
    one_in_n: int | None = 100,
    seed: int = 0,
    confidence: float = 0.95,
    max_chunk_elements: int = DEFAULT_MAX_CHUNK_ELEMENTS,
    device=None,
    show_progress: bool = False,
) -> dict:
    """Full retrieval report for ``N`` matched pairs, both directions.

    Args:
        image_embeds: ``(N, D)`` image embeddings; row ``i`` was perturbed by ``molecule_embeds[i]``.
        molecule_embeds: ``(N, D)`` molecule embeddings.
        ks: cut-offs for top-k accuracy.
        groups: optional ``(N,)`` molecule ids (see module docstring).
        one_in_n: size of the candidate set of the sub-sampled variant (paper: 100); None or a value above the
            number of available non-matches + 1 skips it.
        seed: seed of the non-match sampling.

    Returns:
        ``{"n": N, "image_to_molecule": {...}, "molecule_to_image": {...}, "one_in_100": {...}}`` where each
        direction holds ``top{k}`` / ``top1pct_recall`` as ``{"value", "ci_low", "ci_high", "k", "n"}``,
        ``mean_rank``, ``median_rank`` and the ``random`` baseline.
    """
    kwargs = dict(max_chunk_elements=max_chunk_elements, device=device)
    n = len(image_embeds)
    result: dict = {"n": n, "tie_breaking": "pessimistic"}
    directions = {
        "image_to_molecule": (image_embeds, molecule_embeds),
        "molecule_to_image": (molecule_embeds, image_embeds),
    }
    for name, (qs, cs) in directions.items():
        ranks = retrieval_ranks(qs, cs, groups, show_progress=show_progress, **kwargs)
        result[name] = metrics_from_ranks(ranks, n, ks, confidence)
    n_groups = n if groups is None else len(np.unique(np.asarray(groups)))
    if one_in_n is not None and n_groups >= one_in_n and _min_pool(groups, n) >= one_in_n - 1:
        variant: dict = {"n_candidates": one_in_n, "seed": seed}
        for name, (qs, cs) in directions.items():
            ranks = retrieval_ranks_one_in_n(qs, cs, groups, n_candidates=one_in_n, seed=seed, **kwargs)
            variant[name] = metrics_from_ranks(ranks, one_in_n, ks, confidence, top_percent=False)
        result[f"one_in_{one_in_n}"] = variant
    return result


def _min_pool(groups, n: int) -> int:
    if groups is None:
        return n - 1
    _, counts = np.unique(np.asarray(groups), return_counts=True)
    return n - int(counts.max())


def retrieval_accuracy(image_embeds, molecule_embeds, ks=(1, 5, 10), groups=None, device=None) -> dict[str, float]:
    """Flat top-k accuracies in both directions, for validation during training.

    Returns e.g. ``{"image_to_molecule_top1": 0.12, ..., "molecule_to_image_top10": 0.4}`` (fractions).
    """
    out = {}
    for name, (qs, cs) in {
        "image_to_molecule": (image_embeds, molecule_embeds),
        "molecule_to_image": (molecule_embeds, image_embeds),
    }.items():
        ranks = retrieval_ranks(qs, cs, groups, device=device)
        for k in ks:
            out[f"{name}_top{k}"] = float((ranks <= k).mean())
    return out


def top_k_candidates(
    queries, candidates, k: int = 5, *, max_chunk_elements: int = DEFAULT_MAX_CHUNK_ELEMENTS, device=None
) -> tuple[np.ndarray, np.ndarray]:
    """Indices and cosine scores of the ``k`` best candidates per query, best first: two ``(Q, k)`` arrays."""
    q = as_normalized_tensor(queries, "queries", device)
    c = as_normalized_tensor(candidates, "candidates", device)
    if q.shape[1] != c.shape[1]:
        raise ValueError(f"queries have dimension {q.shape[1]}, candidates {c.shape[1]}")
    k = min(k, c.shape[0])
    step = _chunk_size(c.shape[0], max_chunk_elements)
    idx, val = [], []
    for start in range(0, q.shape[0], step):
        top = (q[start : start + step] @ c.T).topk(k, dim=1)
        idx.append(top.indices.cpu())
        val.append(top.values.cpu())
    return torch.cat(idx).numpy(), torch.cat(val).numpy()

