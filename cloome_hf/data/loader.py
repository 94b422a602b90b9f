"""The one input path of cloome-hf: a Cell Painting ``datasets`` object -> torch batches for CLOOME.

Training, validation, evaluation, ``cloome embed`` and the pipelines all read sites through
:func:`build_dataloader`:

* :class:`UniqueMoleculeBatchSampler` - global batches that are a pure function of ``(seed, epoch)``, never hold
  one molecule twice (a duplicate is a false negative of the contrastive loss) and, when training, carry one
  augmentation seed per site, so a site's pixels depend only on ``(seed, epoch, site)``: not on the number of
  processes (``accelerate`` with ``split_batches=True`` cuts each global batch into per-process slices) or
  workers, and ``accelerator.skip_first_batches`` resumes mid-epoch exactly.
* :class:`CellPaintingTorchDataset` - reads only the columns a batch needs, a batch at a time, as Arrow slices.
* :class:`CellPaintingCollator` - uint8 sites in the dataset's recorded channel order -> the model's channel order
  -> training augmentation (:class:`~cloome_hf.transforms.CloomeTrainTransform`) or the inference processor
  (:class:`~cloome_hf.image_processing_cloome.CloomeImageProcessor`: centre crop + normalisation); fingerprints
  looked up per batch from a :class:`~cloome_hf.data.molecules.FingerprintTable` of the unique molecules, so
  memory grows with molecules x bits, not with sites x bits; the doses (``concentrations``, uM) when the dataset
  has a ``concentration`` column.

Worker processes (``num_workers > 0``) are persistent and prefetch :data:`PREFETCH_BATCHES` batches each;
batches are pinned when CUDA is present. What a worker hands over (the augmented ``pixel_values``, or the uint8
``images`` for augmentation on the accelerator) is written straight into shared memory, so it crosses to the
main process without a copy, and into a buffer the worker reuses once the consumer has released the batch
(:func:`~cloome_hf.data.buffers.release_batch`, which the training step calls); the sites are decoded into one
reused buffer per worker, so a worker's memory does not grow over an epoch. Without workers the main process
reuses the batch tensors that were released the same way (a batch dropped unreleased is simply freed). The
float32 training path reads each site's box straight from the batch's Arrow buffers (no uint8 batch is assembled
first) and writes it once, oriented and normalised, into the batch tensor.

Large batch tensors fault in 4 kB pages; with ``THP_MEM_ALLOC_ENABLE=1`` in the environment *before torch is
imported*, torch backs its large CPU tensors with transparent huge pages, which speeds up augmentation in the main
process (every ``cloome`` command sets it before torch is imported: :mod:`cloome_hf.runtime`). Shared memory is
not affected by it.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import DataLoader

from ..channels import CHANNELS, channel_permutation
from .buffers import ProcessBuffers, WorkerBuffers, fresh_tensor, release_batch
from .molecules import FingerprintTable
from .sampling import UniqueMoleculeBatchSampler, StreamingUniqueBatches, unique_molecule_batches
from .schema import CONCENTRATION, channels_of, decode_image

#: ``"none"``: no images at all (training on cached tower features reads only the keys, molecules and doses).
OUTPUTS = ("pixel_values", "uint8", "none")
#: Batches each worker process prepares ahead (``DataLoader(prefetch_factor=...)``).
PREFETCH_BATCHES = 2


def column_values(ds, name: str) -> list:
    """Every value of column ``name`` of a ``datasets.Dataset`` (in row order, its indices mapping applied), read
    as one Arrow column: iterating ``ds[name]`` would format each row on its own (about 10x slower)."""
    return ds.select_columns([name]).with_format("arrow")[:].column(name).to_pylist()


def _in_worker() -> bool:
    return torch.utils.data.get_worker_info() is not None


class CellPaintingTorchDataset(torch.utils.data.Dataset):
    """Map-style view of a ``datasets.Dataset`` that reads only the columns a batch needs, a batch at a time.

    Keys are rows, ``(row, augmentation_seed)`` pairs from :class:`UniqueMoleculeBatchSampler`, or
    ``(row, augmentation_seed or None, bag)`` triples from :class:`~cloome_hf.data.bags.BagBatchSampler`.
    ``images=False`` reads no image column.
    """

    columns = ("sample_key", "inchikey", "image", "image_shape")

    def __init__(self, ds, rows: Sequence[int] | None = None, images: bool = True):
        # Arrow format: a batch is a zero-copy slice of the memory-mapped table, images never become Python bytes
        self.ds = ds.select_columns(batch_columns(ds, images)).with_format("arrow")
        self.rows = None if rows is None else np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.ds) if self.rows is None else len(self.rows)

    def __getitems__(self, keys: Sequence) -> tuple:
        """``(table of the rows, their augmentation seeds or None)``, and their bag positions for bag keys."""
        keys = list(keys)
        seeds = bags = None
        if keys and isinstance(keys[0], (tuple, list)):
            if len(keys[0]) == 3:
                bags = [int(k[2]) for k in keys]
            seeds = None if keys[0][1] is None else [int(k[1]) for k in keys]
            keys = [int(k[0]) for k in keys]
        idx = keys if self.rows is None else self.rows[keys].tolist()
        return (self.ds[idx], seeds) if bags is None else (self.ds[idx], seeds, bags)

    def __getitem__(self, key):
        return self.__getitems__([key])


def batch_columns(ds, images: bool = True) -> list[str]:
    """The columns a batch reads: :attr:`CellPaintingTorchDataset.columns` (without the image ones unless
    ``images``), and ``concentration`` when ``ds`` has it."""
    names = ds.column_names or list((ds.features or {}).keys())
    columns = [c for c in CellPaintingTorchDataset.columns if images or c not in ("image", "image_shape")]
    return columns + ([CONCENTRATION] if CONCENTRATION in names else [])


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
    """Rows -> a batch of ``pixel_values`` (or uint8 ``images``), the molecule tower's inputs (``fingerprints``, or
    graph tensors, or token ids), ``sample_key``, ``inchikey``, and ``concentrations`` ((N,) float32 uM) when the
    rows have a ``concentration`` column.

    Args:
        fingerprints: a :class:`FingerprintTable` (featurised molecules joined by ``inchikey``) or ``None``.
        transform: training augmentation, called as ``transform(uint8 (N, C, H, W), seeds=...)``, plus ``out=``
            (a float32 batch in shared memory inside a worker) when it has ``output_shape(H, W)``, as
            :class:`~cloome_hf.transforms.CloomeTrainTransform` does; when ``None``, ``image_processor`` turns the
            sites into ``pixel_values`` (centre crop + normalisation, inference).
        image_processor: a :class:`~cloome_hf.image_processing_cloome.CloomeImageProcessor` (default: no crop,
            the published normalisation).
        channel_permutation: index of each output channel in the stored image (``None``: stored order).
        output: ``"pixel_values"``, or ``"uint8"`` for untransformed ``images`` (N, C, H, W) uint8 plus their
            ``seeds``: a quarter of the bytes between worker processes, for augmentation on the accelerator; or
            ``"none"``: no images (training on cached tower features).

    Rows with bag positions (:class:`~cloome_hf.data.bags.BagBatchSampler`) give a batch of bags: ``bag_sizes``
    (B,) and one ``fingerprints`` / ``concentrations`` / ``inchikey`` entry per bag, ``sample_key`` per site.
        return_loss: yield exactly the model's keyword arguments (``pixel_values``, ``fingerprints``,
            ``return_loss=True``), as ``transformers.Trainer`` calls ``model(**batch)``; no doses (the Trainer path
            trains models without dose conditioning).
        reuse_buffers: hand the augmented or uint8 sites over in buffers that are reused once the batch is
            released (in a worker: its shared-memory slots; in the main process: a free list of released
            tensors); the batch then carries its ``buffer_tokens`` for
            :func:`~cloome_hf.data.buffers.release_batch` (else: fresh memory for every batch).

    Raises ``ValueError`` naming the sample for an all-zero channel, sites of different shapes in a batch, or a
    molecule without a fingerprint: no blank image or wrong pair reaches the model silently.
    """

    def __init__(self, fingerprints: FingerprintTable | None = None, transform=None, image_processor=None,
                 channel_permutation: Sequence[int] | None = None, output: str = "pixel_values",
                 return_loss: bool = False, reuse_buffers: bool = False):
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        if return_loss and (fingerprints is None or output != "pixel_values"):
            raise ValueError("return_loss=True batches need fingerprints and output='pixel_values'")
        if return_loss and reuse_buffers:
            raise ValueError("return_loss=True batches carry no buffer tokens: reuse_buffers must be False")
        if transform is None and image_processor is None:
            from cloome_hf.image_processing_cloome import CloomeImageProcessor

            image_processor = CloomeImageProcessor(do_center_crop=False)
        self.fingerprints = fingerprints
        self.transform = transform
        self.image_processor = image_processor
        self.channel_permutation = None if channel_permutation is None else list(channel_permutation)
        self.output = output
        self.return_loss = bool(return_loss)
        self.reuse_buffers = bool(reuse_buffers)
        self._worker_buffers: WorkerBuffers | None = None  # made in each worker process on first use
        self._process_buffers: ProcessBuffers | None = None  # the main process's, without workers
        self._sites: torch.Tensor | None = None  # the decode buffer reused while the sites are not handed out

    def __getstate__(self):
        return {**self.__dict__, "_sites": None, "_worker_buffers": None, "_process_buffers": None}  # per process

    def _handover(self, shape: Sequence[int], dtype: torch.dtype, tokens: list) -> torch.Tensor:
        """A tensor the batch hands over (in a worker in shared memory): with ``reuse_buffers`` a reused one, its
        token appended to ``tokens``; else a fresh one."""
        if not self.reuse_buffers:
            return fresh_tensor(shape, dtype, shared=_in_worker())
        if not _in_worker():
            if self._process_buffers is None:
                self._process_buffers = ProcessBuffers()
            pool = self._process_buffers
        else:
            if self._worker_buffers is None or self._worker_buffers.pid != os.getpid():  # (a forked copy)
                self._worker_buffers = WorkerBuffers()
            pool = self._worker_buffers
        tensor, token = pool.take(shape, dtype)
        tokens.append(token)
        return tensor

    def _site_buffer(self, shape: tuple[int, ...], tokens: list) -> torch.Tensor:
        """Where a batch's uint8 sites are decoded: a handed-over tensor when the batch hands them out
        (``output="uint8"``), else one buffer reused across batches."""
        if self.output == "uint8":
            return self._handover(shape, torch.uint8, tokens)
        if self._sites is None or self._sites.numel() < np.prod(shape):
            self._sites = torch.empty(int(np.prod(shape)), dtype=torch.uint8)
        return self._sites[:int(np.prod(shape))].view(shape)

    def _decode(self, batch, tokens: list, in_place: bool = False) -> tuple:
        """``(sites, sample keys, inchikeys, seeds, doses, bags)``; the sites as one uint8 (N, C, H, W) tensor in
        the model's channel order, or with ``in_place`` as the stored (C, H, W) arrays, read-only views of the
        batch's buffers (no copy; :meth:`_sites_in_place`); ``None`` without images."""
        seeds = bags = None
        # (pyarrow.Table, seeds[, bags]) from CellPaintingTorchDataset.__getitems__ (a list once Trainer's column
        # filter has passed over it)
        if isinstance(batch, (tuple, list)) and len(batch) in (2, 3) and isinstance(batch[0], pa.Table):
            batch, seeds, *rest = batch
            bags = rest[0] if rest else None
        images = self.output != "none"
        if isinstance(batch, pa.Table):
            image_views = _binary_views(batch.column("image")) if images else None
            names = ("sample_key", "inchikey") + (("image_shape",) if images else ()) + (
                (CONCENTRATION,) if CONCENTRATION in batch.column_names else ())
            batch = {c: batch.column(c).to_pylist() for c in names}
        else:
            if not isinstance(batch, Mapping):  # list of rows (plain DataLoader without __getitems__)
                batch = {k: [row[k] for row in batch] for k in batch[0]}
            image_views = [np.frombuffer(d, dtype=np.uint8) for d in batch["image"]] if images else None
        keys = list(batch["sample_key"])
        rest = keys, list(batch["inchikey"]), seeds, batch.get(CONCENTRATION), bags
        if not images:
            return None, *rest
        shapes = {tuple(s) for s in batch["image_shape"]}
        if len(shapes) != 1:
            raise ValueError(f"sites of different shapes {sorted(shapes)} in one batch (samples {keys})")
        stored = next(iter(shapes))
        sites = [decode_image(view, stored) for view in image_views]
        if in_place:
            _check_blank(sites, keys, self.channel_permutation)
            return sites, *rest
        channels = len(self.channel_permutation) if self.channel_permutation is not None else stored[0]
        buffer = self._site_buffer((len(keys), channels) + tuple(stored[1:]), tokens)
        images = buffer.numpy()
        for i, site in enumerate(sites):
            images[i] = site if self.channel_permutation is None else site[self.channel_permutation]
        _check_blank(images, keys)
        return buffer, *rest

    def _sites_in_place(self) -> bool:
        """Whether the batch's sites go to the transform as views of the batch's buffers: the float32 path of
        :class:`~cloome_hf.transforms.CloomeTrainTransform` (not a subclass, whose ``forward`` may differ) reads
        its boxes from them, saving the copy of every site into a uint8 batch (about 0.4 ms of a 5 x 520 x 696
        site)."""
        from cloome_hf.transforms import CloomeTrainTransform

        return self.output == "pixel_values" and type(self.transform) is CloomeTrainTransform

    def _augment(self, images, seeds: list[int] | None, tokens: list) -> torch.Tensor:
        if isinstance(images, list):  # the stored sites, read in place
            channels = images[0].shape[0] if self.channel_permutation is None else len(self.channel_permutation)
            shape = (len(images), channels, *self.transform.output_shape(*images[0].shape[1:]))
            return self.transform.augment_sites(images, seeds=seeds, out=self._handover(shape, torch.float32, tokens),
                                                channels=self.channel_permutation)
        output_shape = getattr(self.transform, "output_shape", None)
        if output_shape is None:
            return self.transform(images, seeds=seeds)
        out = self._handover(images.shape[:2] + tuple(output_shape(*images.shape[2:])), torch.float32, tokens)
        return self.transform(images, seeds=seeds, out=out)

    def __call__(self, batch) -> dict[str, Any]:
        """``batch``: ``(pyarrow.Table, seeds)``, a ``pyarrow.Table``, a dict of columns, or a list of row dicts."""
        tokens: list = []  # of the reused buffers this batch takes
        try:
            return self._collate(batch, tokens)
        except BaseException:
            release_batch({"buffer_tokens": tokens})  # a batch that is not handed over frees what it took
            raise

    def _collate(self, batch, tokens: list) -> dict[str, Any]:
        images, keys, inchikeys, seeds, doses, bags = self._decode(batch, tokens, self._sites_in_place())
        out: dict[str, Any] = {}
        if bags is not None:  # one molecule (and dose) per bag: its first site's
            from .bags import bag_sizes_of

            sizes = bag_sizes_of(bags)
            firsts = np.cumsum([0] + sizes[:-1]).tolist()
            inchikeys = [inchikeys[i] for i in firsts]
            doses = None if doses is None else [doses[i] for i in firsts]
            out["bag_sizes"] = torch.tensor(sizes, dtype=torch.long)
        if self.output == "none":
            pass
        elif self.output == "uint8":
            out["images"] = images
            out["seeds"] = seeds
        elif self.transform is not None:
            out["pixel_values"] = self._augment(images, seeds, tokens)
        else:
            out["pixel_values"] = torch.from_numpy(self.image_processor(images.numpy())["pixel_values"])
        molecules = {}
        if self.fingerprints is not None:
            molecules = {k: torch.from_numpy(v) for k, v in self.fingerprints.model_inputs(inchikeys).items()}
            out.update(molecules)
        if self.return_loss:
            return {"pixel_values": out["pixel_values"], **molecules, "return_loss": True}
        if doses is not None:
            from cloome_hf.featurization_cloome import check_concentrations

            out["concentrations"] = torch.from_numpy(check_concentrations(
                doses, where="concentration column", labels=inchikeys if bags is not None else keys
            ).astype(np.float32))
        out["sample_key"], out["inchikey"] = keys, inchikeys
        if tokens:
            out["buffer_tokens"] = tokens
        return out


#: The blank check first takes the maximum of every ``BLANK_PROBE_ROWS``-th row of each channel; only a channel
#: whose probed rows are all zero is read whole. A 5 x 520 x 696 site's full maxima cost about 0.14 ms, as much as
#: 6 % of its float32 augmentation; the probe reads a sixteenth of it and decides alone for any channel with
#: signal, so the result is the full check's.
BLANK_PROBE_ROWS = 16


def _check_blank(sites, keys: Sequence[str], channels: Sequence[int] | None = None) -> None:
    """``ValueError`` naming the first sample (and its first channel) that has an all-zero channel.

    ``sites``: (C, H, W) uint8 arrays (or an (N, C, H, W) batch); ``channels``: the site's channel of each output
    channel (default: all, in order): only those are checked, and an error names the output channel."""
    for key, site in zip(keys, sites):
        probe = site[:, ::BLANK_PROBE_ROWS].max(axis=(1, 2))
        if probe.all():
            continue
        for out_c, c in enumerate(range(len(site)) if channels is None else channels):
            if probe[c] == 0 and site[c].max() == 0:
                raise ValueError(f"sample {key!r}: channel {out_c} is all zero")


class CellPaintingDataLoader(DataLoader):
    """``DataLoader`` with ``set_epoch`` (reshuffles the unique-molecule sampler / the stream)."""

    def set_epoch(self, epoch: int) -> None:
        for obj in (self.batch_sampler, self.dataset):
            if obj is not None and hasattr(obj, "set_epoch"):
                obj.set_epoch(epoch)


def build_dataloader(
    ds,
    fingerprints: FingerprintTable | Any | None = None,
    batch_size: int = 32,
    train: bool = True,
    transform=None,
    image_processor=None,
    channel_order: Sequence[str] | None = None,
    num_workers: int = 0,
    unique_molecules: bool | None = None,
    seed: int = 0,
    drop_last: bool | None = None,
    num_replicas: int = 1,
    rank: int = 0,
    shuffle_buffer: int = 1000,
    output: str = "pixel_values",
    return_loss: bool = False,
    bag_by: str | None = None,
    max_bag_sites: int | None = None,
    num_slices: int = 1,
    slice_index: int = 0,
    **dataloader_kwargs,
) -> CellPaintingDataLoader:
    """The ``DataLoader`` of ``{"pixel_values", "fingerprints", "sample_key", "inchikey"}`` batches.

    Args:
        ds: a ``datasets.Dataset`` or ``IterableDataset`` in the common schema; its recorded channel order
            (:func:`~cloome_hf.data.schema.channels_of`) is mapped to ``channel_order``.
        fingerprints: a :class:`FingerprintTable`, a featuriser (``MoleculeFeaturizer``: the table of the unique
            molecules is built once here, invalid molecules' sites are left out with a warning), or ``None``
            (images only).
        batch_size: sites per batch (per process, or the global batch under ``accelerate`` with
            ``split_batches=True``).
        train: shuffled unique-molecule batches with per-site augmentation seeds (``transform``) vs. row order
            with the inference processor.
        transform: training augmentation (default: flips and 90-degree turns of the whole site, the published
            normalisation); only used when ``train``.
        image_processor: inference processor (default: no crop, the published normalisation); only used when
            not ``train``.
        channel_order: channels of the batches (default: ``image_processor``'s, else the canonical order);
            ``ValueError`` naming a channel the dataset lacks.
        unique_molecules: never put one molecule twice in a batch (default: when ``train``).
        seed: shuffling and augmentation seed (same on every process); call ``loader.set_epoch(epoch)``.
        num_replicas, rank: shard without ``accelerate`` (with it, keep 1/0 and let ``prepare`` shard a map-style
            loader; for a streaming loader pass ``accelerator.num_processes`` / ``process_index`` here).
        shuffle_buffer: shuffle buffer of streaming datasets.
        output: ``"pixel_values"`` or ``"uint8"`` (``images`` and ``seeds``; augment on the accelerator).
        return_loss: batches of exactly the model's keyword arguments plus ``return_loss=True`` (Trainer).
        bag_by: ``"well"`` or ``"molecule_dose"``: batches of ``batch_size`` bags of sites (unique molecules per
            bag; :mod:`cloome_hf.data.bags`), with ``bag_sizes``; ``None`` / ``"site"``: sites. Map-style only.
        max_bag_sites: at most this many sites per bag and epoch (``None``: all).
        num_slices, slice_index: batches of slice ``slice_index`` of each of ``batch_size`` (global) sites or bags
            cut into ``num_slices``: a process's share, cut by the sampler by molecules or whole bags, for batches
            whose tensors accelerate cannot cut by rows (graph batches, bags); then leave the loader unsharded
            (:func:`cloome_hf.train.data.training_loader`). Map-style only.
        dataloader_kwargs: passed to the ``DataLoader``; by default workers are persistent (except for a streaming
            dataset, whose epoch must reach them), prefetch :data:`PREFETCH_BATCHES` batches each, and batches are
            pinned when CUDA is present.
    """
    import datasets

    from cloome_hf.transforms import CloomeTrainTransform

    if train and transform is None:
        transform = CloomeTrainTransform(crop_size=None, random_resized_crop_scale=None, flips=True, rot90=True)
    if channel_order is None:
        channel_order = image_processor.channel_order if image_processor is not None else CHANNELS
    stored = channels_of(ds)
    permutation = channel_permutation(stored, channel_order)
    if permutation == list(range(len(stored))):
        permutation = None
    unique_molecules = train if unique_molecules is None else unique_molecules
    streaming = isinstance(ds, datasets.IterableDataset)
    fingerprints = _fingerprint_table(ds, fingerprints, streaming)
    collator = CellPaintingCollator(fingerprints, transform if train else None, image_processor, permutation,
                                    output, return_loss, reuse_buffers=not return_loss)
    drop_last = train if drop_last is None else drop_last
    dataloader_kwargs = _loader_options(num_workers, streaming, dataloader_kwargs)
    bagged = bag_by not in (None, "site")
    if streaming:
        if bagged:
            raise ValueError(f"bag_by={bag_by!r} needs a map-style dataset (the bags are made from all its sites); "
                             "this one is streamed")
        if num_slices > 1:
            raise ValueError(f"num_slices={num_slices} cuts the batches of a map-style dataset; this one is streamed")
        return _streaming_loader(ds, fingerprints, collator, batch_size, train, drop_last, unique_molecules, seed,
                                 num_replicas, rank, shuffle_buffer, num_workers, dataloader_kwargs)
    keys = column_values(ds, "inchikey")
    rows = None
    if fingerprints is not None:
        ok = np.fromiter((k in fingerprints for k in keys), dtype=bool, count=len(keys))
        if not ok.all():
            rows = np.flatnonzero(ok)
            keys = [keys[i] for i in rows]
    data = CellPaintingTorchDataset(ds, rows, images=output != "none")
    if bagged:
        from .bags import BagBatchSampler, site_bags

        bags, molecules = site_bags(ds, bag_by, rows)
        sampler = BagBatchSampler(bags, molecules if unique_molecules else range(len(bags)), batch_size,
                                  shuffle=train, seed=seed, drop_last=drop_last, num_replicas=num_replicas,
                                  rank=rank, augmentation_seeds=train, max_sites=max_bag_sites,
                                  num_slices=num_slices, slice_index=slice_index)
    elif train or unique_molecules:
        sampler = UniqueMoleculeBatchSampler(keys if unique_molecules else range(len(keys)), batch_size,
                                             shuffle=train, seed=seed, drop_last=drop_last,
                                             num_replicas=num_replicas, rank=rank, augmentation_seeds=train,
                                             num_slices=num_slices, slice_index=slice_index)
    else:
        if num_slices > 1:
            raise ValueError(f"num_slices={num_slices} cuts training batches; evaluation batches are not cut")
        base = torch.utils.data.SequentialSampler(data)
        if num_replicas > 1:
            base = torch.utils.data.DistributedSampler(data, num_replicas, rank, shuffle=False, seed=seed)
        sampler = torch.utils.data.BatchSampler(base, batch_size, drop_last)
    return CellPaintingDataLoader(data, batch_sampler=sampler, collate_fn=collator, num_workers=num_workers,
                                  **dataloader_kwargs)


def _loader_options(num_workers: int, streaming: bool, given: Mapping[str, Any]) -> dict[str, Any]:
    """``DataLoader`` options: the caller's, else persistent prefetching workers and pinned batches on CUDA."""
    options = {"pin_memory": torch.cuda.is_available()}
    if num_workers > 0:
        # a streaming dataset's epoch (its shuffle) is set on the copy each worker gets when it starts
        options.update(persistent_workers=not streaming, prefetch_factor=PREFETCH_BATCHES)
    return {**options, **given}


def trainer_inputs(ds, fingerprints, transform=None, channel_order: Sequence[str] | None = None):
    """``(train_dataset, data_collator)`` for ``transformers.Trainer``: batches of exactly ``pixel_values``,
    ``fingerprints`` and ``return_loss=True``, so ``Trainer`` trains :class:`~cloome_hf.CloomeModel` on its loss.

    ``fingerprints``: a :class:`FingerprintTable` or a featuriser; ``transform``: the training augmentation
    (default: flips and 90-degree turns of the whole site). ``Trainer``'s own random sampler does not keep
    molecules unique within a batch, and its augmentation draws are not seeded per site; ``cloome train`` (the
    same data path with :class:`~cloome_hf.data.sampling.UniqueMoleculeBatchSampler`) does both.
    """
    from cloome_hf.transforms import CloomeTrainTransform

    table = _fingerprint_table(ds, fingerprints, streaming=False)
    keys = column_values(ds, "inchikey")
    rows = np.flatnonzero(np.fromiter((k in table for k in keys), dtype=bool, count=len(keys)))
    permutation = channel_permutation(channels_of(ds), channel_order or CHANNELS)
    transform = transform or CloomeTrainTransform(crop_size=None, random_resized_crop_scale=None)
    collator = CellPaintingCollator(table, transform, channel_permutation=permutation, return_loss=True)
    return CellPaintingTorchDataset(ds, rows if len(rows) != len(keys) else None), collator


def _fingerprint_table(ds, fingerprints, streaming: bool) -> FingerprintTable | None:
    """A :class:`FingerprintTable` of ``ds``'s unique molecules, built once from a featuriser if needed."""
    if fingerprints is None or isinstance(fingerprints, FingerprintTable):
        return fingerprints
    meta = ds.select_columns(["inchikey", "smiles"])
    pairs = [(r["inchikey"], r["smiles"]) for r in meta] if streaming else list(zip(column_values(meta, "inchikey"),
                                                                                    column_values(meta, "smiles")))
    table = FingerprintTable.from_molecules([p[0] for p in pairs], [p[1] for p in pairs], fingerprints,
                                            errors="skip")
    if table.invalid:
        warnings.warn(f"{len(table.invalid)} molecules have invalid SMILES and are left out, e.g. "
                      f"{next(iter(table.invalid.items()))}")
    return table


def _streaming_loader(ds, fingerprints, collator, batch_size, train, drop_last, unique_molecules, seed,
                      num_replicas, rank, shuffle_buffer, num_workers, dataloader_kwargs):
    import datasets

    if train:
        ds = ds.shuffle(seed=seed, buffer_size=shuffle_buffer)
    if num_replicas > 1:
        ds = datasets.distributed.split_dataset_by_node(ds, rank=rank, world_size=num_replicas)
    if fingerprints is not None and fingerprints.invalid:
        ds = ds.filter(lambda k: k in fingerprints, input_columns=["inchikey"])
    batches = StreamingUniqueBatches(ds.select_columns(batch_columns(ds)), batch_size, drop_last, unique_molecules)
    return CellPaintingDataLoader(batches, batch_size=None, collate_fn=collator, num_workers=num_workers,
                                  **dataloader_kwargs)


__all__ = [
    "PREFETCH_BATCHES", "CellPaintingCollator", "CellPaintingDataLoader", "CellPaintingTorchDataset",
    "UniqueMoleculeBatchSampler",
    "build_dataloader", "column_values", "release_batch", "trainer_inputs", "unique_molecule_batches",
]
