"""Well-level bags: the training unit may be a well, or a molecule x dose, instead of a site.

``cloome train --bag_by well`` (or ``molecule_dose``) groups the training sites into bags and batches bags: a batch
of ``batch_size`` bags holds their sites one bag after the other, and the collator adds ``bag_sizes`` and gives one
fingerprint (and dose) per bag. The unique-molecule rule holds per bag: no two bags of one molecule (two wells, two
doses) share a batch, since they would be false negatives of each other. The model pools each bag's site features
(:mod:`cloome_hf.bag_pooling`). On several processes the sampler plans the global batch of bags and gives each
process its slice of whole bags (``num_slices``), since the sites of a batch of bags cannot be cut by rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .sampling import SEED_RANGE, UniqueMoleculeBatchSampler, unique_molecule_batches
from .schema import CONCENTRATION

#: What one training unit is: a site (no bags), the sites of a well, or those of a molecule at one dose.
BAG_UNITS = ("site", "well", "molecule_dose")


def _columns(ds, names: Sequence[str], bag_by: str) -> list[list]:
    from .loader import column_values

    have = ds.column_names or []
    missing = [n for n in names if n not in have]
    if missing:
        raise ValueError(f"--bag_by {bag_by} needs the column(s) {missing}; the training sites have {have}")
    return [column_values(ds, n) for n in names]


def site_bags(ds, bag_by: str, rows: Sequence[int] | None = None) -> tuple[list[np.ndarray], list[str]]:
    """``(sites of each bag, each bag's molecule)``: positions into ``rows`` (or into ``ds``), bags in order of
    their first site. ``ValueError`` naming the bag when one holds two molecules or two doses."""
    if bag_by not in BAG_UNITS:
        raise ValueError(f"bag_by must be one of {BAG_UNITS}, got {bag_by!r}")
    if rows is not None:
        ds = ds.select(list(rows))
    names = {"site": ["sample_key", "inchikey"], "well": ["plate", "well", "inchikey"],
             "molecule_dose": ["inchikey", CONCENTRATION]}[bag_by]
    values = _columns(ds, names, bag_by)
    doses = values[-1] if bag_by == "molecule_dose" else (
        _columns(ds, [CONCENTRATION], bag_by)[0] if CONCENTRATION in (ds.column_names or []) else None)
    keys = list(zip(*values[:-1])) if bag_by == "well" else list(zip(*values))
    molecules = values[2] if bag_by == "well" else values[0] if bag_by == "molecule_dose" else values[1]
    members: dict[Any, list[int]] = {}
    for i, key in enumerate(keys):
        members.setdefault(key, []).append(i)
    bags, bag_molecules = [], []
    for key, sites in members.items():
        found = {molecules[i] for i in sites}
        found_doses = {doses[i] for i in sites} if doses is not None else set()
        if len(found) > 1 or len(found_doses) > 1:
            raise ValueError(f"bag {key!r} (--bag_by {bag_by}) holds sites of {len(found)} molecule(s) "
                             f"{sorted(found)[:3]} at {len(found_doses) or 1} dose(s) {sorted(found_doses)[:3]}: a "
                             "bag must be one molecule at one dose")
        bags.append(np.asarray(sites, dtype=np.int64))
        bag_molecules.append(molecules[sites[0]])
    return bags, bag_molecules


class BagBatchSampler(UniqueMoleculeBatchSampler):
    """Batches of bags with distinct molecules; yields each batch's sites as ``(row, seed, bag)`` keys, ``bag`` the
    bag's position in the batch (its sites consecutive), ``seed`` the site's augmentation seed (``None`` without).

    Args:
        bags: the rows of each bag (:func:`site_bags`).
        bag_molecules: each bag's molecule (distinct keys, e.g. ``range(len(bags))``, give plain shuffled batches).
        batch_size: bags per batch.
        max_sites: at most this many sites of a bag per epoch, drawn from ``(seed, epoch)`` (``None``: all).
        num_slices, slice_index: a process's share of every global batch, cut by bags (``batch_size`` bags into
            ``num_slices`` equal slices of whole bags).
        The rest as :class:`~cloome_hf.data.sampling.UniqueMoleculeBatchSampler`.
    """

    def __init__(self, bags: Sequence[Sequence[int]], bag_molecules: Sequence[Any], batch_size: int,
                 shuffle: bool = True, seed: int = 0, drop_last: bool | None = None, num_replicas: int = 1,
                 rank: int = 0, augmentation_seeds: bool = False, max_sites: int | None = None,
                 num_slices: int = 1, slice_index: int = 0):
        if len(bags) != len(bag_molecules):
            raise ValueError(f"{len(bags)} bags but {len(bag_molecules)} bag molecules")
        if max_sites is not None and (isinstance(max_sites, bool) or not isinstance(max_sites, int) or max_sites < 1):
            raise ValueError(f"max_sites must be a positive number of sites, got {max_sites!r}")
        self.bags = [np.asarray(b, dtype=np.int64) for b in bags]
        if any(not len(b) for b in self.bags):
            raise ValueError("every bag needs at least one site")
        self.max_sites = max_sites
        self.num_rows = int(max(int(b.max()) for b in self.bags) + 1) if self.bags else 0
        super().__init__(bag_molecules, batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last,
                         num_replicas=num_replicas, rank=rank, augmentation_seeds=augmentation_seeds,
                         num_slices=num_slices, slice_index=slice_index)

    def _all_batches(self) -> list[list]:
        if self._cache is None or self._cache[0] != self.epoch:
            rng = np.random.default_rng([self.seed, self.epoch]) if self.shuffle else None
            seeds = rng.integers(0, SEED_RANGE, size=self.num_rows) if self.augmentation_seeds and rng else None
            plan = unique_molecule_batches(self.keys, self.batch_size, rng, self.drop_last)
            batches = []
            for bag_batch in plan:
                keys = []
                for position, bag in enumerate(bag_batch):
                    sites = self.bags[bag]
                    if self.max_sites is not None and len(sites) > self.max_sites:
                        sites = (np.sort(rng.choice(sites, self.max_sites, replace=False)) if rng is not None
                                 else sites[:self.max_sites])
                    keys += [(int(r), None if seeds is None else int(seeds[r]), position) for r in sites]
                batches.append(keys)
            self._cache = (self.epoch, batches)
        return self._cache[1]


    def _slice(self, batch: list) -> list:
        """This slice's bags of a full batch, whole (a bag's sites never cross processes), numbered from 0: the
        same bags, sites, seeds and site draws (``max_sites``) as in the uncut batch."""
        size = self.batch_size // self.num_slices
        first = self.slice_index * size
        return [(row, seed, bag - first) for row, seed, bag in batch if first <= bag < first + size]


def bag_sizes_of(bag_positions: Sequence[int]) -> list[int]:
    """Run lengths of the consecutive bag positions ``0, 0, 1, 2, 2, ...``; ``ValueError`` when a bag's sites are
    not consecutive."""
    positions = np.asarray(list(bag_positions), dtype=np.int64)
    if not len(positions):
        return []
    if positions[0] != 0 or np.any(np.diff(positions) < 0) or np.any(np.diff(positions) > 1):
        raise ValueError(f"the sites of each bag must come together in bag order, got bag positions "
                         f"{positions.tolist()[:20]}")
    return np.bincount(positions).tolist()


__all__ = ["BAG_UNITS", "BagBatchSampler", "bag_sizes_of", "site_bags"]
