"""Which sites go together in a batch: unique-molecule batches, seeded per epoch, for map-style and streaming data.

A duplicate molecule in a batch is a false negative of the contrastive loss, so no batch holds one twice. Global
batches are a pure function of ``(seed, epoch)``; when training, every site also gets an augmentation seed drawn
from ``(seed, epoch)``, so what a site looks like does not depend on the batch, the worker or the process.
"""

from __future__ import annotations

import warnings
from typing import Any, Iterator, Sequence

import numpy as np
import torch

#: Augmentation seeds are drawn from [0, SEED_RANGE).
SEED_RANGE = 2**62


class _EpochHandle:
    """Exposed as ``sampler`` so that ``accelerate``'s ``DataLoaderShard.set_epoch`` (which calls
    ``batch_sampler.batch_sampler.sampler.set_epoch``) reaches the wrapped batch sampler."""

    def __init__(self, owner):
        self._owner = owner

    def set_epoch(self, epoch: int) -> None:
        self._owner.set_epoch(epoch)

    def __len__(self) -> int:
        return self._owner.num_sites


def unique_molecule_batches(keys: Sequence[Any], batch_size: int, rng: np.random.Generator | None,
                            drop_last: bool) -> list[list[int]]:
    """Batches of row indices in which no key occurs twice.

    Each molecule's sites are shuffled and dealt out in rounds (round r holds the r-th site of every molecule
    that has one, in shuffled molecule order), so duplicates can only meet where rounds join; a greedy pass
    defers such a site to the next batch. Every site is used once per epoch, except that with
    ``drop_last`` the final incomplete batch is dropped (as are sites that cannot fill a duplicate-free batch).
    ``rng=None`` keeps the input order (evaluation).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    codes = np.unique(np.asarray(keys, dtype=object), return_inverse=True)[1].ravel()
    if rng is None:
        order = np.arange(len(codes))
    else:
        perm = rng.permutation(len(codes))  # shuffles sites within each molecule
        mol_rank = rng.permutation(codes.max() + 1 if len(codes) else 0)  # shuffled molecule order
        c = codes[perm]
        by_mol = np.argsort(c, kind="stable")
        starts = np.searchsorted(c[by_mol], c[by_mol])
        rounds = np.empty(len(c), dtype=np.int64)
        rounds[by_mol] = np.arange(len(c)) - starts
        order = perm[np.lexsort((mol_rank[c], rounds))]
    batches, current, in_batch, deferred = [], [], set(), []
    for i in order:
        if codes[i] in in_batch:
            deferred.append(i)
            continue
        current.append(i)
        in_batch.add(codes[i])
        if len(current) == batch_size:
            batches.append(current)
            current, in_batch, still = [], set(), []
            for j in deferred:  # deferred sites go first into the next batch
                if codes[j] in in_batch or len(current) == batch_size:
                    still.append(j)
                else:
                    current.append(j)
                    in_batch.add(codes[j])
            deferred = still
            if len(current) == batch_size:
                batches.append(current)
                current, in_batch = [], set()
    while deferred:  # left-over duplicates: more batches, each duplicate-free
        still = []
        for j in deferred:
            if codes[j] in in_batch or len(current) == batch_size:
                still.append(j)
            else:
                current.append(j)
                in_batch.add(codes[j])
        if len(still) == len(deferred):  # nothing fitted: close the batch
            batches.append(current)
            current, in_batch = [], set()
        elif len(current) == batch_size:
            batches.append(current)
            current, in_batch = [], set()
        deferred = still
    if current:
        batches.append(current)
    if drop_last:
        full = [b for b in batches if len(b) == batch_size]
        if batches and not full:  # an epoch of zero steps would otherwise pass silently
            raise ValueError(
                f"no full batch of {batch_size} sites with distinct molecules: the data has "
                f"{int(codes.max()) + 1} molecules in {len(codes)} sites; lower the batch size"
            )
        batches = full
    return [[int(i) for i in b] for b in batches]


class UniqueMoleculeBatchSampler(torch.utils.data.Sampler):
    """Batch sampler guaranteeing distinct molecules within each batch.

    Args:
        molecule_keys: the molecule key of every dataset row (e.g. ``ds["inchikey"]``); distinct keys per row
            (e.g. ``range(n)``) give plain shuffled batches.
        batch_size: sites per batch (under ``accelerate`` with ``split_batches=True``: the global batch).
        shuffle: reshuffle every epoch (seeded by ``(seed, epoch)``); ``False`` keeps row order.
        seed: base seed, identical on all processes.
        drop_last: drop incomplete batches (default ``True`` when shuffling).
        num_replicas, rank: shard batches over processes without ``accelerate`` (process ``rank`` takes
            batches ``rank, rank + num_replicas, ...``; all get the same number of batches).
        augmentation_seeds: yield ``(row, seed)`` keys: one seed per row, drawn from ``(seed, epoch)``, for the
            per-site augmentation.
        num_slices, slice_index: cut every batch into ``num_slices`` equal consecutive slices and yield slice
            ``slice_index`` of each: a process's share of the global batch, cut here (by sites; by bags in
            :class:`~cloome_hf.data.bags.BagBatchSampler`) where the collated tensors cannot be cut by rows, as
            for a graph batch (atoms) or a batch of bags (sites). ``batch_size`` must be a multiple of
            ``num_slices``, and incomplete batches dropped.

    With ``accelerate``, leave ``num_replicas=1``: ``Accelerator.prepare(dataloader)`` shards the batches, and
    ``prepared_loader.set_epoch(epoch)`` selects the epoch (also for ``skip_first_batches``).
    """

    def __init__(self, molecule_keys: Sequence[Any], batch_size: int, shuffle: bool = True, seed: int = 0,
                 drop_last: bool | None = None, num_replicas: int = 1, rank: int = 0,
                 augmentation_seeds: bool = False, num_slices: int = 1, slice_index: int = 0):
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in [0, num_replicas={num_replicas})")
        if not 0 <= slice_index < num_slices:
            raise ValueError(f"slice_index {slice_index} is not in [0, num_slices={num_slices})")
        self.keys = np.asarray(list(molecule_keys), dtype=object)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.drop_last = shuffle if drop_last is None else bool(drop_last)
        self.num_replicas, self.rank = int(num_replicas), int(rank)
        self.augmentation_seeds = bool(augmentation_seeds)
        self.num_slices, self.slice_index = int(num_slices), int(slice_index)
        if self.num_slices > 1 and (self.batch_size % self.num_slices or not self.drop_last):
            raise ValueError(f"a batch of {self.batch_size} cannot be cut into {self.num_slices} equal slices"
                             + ("" if self.drop_last else " unless incomplete batches are dropped (drop_last)")
                             + f"; use a multiple of {self.num_slices}")
        self.epoch = 0
        self.sampler = _EpochHandle(self)
        self._cache: tuple[int, list[list]] | None = None
        if shuffle:
            self._all_batches()  # fails now, not at the first step, if no batch can hold distinct molecules

    @property
    def num_sites(self) -> int:
        return len(self.keys)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _all_batches(self) -> list[list]:
        if self._cache is None or self._cache[0] != self.epoch:
            rng = np.random.default_rng([self.seed, self.epoch]) if self.shuffle else None
            # drawn first, so a row's seed depends on (seed, epoch, row) only, not on the batch plan
            seeds = rng.integers(0, SEED_RANGE, size=len(self.keys)) if self.augmentation_seeds and rng else None
            batches = unique_molecule_batches(self.keys, self.batch_size, rng, self.drop_last)
            if seeds is not None:
                batches = [[(row, int(seeds[row])) for row in batch] for batch in batches]
            self._cache = (self.epoch, batches)
        return self._cache[1]

    def __iter__(self) -> Iterator[list]:
        batches = self._all_batches()[self.rank::self.num_replicas][:len(self)]
        yield from (batches if self.num_slices == 1 else map(self._slice, batches))

    def _slice(self, batch: list) -> list:
        """This slice of a full batch (:attr:`slice_index` of :attr:`num_slices`)."""
        size = len(batch) // self.num_slices
        return batch[self.slice_index * size:(self.slice_index + 1) * size]

    def __len__(self) -> int:
        n = len(self._all_batches())
        return n // self.num_replicas if self.num_replicas > 1 else n


class StreamingUniqueBatches(torch.utils.data.IterableDataset):
    """Batches (dicts of lists) with distinct molecules from a (shuffled) ``datasets.IterableDataset``.
    A site whose molecule is already in the open batch waits (up to ``batch_size`` of them) for the next."""

    def __init__(self, ds, batch_size: int, drop_last: bool, unique: bool):
        self.ds, self.batch_size, self.drop_last, self.unique = ds, batch_size, drop_last, unique

    def set_epoch(self, epoch: int) -> None:
        self.ds.set_epoch(epoch)

    @staticmethod
    def _columns(rows: list[dict]) -> dict[str, list]:
        return {c: [r[c] for r in rows] for c in rows[0]}

    def __iter__(self):
        current, in_batch, waiting = [], set(), []
        for row in self.ds:
            if self.unique and row["inchikey"] in in_batch:
                waiting.append(row)
                if len(waiting) > self.batch_size:
                    warnings.warn("streaming batches: a molecule dominates the shuffle buffer; "
                                  "dropping one of its sites")
                    waiting.pop(0)
                continue
            current.append(row)
            in_batch.add(row["inchikey"])
            if len(current) == self.batch_size:
                yield self._columns(current)
                current, in_batch, rest = [], set(), []
                for w in waiting:
                    if w["inchikey"] in in_batch:
                        rest.append(w)
                    else:
                        current.append(w)
                        in_batch.add(w["inchikey"])
                waiting = rest
        while waiting:  # end of stream: the sites still waiting go into further duplicate-free batches
            rest = []
            for w in waiting:
                if w["inchikey"] in in_batch or len(current) == self.batch_size:
                    rest.append(w)
                else:
                    current.append(w)
                    in_batch.add(w["inchikey"])
            if len(current) == self.batch_size or rest:
                if len(current) == self.batch_size or not self.drop_last:
                    yield self._columns(current)
                current, in_batch = [], set()
            waiting = rest
        if current and not self.drop_last:
            yield self._columns(current)


__all__ = ["SEED_RANGE", "UniqueMoleculeBatchSampler", "unique_molecule_batches"]
