"""From a Cell Painting ``datasets`` object to batches of ``pixel_values`` and ``fingerprints`` for CLOOME.

* :class:`UniqueMoleculeBatchSampler` - no molecule twice in a batch (a duplicate is a false negative of the
  contrastive loss), seeded per epoch (``set_epoch``), sharded over processes by batches, and compatible with
  ``accelerate`` (``Accelerator.prepare`` shards its batches; ``set_epoch`` reaches it).
* :class:`CellPaintingCollator` - uint8 sites -> ``CloomeTrainTransform`` -> ``pixel_values``; fingerprints
  looked up once-computed by molecule key from a :class:`~cloome_hf.data.molecules.FingerprintTable`.
* :func:`build_dataloader` - the two together (map-style ``Dataset`` or streaming ``IterableDataset``).
"""

from __future__ import annotations

import warnings
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import DataLoader

from .molecules import FingerprintTable
from .schema import decode_image


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
        molecule_keys: the molecule key of every dataset row (e.g. ``ds["inchikey"]``).
        batch_size: sites per batch (per process).
        shuffle: reshuffle every epoch (seeded by ``(seed, epoch)``); ``False`` keeps row order.
        seed: base seed, identical on all processes.
        drop_last: drop incomplete batches (default ``True`` when shuffling).
        num_replicas, rank: shard batches over processes without ``accelerate`` (process ``rank`` takes
            batches ``rank, rank + num_replicas, ...``; all get the same number of batches).

    With ``accelerate``, leave ``num_replicas=1``: ``Accelerator.prepare(dataloader)`` shards the batches.
    """

    def __init__(self, molecule_keys: Sequence[Any], batch_size: int, shuffle: bool = True, seed: int = 0,
                 drop_last: bool | None = None, num_replicas: int = 1, rank: int = 0):
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in [0, num_replicas={num_replicas})")
        self.keys = np.asarray(list(molecule_keys), dtype=object)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.drop_last = shuffle if drop_last is None else bool(drop_last)
        self.num_replicas, self.rank = int(num_replicas), int(rank)
        self.epoch = 0
        self.sampler = _EpochHandle(self)
        self._cache: tuple[int, list[list[int]]] | None = None

    @property
    def num_sites(self) -> int:
        return len(self.keys)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _all_batches(self) -> list[list[int]]:
        if self._cache is None or self._cache[0] != self.epoch:
            rng = np.random.default_rng([self.seed, self.epoch]) if self.shuffle else None
            self._cache = (self.epoch, unique_molecule_batches(self.keys, self.batch_size, rng, self.drop_last))
        return self._cache[1]

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._all_batches()
        per_rank = len(batches) // self.num_replicas if self.num_replicas > 1 else len(batches)
        yield from batches[self.rank::self.num_replicas][:per_rank]

    def __len__(self) -> int:
        n = len(self._all_batches())
        return n // self.num_replicas if self.num_replicas > 1 else n


class CellPaintingTorchDataset(torch.utils.data.Dataset):
    """Map-style view of a ``datasets.Dataset`` that reads only the columns a batch needs, a batch at a time."""

    columns = ("sample_key", "inchikey", "image", "image_shape")

    def __init__(self, ds, rows: Sequence[int] | None = None):
        # Arrow format: a batch is a zero-copy slice of the memory-mapped table, images never become Python bytes
        self.ds = ds.select_columns(list(self.columns)).with_format("arrow")
        self.rows = None if rows is None else np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.ds) if self.rows is None else len(self.rows)

    def __getitems__(self, indices: Sequence[int]):
        """A ``pyarrow.Table`` with the rows ``indices``."""
        idx = list(indices) if self.rows is None else self.rows[list(indices)].tolist()
        return self.ds[idx]

    def __getitem__(self, i: int):
        return self.__getitems__([i])


def _binary_views(column: pa.ChunkedArray) -> list[np.ndarray]:
    """Zero-copy uint8 views of each value of a (large_)binary Arrow column."""
    views = []
    for chunk in column.chunks:
        offset_type = np.int64 if pa.types.is_large_binary(chunk.type) else np.int32
        _, offsets_buf, data_buf = chunk.buffers()
        offsets = np.frombuffer(offsets_buf, dtype=offset_type)[chunk.offset: chunk.offset + len(chunk) + 1]
        data = np.frombuffer(data_buf, dtype=np.uint8)
        views += [data[offsets[j]: offsets[j + 1]] for j in range(len(chunk))]
    if column.null_count:
        raise ValueError("image column has missing values")
    return views


class CellPaintingCollator:
    """Rows -> ``{"pixel_values": (N, C, H', W') float32, "fingerprints": (N, F) float32, "sample_key", "inchikey"}``.

    Args:
        fingerprints: a :class:`FingerprintTable` (fingerprints joined by ``inchikey``) or ``None``.
        transform: a :class:`cloome_hf.transforms.CloomeTrainTransform` (its train/eval mode decides
            augmentation); default: no crop, no augmentation, the published normalisation.
        output: ``"pixel_values"``, or ``"uint8"`` to return ``images`` (N, C, H, W) uint8 untransformed: a
            quarter of the bytes between worker processes, for applying the transform on the accelerator
            (``transform(batch["images"].to(device))``).

    Raises ``ValueError`` naming the sample for an all-zero channel, sites of different shapes in a batch, or a
    molecule without a fingerprint: no blank image or wrong pair reaches the model silently.
    """

    def __init__(self, fingerprints: FingerprintTable | None = None, transform=None, output: str = "pixel_values"):
        if output not in ("pixel_values", "uint8"):
            raise ValueError(f"output must be 'pixel_values' or 'uint8', got {output!r}")
        self.output = output
        if transform is None:
            from cloome_hf.transforms import CloomeTrainTransform

            transform = CloomeTrainTransform(crop_size=None, random_resized_crop_scale=None, flips=False,
                                             rot90=False).eval()
        self.fingerprints = fingerprints
        self.transform = transform
        self._worker_generator: tuple[int, torch.Generator] | None = None

    def _generator(self) -> torch.Generator | None:
        """In a DataLoader worker: a generator seeded by the worker's seed (copies of the transform's own
        generator would otherwise repeat the same augmentations in every worker)."""
        info = torch.utils.data.get_worker_info()
        if info is None:
            return None
        if self._worker_generator is None or self._worker_generator[0] != info.seed:
            self._worker_generator = (info.seed, torch.Generator().manual_seed(info.seed))
        return self._worker_generator[1]

    def __call__(self, batch) -> dict[str, Any]:
        """``batch``: a ``pyarrow.Table``, a dict of columns, or a list of row dicts."""
        if isinstance(batch, pa.Table):
            image_views = _binary_views(batch.column("image"))
            batch = {c: batch.column(c).to_pylist() for c in ("sample_key", "inchikey", "image_shape")}
        else:
            if not isinstance(batch, Mapping):  # list of rows (plain DataLoader without __getitems__)
                batch = {k: [row[k] for row in batch] for k in batch[0]}
            image_views = [np.frombuffer(d, dtype=np.uint8) for d in batch["image"]]
        keys = list(batch["sample_key"])
        shapes = {tuple(s) for s in batch["image_shape"]}
        if len(shapes) != 1:
            raise ValueError(f"sites of different shapes {sorted(shapes)} in one batch (samples {keys})")
        shape = (len(keys),) + next(iter(shapes))
        buffer = torch.empty(shape, dtype=torch.uint8)
        if torch.utils.data.get_worker_info() is not None:
            buffer.share_memory_()  # stack straight into shared memory: no extra copy to hand it to the main process
        images = buffer.numpy()
        for i, view in enumerate(image_views):
            images[i] = decode_image(view, shape[1:])
        blank = images.reshape(images.shape[0], images.shape[1], -1).max(-1) == 0
        if blank.any():
            n, c = np.argwhere(blank)[0]
            raise ValueError(f"sample {keys[n]!r}: channel {c} is all zero")
        out = {"sample_key": keys, "inchikey": list(batch["inchikey"])}
        if self.output == "uint8":
            out["images"] = buffer
        else:
            out["pixel_values"] = self.transform(buffer, generator=self._generator())
        if self.fingerprints is not None:
            out["fingerprints"] = torch.from_numpy(self.fingerprints.lookup(out["inchikey"]))
        return out


class CellPaintingDataLoader(DataLoader):
    """``DataLoader`` with ``set_epoch`` (reshuffles the unique-molecule sampler / the stream)."""

    def set_epoch(self, epoch: int) -> None:
        for obj in (self.batch_sampler, getattr(self.batch_sampler, "sampler", None), self.dataset):
            if obj is not None and hasattr(obj, "set_epoch"):
                obj.set_epoch(epoch)


class _StreamingUniqueBatches(torch.utils.data.IterableDataset):
    """Batches (dicts of lists) with distinct molecules from a (shuffled) ``datasets.IterableDataset``.
    A site whose molecule is already in the open batch waits (up to ``batch_size`` of them) for the next."""

    def __init__(self, ds, batch_size: int, drop_last: bool, unique: bool):
        self.ds, self.batch_size, self.drop_last, self.unique = ds, batch_size, drop_last, unique

    def set_epoch(self, epoch: int) -> None:
        self.ds.set_epoch(epoch)

    def __iter__(self):
        cols = CellPaintingTorchDataset.columns
        current, in_batch, waiting = [], set(), []

        def flush():
            return {c: [r[c] for r in current] for c in cols}

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
                yield flush()
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
                    yield flush()
                current, in_batch = [], set()
            waiting = rest
        if current and not self.drop_last:
            yield flush()


def build_dataloader(
    ds,
    fingerprints: FingerprintTable | Any | None = None,
    batch_size: int = 32,
    train: bool = True,
    transform=None,
    num_workers: int = 0,
    unique_molecules: bool = True,
    seed: int = 0,
    drop_last: bool | None = None,
    num_replicas: int = 1,
    rank: int = 0,
    shuffle_buffer: int = 1000,
    output: str = "pixel_values",
    **dataloader_kwargs,
) -> CellPaintingDataLoader:
    """A ``DataLoader`` of ``{"pixel_values", "fingerprints", "sample_key", "inchikey"}`` batches.

    Args:
        ds: a ``datasets.Dataset`` or ``IterableDataset`` in the common schema.
        fingerprints: a :class:`FingerprintTable`, a featuriser (``MoleculeFeaturizer``: the table is built
            once here, invalid molecules' sites are left out with a warning), or ``None`` (images only).
        batch_size: sites per batch per process.
        train: shuffle + augment (``transform`` in train mode) vs. fixed order + eval-mode transform.
        transform: a ``CloomeTrainTransform`` (its mode is set from ``train``); default: no crop, flips and
            90-degree rotations when training, the published normalisation.
        unique_molecules: never put one molecule twice in a batch.
        seed: shuffling seed (same on every process); call ``loader.set_epoch(epoch)`` each epoch.
        num_replicas, rank: shard without ``accelerate`` (with it, keep 1/0 and let ``prepare`` shard a map-style
            loader; for a streaming loader pass ``accelerator.num_processes`` / ``process_index`` here and do not
            ``prepare`` it).
        shuffle_buffer: shuffle buffer of streaming datasets.
        output: ``"pixel_values"`` (transformed in the loader) or ``"uint8"`` (``images``; apply ``transform``
            yourself, e.g. on the GPU).
    """
    import datasets

    from cloome_hf.transforms import CloomeTrainTransform

    if transform is None:
        transform = CloomeTrainTransform(crop_size=None, random_resized_crop_scale=None, flips=train, rot90=train)
    transform.train(train)
    streaming = isinstance(ds, datasets.IterableDataset)
    if fingerprints is not None and not isinstance(fingerprints, FingerprintTable):
        meta = ds.select_columns(["inchikey", "smiles"])
        pairs = [(r["inchikey"], r["smiles"]) for r in meta] if streaming else list(zip(meta["inchikey"],
                                                                                        meta["smiles"]))
        fingerprints = FingerprintTable.from_molecules([p[0] for p in pairs], [p[1] for p in pairs], fingerprints,
                                                       errors="skip")
        if fingerprints.invalid:
            warnings.warn(f"{len(fingerprints.invalid)} molecules have invalid SMILES and are left out, e.g. "
                          f"{next(iter(fingerprints.invalid.items()))}")
    collator = CellPaintingCollator(fingerprints, transform, output)
    drop_last = train if drop_last is None else drop_last
    if streaming:
        if train:
            ds = ds.shuffle(seed=seed, buffer_size=shuffle_buffer)
        if num_replicas > 1:
            ds = datasets.distributed.split_dataset_by_node(ds, rank=rank, world_size=num_replicas)
        if fingerprints is not None and fingerprints.invalid:
            ds = ds.filter(lambda k: k in fingerprints, input_columns=["inchikey"])
        batches = _StreamingUniqueBatches(ds.select_columns(list(CellPaintingTorchDataset.columns)), batch_size,
                                          drop_last, unique_molecules)
        return CellPaintingDataLoader(batches, batch_size=None, collate_fn=collator, num_workers=num_workers,
                                      **dataloader_kwargs)
    keys = list(ds.select_columns(["inchikey"])["inchikey"])
    rows = None
    if fingerprints is not None:
        ok = np.fromiter((k in fingerprints for k in keys), dtype=bool, count=len(keys))
        if not ok.all():
            rows = np.flatnonzero(ok)
            keys = [keys[i] for i in rows]
    data = CellPaintingTorchDataset(ds, rows)
    if unique_molecules:
        sampler = UniqueMoleculeBatchSampler(keys, batch_size, shuffle=train, seed=seed, drop_last=drop_last,
                                             num_replicas=num_replicas, rank=rank)
    else:
        base = (torch.utils.data.RandomSampler(data, generator=torch.Generator().manual_seed(seed)) if train
                else torch.utils.data.SequentialSampler(data))
        if num_replicas > 1:
            base = torch.utils.data.DistributedSampler(data, num_replicas, rank, shuffle=train, seed=seed)
        sampler = torch.utils.data.BatchSampler(base, batch_size, drop_last)
    return CellPaintingDataLoader(data, batch_sampler=sampler, collate_fn=collator, num_workers=num_workers,
                                  generator=torch.Generator().manual_seed(seed), **dataloader_kwargs)
