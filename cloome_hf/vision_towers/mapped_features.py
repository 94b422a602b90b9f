"""A feature store's ``embedding`` column as memory-mapped Arrow, looked up by ``sample_key``.

The store's Parquet shards are converted once, batch by batch, into uncompressed Arrow IPC files beside them
(``<store>/arrow_cache/``, named after each shard's size and modification time, so a rewritten shard is converted
again). Those files are memory-mapped: a site's features are read from the mapped pages when a batch gathers them,
so nothing of the table is copied into the process's own memory except the rows of the batch, and a cache larger
than memory (1M sites x 1,536 fp16 values is 3.1 GB) streams. The kernel keeps the pages it has read as page
cache and drops them under memory pressure; the process's anonymous memory holds only the key index (the sorted
keys as fixed-width bytes and their row numbers: about 40 bytes per site).
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

CACHE_FOLDER = "arrow_cache"
_COLUMNS = ["sample_key", "embedding"]


def _arrow_copy(shard: str, cache_dir: str) -> str:
    """The Arrow IPC copy of ``shard``'s key and embedding columns, written (atomically) when missing."""
    stat = os.stat(shard)
    name = f"{os.path.splitext(os.path.basename(shard))[0]}-{stat.st_size}-{stat.st_mtime_ns}.arrow"
    path = os.path.join(cache_dir, name)
    if os.path.isfile(path):
        return path
    os.makedirs(cache_dir, exist_ok=True)
    parquet = pq.ParquetFile(shard)
    missing = [c for c in _COLUMNS if c not in parquet.schema_arrow.names]
    if missing:
        raise ValueError(f"the feature store shard {shard} has no column(s) {missing}")
    partial = f"{path}.partial-{os.getpid()}"
    schema = pa.schema([parquet.schema_arrow.field(c) for c in _COLUMNS])
    with pa.OSFile(partial, "wb") as sink, ipc.new_file(sink, schema) as writer:
        for batch in parquet.iter_batches(batch_size=16_384, columns=_COLUMNS):
            writer.write_batch(batch)
    os.replace(partial, path)
    stale = re.compile(re.escape(os.path.splitext(os.path.basename(shard))[0]) + r"-\d+-\d+\.arrow")
    for other in os.listdir(cache_dir):  # the copies of this shard before it was rewritten
        if other != name and stale.fullmatch(other):
            os.remove(os.path.join(cache_dir, other))
    return path


def _feature_views(batch: pa.RecordBatch, path: str) -> np.ndarray:
    column = batch.column("embedding")
    if not pa.types.is_fixed_size_list(column.type):
        raise ValueError(f"the embedding column of {path} is {column.type}, not a fixed-size list")
    if column.null_count:
        raise ValueError(f"the embedding column of {path} has {column.null_count} null rows")
    values = column.flatten().to_numpy(zero_copy_only=True)  # a view of the mapped file
    return values.reshape(len(batch), column.type.list_size)


class MappedFeatures:
    """``(rows, D)`` features of a store's shards, memory-mapped, by ``sample_key``.

    Args:
        store: the store folder (``images/*.parquet``).
        cache_dir: where the Arrow copies go (default ``<store>/arrow_cache``; give another folder for a store
            you cannot write to).
    """

    def __init__(self, store: str | os.PathLike, cache_dir: str | os.PathLike | None = None):
        self.store = os.fspath(store)
        shards = sorted(glob.glob(os.path.join(self.store, "images", "*.parquet")))
        if not shards:
            raise ValueError(f"the feature store {self.store} has no images/*.parquet shards")
        cache_dir = os.fspath(cache_dir) if cache_dir is not None else os.path.join(self.store, CACHE_FOLDER)
        self.arrow_files = [_arrow_copy(s, cache_dir) for s in shards]
        self.maps, self.views, keys = [], [], []
        for path in self.arrow_files:
            mapped = pa.memory_map(path, "r")
            reader = ipc.open_file(mapped)
            self.maps.append(mapped)
            for i in range(reader.num_record_batches):
                batch = reader.get_batch(i)
                self.views.append(_feature_views(batch, path))
                keys.append(np.asarray(batch.column("sample_key").cast(pa.binary()).to_pylist(), dtype=np.bytes_))
        dims = {v.shape[1] for v in self.views}
        if len(dims) > 1:
            raise ValueError(f"the feature store {self.store} mixes feature sizes {sorted(dims)}")
        self.dim = dims.pop()
        self.dtype = self.views[0].dtype
        self.starts = np.cumsum([0] + [len(v) for v in self.views])
        all_keys = np.concatenate(keys) if keys else np.empty(0, dtype=np.bytes_)
        self.order = np.argsort(all_keys, kind="stable")
        self.sorted_keys = all_keys[self.order]
        twice = np.flatnonzero(self.sorted_keys[1:] == self.sorted_keys[:-1])
        if len(twice):
            raise ValueError(f"the feature store {self.store} holds sample_key {self.sorted_keys[twice[0]].decode()!r} "
                             "more than once")

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def nbytes(self) -> int:
        """Bytes of the features (what a copy of the whole table would hold)."""
        return sum(v.nbytes for v in self.views)

    def rows_of(self, sample_keys: Sequence[str]) -> np.ndarray:
        """Global row numbers of ``sample_keys``; ``KeyError`` listing (up to 5 of) those the store lacks."""
        wanted = np.asarray([str(k).encode() for k in sample_keys], dtype=np.bytes_)
        at = np.clip(np.searchsorted(self.sorted_keys, wanted), 0, max(len(self.sorted_keys) - 1, 0))
        found = self.sorted_keys[at] == wanted if len(self.sorted_keys) else np.zeros(len(wanted), bool)
        if not found.all():
            raise KeyError([str(k) for k, ok in zip(sample_keys, found) if not ok][:5])
        return self.order[at]

    def __contains__(self, sample_key: str) -> bool:
        try:
            self.rows_of([sample_key])
        except KeyError:
            return False
        return True

    def gather(self, rows: np.ndarray) -> np.ndarray:
        """``(len(rows), D)`` float32 copy of the given rows (only those pages of the mapped files are read)."""
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        part = np.searchsorted(self.starts, rows, side="right") - 1
        for p in np.unique(part):
            mask = part == p
            out[mask] = self.views[p][rows[mask] - self.starts[p]]
        return out


__all__ = ["CACHE_FOLDER", "MappedFeatures"]
