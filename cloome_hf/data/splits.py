"""Dataset splits that never leak a molecule (or a scaffold) across train / validation / test.

All splits group sites by molecule key (the ``inchikey`` column) and are seeded and deterministic: the same
dataset, fractions and seed give the same split on any machine, whatever the row order.
"""

from __future__ import annotations

import os
from typing import Mapping, Sequence

import numpy as np

SPLIT_NAMES = ("train", "validation", "test")


def _fractions(fractions) -> dict[str, float]:
    if isinstance(fractions, Mapping):
        fr = {str(k): float(v) for k, v in fractions.items()}
    else:
        fractions = list(fractions)
        if len(fractions) > len(SPLIT_NAMES):
            raise ValueError(f"give at most {len(SPLIT_NAMES)} fractions or a dict, got {fractions}")
        fr = dict(zip(SPLIT_NAMES, map(float, fractions)))
    if any(v < 0 for v in fr.values()) or not np.isclose(sum(fr.values()), 1.0, atol=1e-6):
        raise ValueError(f"split fractions must be >= 0 and sum to 1, got {fr}")
    return fr


def _keys(ds, key: str) -> list[str]:
    if key not in ds.column_names:
        raise ValueError(f"dataset has no molecule key column {key!r}; columns: {ds.column_names}")
    return list(ds.select_columns([key])[key])


def _dataset_dict(ds, groups_of_rows: Mapping[str, np.ndarray]):
    import datasets

    return datasets.DatasetDict({name: ds.select(np.sort(rows)) for name, rows in groups_of_rows.items()})


def assign_molecules(keys: Sequence[str], fractions=(0.8, 0.1, 0.1), seed: int = 0) -> dict[str, str]:
    """``{molecule key: split name}``: a seeded permutation of the sorted unique keys cut by ``fractions``
    (fractions of molecules; every non-zero split gets at least one molecule when there are enough)."""
    fr = _fractions(fractions)
    uniq = sorted(set(keys))
    order = np.random.default_rng(seed).permutation(len(uniq))
    counts = _counts(len(uniq), list(fr.values()))
    out, start = {}, 0
    for name, n in zip(fr, counts):
        for i in order[start:start + n]:
            out[uniq[i]] = name
        start += n
    return out


def _counts(n: int, fractions: Sequence[float]) -> list[int]:
    """Largest-remainder rounding of ``n * fractions``; non-zero fractions get >= 1 item when n allows."""
    raw = np.asarray(fractions) * n
    counts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - counts))[: n - counts.sum()]:
        counts[i] += 1
    for i in np.flatnonzero((counts == 0) & (np.asarray(fractions) > 0)):
        j = int(np.argmax(counts))
        if counts[j] > 1:
            counts[j] -= 1
            counts[i] += 1
    return counts.tolist()


def split_by_molecule(ds, fractions=(0.8, 0.1, 0.1), seed: int = 0, key: str = "inchikey"):
    """Split a ``datasets.Dataset`` so all sites of a molecule fall in one split.

    Args:
        ds: a ``Dataset`` (or ``IterableDataset``: then each split is a ``filter`` of the stream, assigned from
            one pass over the key column).
        fractions: ``(train, validation, test)`` or ``{name: fraction}``; fractions of molecules.
        seed: permutation seed.
        key: molecule key column.

    Returns:
        ``datasets.DatasetDict`` (``IterableDatasetDict`` for streams) with one entry per split name.
    """
    import datasets

    if isinstance(ds, datasets.IterableDataset):
        keys = [row[key] for row in ds.select_columns([key])]
        assignment = assign_molecules(keys, fractions, seed)
        return datasets.IterableDatasetDict({
            name: ds.filter(lambda k, name=name: assignment[k] == name, input_columns=[key])
            for name in _fractions(fractions)})
    keys = np.asarray(_keys(ds, key), dtype=object)
    assignment = assign_molecules(keys, fractions, seed)
    split_of = np.array([assignment[k] for k in keys], dtype=object)
    return _dataset_dict(ds, {name: np.flatnonzero(split_of == name) for name in _fractions(fractions)})


def murcko_scaffold(smiles: str) -> str:
    """Bemis-Murcko scaffold SMILES (RDKit, no chirality); ``""`` for acyclic molecules.
    ``ValueError`` naming the SMILES if RDKit cannot parse it."""
    from rdkit.Chem.Scaffolds import MurckoScaffold

    from ..featurization_cloome import parse_molecule

    mol = parse_molecule(smiles)
    if mol is None:
        raise ValueError(f"invalid SMILES {smiles!r}: cannot compute its scaffold")
    return MurckoScaffold.MurckoScaffoldSmiles(mol=mol, includeChirality=False)


def split_by_scaffold(ds, fractions=(0.8, 0.1, 0.1), seed: int = 0, key: str = "inchikey"):
    """Split so that no Bemis-Murcko scaffold is shared between splits (and no molecule, a fortiori).

    Scaffold groups are assigned whole, each to the split with the most room left (target minus assigned
    sites): first the groups larger than half the smallest non-train target (largest first, so they land in
    train), then the others in seeded random order. Fractions are of sites, met up to one group's size.
    Acyclic molecules have no scaffold and are grouped by molecule.
    """
    fr = _fractions(fractions)
    meta = ds.select_columns([key, "smiles"])
    keys, smiles = list(meta[key]), list(meta["smiles"])
    first = dict(zip(keys, smiles))
    scaffold_of = {}
    for k, s in first.items():
        scaffold = murcko_scaffold(s)
        scaffold_of[k] = scaffold if scaffold else f"acyclic:{k}"
    groups: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        groups.setdefault(scaffold_of[k], []).append(i)
    names = sorted(groups)
    rng = np.random.default_rng(seed)
    targets = {n: f * len(keys) for n, f in fr.items()}
    small = min([t for n, t in targets.items() if n != "train" and t > 0] or [len(keys)])
    big = sorted([g for g in names if len(groups[g]) > small / 2], key=lambda g: (-len(groups[g]), g))
    big_set = set(big)
    rest = [names[i] for i in rng.permutation(len(names)) if names[i] not in big_set]
    filled = {n: 0 for n in fr}
    rows = {n: [] for n in fr}
    for g in big + rest:  # each group to the split with the most room left (large groups first, then random)
        name = max(fr, key=lambda n: targets[n] - filled[n])
        rows[name] += groups[g]
        filled[name] += len(groups[g])
    return _dataset_dict(ds, {n: np.asarray(r, dtype=np.int64) for n, r in rows.items()})


def split_from_files(ds, files: Mapping[str, str | os.PathLike], key_column: str = "SAMPLE_KEY"):
    """Splits given as index CSVs (one per split, like the upstream CLOOME split files).

    Each CSV must have ``key_column`` (matched against the dataset's ``sample_key``). ``ValueError`` names the
    file and the first sample key missing from the dataset, or a key listed in two split files.
    """
    from .remote import read_table

    index = {k: i for i, k in enumerate(_keys(ds, "sample_key"))}
    seen: dict[str, str] = {}
    rows = {}
    for name, path in files.items():
        table, _ = read_table(path, "split")
        if key_column not in table.columns:
            raise ValueError(f"split file {path} has no column {key_column!r}")
        wanted = table[key_column].astype(str).tolist()
        missing = [k for k in wanted if k not in index]
        if missing:
            raise ValueError(f"split file {path}: {len(missing)} sample keys are not in the dataset, "
                             f"first {missing[0]!r}")
        for k in wanted:
            if k in seen:
                raise ValueError(f"sample key {k!r} is in split files {seen[k]} and {path}")
            seen[k] = os.fspath(path)
        rows[name] = np.asarray([index[k] for k in wanted], dtype=np.int64)
    return _dataset_dict(ds, rows)


def one_site_per_molecule(keys: Sequence[str], seed: int = 0) -> np.ndarray:
    """Sorted row indices of one seeded-random site per molecule key (the paper's "one image per molecule" set).

    The retrieval evaluation, its figures and :func:`retrieval_subsets` all choose through this function, so
    the same seed picks the same sites everywhere.
    """
    keys = np.asarray(list(keys), dtype=object)
    order = np.random.default_rng(seed).permutation(len(keys))
    _, first = np.unique(keys[order], return_index=True)
    return np.sort(order[first])


def retrieval_subsets(ds, seed: int = 0, key: str = "inchikey"):
    """The paper's evaluation subsets of a (test) split.

    Returns ``DatasetDict`` with ``"one_site_per_molecule"`` (one seeded-random site per molecule, the
    retrieval "imgpermol" set, :func:`one_site_per_molecule`) and ``"remaining_sites"`` (all other sites of
    those molecules).
    """
    keys = _keys(ds, key)
    chosen = one_site_per_molecule(keys, seed)
    mask = np.ones(len(keys), dtype=bool)
    mask[chosen] = False
    return _dataset_dict(ds, {"one_site_per_molecule": chosen, "remaining_sites": np.flatnonzero(mask)})
