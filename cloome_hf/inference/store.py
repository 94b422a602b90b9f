"""Embedding stores: the Parquet datasets ``cloome embed`` writes, and the one reader of them.

Layout of a store folder::

    embedding_info.json          model id / revision, processor settings, dtype: what made the embeddings
    images/shard-00000.parquet   one row per site: sample_key, plate, well, site, inchikey, smiles,
                                 perturbation_type / concentration (when the dataset has them), embedding
    molecules/shard-00000.parquet  one row per library molecule: smiles, inchikey, ..., embedding
    thumbnails/shard-00000.parquet  with --thumbnails: a small picture of each site of images/shard-00000
                                 (see :mod:`~cloome_hf.inference.thumbnails`)
    README.md                    ``configs`` metadata, so ``datasets.load_dataset(folder, "images")`` works

Rows are cut into shards of ``shard_size``; shard ``i`` is computed by process ``i % num_processes`` and
written atomically, so a rerun after an interruption keeps the finished shards and computes only the missing
ones. A rerun with other settings is refused (it would mix embeddings of two models in one store): the
settings include a digest of the model's weights and of the input tables, so a model retrained in place is a
change, not a resume. A store is only created in an empty or new folder (never over a model folder's
``README.md``), and ``overwrite=True`` removes only a store's own files.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from typing import Any, Mapping, Sequence

import numpy as np

from ..output_folder import (
    RECORDS_FOLDER,
    commit_shard,
    discard_shard,
    refuse_changed_settings,
    settings_digest,
    shard_problem,
    shard_record_path,
)
from ..finite import require_finite_rows
from ..safe_io import LOCK_FILE, atomic_write_json, atomic_write_text, read_json, temporary_name

logger = logging.getLogger(__name__)

INFO_FILE = "embedding_info.json"
CONFIGS = ("images", "molecules")
README = "README.md"
_CARD_MARKER = "CLOOME embeddings written by `cloome embed`"
_NOT_COMPARED = ("model_info",)  # how the model was found (its commit), not what it computes


def shard_ranges(num_rows: int, shard_size: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` of the shards of ``num_rows`` rows."""
    return [(s, min(s + shard_size, num_rows)) for s in range(0, num_rows, shard_size)]


def _shard_path(folder: str, index: int) -> str:
    return os.path.join(folder, f"shard-{index:05d}.parquet")


def _own_card(path: str) -> bool:
    """True when ``path`` is a store card written by :func:`write_store_readme`."""
    try:
        with open(path, encoding="utf-8") as f:
            return _CARD_MARKER in f.read()
    except (OSError, UnicodeDecodeError):
        return False


def remove_store(output_dir: str) -> None:
    """Remove a store's own files (shards, info, its card); a folder without ``embedding_info.json`` is not a
    store and is left untouched."""
    if not os.path.isfile(os.path.join(output_dir, INFO_FILE)):
        return
    for name in (*CONFIGS, RECORDS_FOLDER, "thumbnails"):
        shutil.rmtree(os.path.join(output_dir, name), ignore_errors=True)
    readme = os.path.join(output_dir, README)
    if _own_card(readme):
        os.remove(readme)
    os.remove(os.path.join(output_dir, INFO_FILE))


def check_or_write_info(output_dir: str, settings: Mapping[str, Any], write: bool) -> None:
    """Record ``settings`` in a new store, or refuse a store made with different ones (naming them).

    ``write=True`` (the main process) creates the store; the folder must then be new or empty (besides the
    lock file): a model folder or any other non-empty folder is refused, naming what it holds. ``write=False``
    (the other processes, afterwards) only checks."""
    path = os.path.join(output_dir, INFO_FILE)
    if os.path.isfile(path):
        refuse_changed_settings(read_info(output_dir), settings, output_dir, "embeddings",
                                "Use a new --output_dir, or --overwrite_output_dir to replace them", ignore=_NOT_COMPARED)
    elif write:
        os.makedirs(output_dir, exist_ok=True)
        held = sorted(n for n in os.listdir(output_dir) if n != LOCK_FILE)
        if held:
            raise ValueError(f"{output_dir} is not an embedding store and not empty (it holds "
                             f"{', '.join(held[:5])}{', ...' if len(held) > 5 else ''}); a store goes into a new "
                             "or empty --output_dir")
        atomic_write_json(path, settings)
    else:
        raise ValueError(f"{output_dir} has no {INFO_FILE}: the main process did not create the store")


def read_info(store: str | os.PathLike) -> dict[str, Any]:
    """The ``embedding_info.json`` of a store (``{}`` when it has none; ``ValueError`` naming a damaged one)."""
    path = os.path.join(os.fspath(store), INFO_FILE)
    if not os.path.isfile(path):
        return {}
    return read_json(path, "embedding store info")


def store_run_digest(output_dir: str) -> str:
    """The digest of the settings a store was started with (what each shard record names as its writer)."""
    return settings_digest({k: v for k, v in read_info(output_dir).items() if k not in _NOT_COMPARED})


def write_shard(path: str, columns: Mapping[str, Sequence], embeddings: np.ndarray, dtype: str = "float32",
                run_digest: str = "") -> None:
    """Write one shard atomically (tmp file + rename), so a killed run never leaves a half shard behind, and
    record its row count and checksum (:func:`~cloome_hf.output_folder.commit_shard`)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    half = dtype == "float16"
    with np.errstate(over="ignore"):
        emb = np.ascontiguousarray(embeddings, dtype=np.float16 if half else np.float32)
    keys = columns.get("sample_key", columns.get("inchikey", columns.get("smiles")))
    require_finite_rows(emb, f"the {dtype} embeddings for {os.path.basename(path)}",
                        keys)
    values = pa.array(emb.reshape(-1), type=pa.float16() if half else pa.float32())
    table = pa.table({**columns, "embedding": pa.FixedSizeListArray.from_arrays(values, emb.shape[1])})
    tmp = temporary_name(path)
    pq.write_table(table, tmp)
    commit_shard(tmp, path, len(emb), run_digest)


def shards_to_compute(folder: str, shards: Sequence[int], run_digest: str) -> list[int]:
    """The shards of ``shards`` that this run must (re)compute: not written, or kept but failing their record
    (:func:`~cloome_hf.output_folder.shard_problem`); those are removed and named in a warning."""
    todo = []
    for i in shards:
        path = _shard_path(folder, i)
        problem = shard_problem(path, run_digest)
        if problem is None:
            continue
        if os.path.exists(path) or os.path.exists(shard_record_path(path)):
            logger.warning("recomputing shard %s", os.path.join(folder, problem))
            discard_shard(path)
        todo.append(i)
    return todo


def _my_shards(num_shards: int, accelerator) -> list[int]:
    return [i for i in range(num_shards) if i % accelerator.num_processes == accelerator.process_index]


def _column_names(sites) -> list[str]:
    from ..data.sources import SiteSource

    if isinstance(sites, SiteSource):  # a raw table: its records, plus the image columns reading adds
        return list(sites.records.columns) + ["image", "image_shape"]
    return list(sites.column_names)


@contextlib.contextmanager
def _shard_sites(sites, start: int, stop: int, folder: str):
    """Rows ``start:stop`` of ``sites`` as a ``datasets.Dataset``. A raw table's sites are read through
    :func:`~cloome_hf.data.load_cell_painting` into a temporary Arrow cache inside ``folder`` (the disk of the
    store, not the memory; removed after the shard), so only this shard's images are read."""
    from ..data.sources import SiteSource

    if not isinstance(sites, SiteSource):
        yield sites.select(range(start, stop))
        return
    import tempfile

    from ..data import load_cell_painting

    with tempfile.TemporaryDirectory(dir=folder, prefix=".reading-") as cache:
        yield load_cell_painting(sites, split="train", rows=range(start, stop), cache_dir=cache)


def embed_images_to_store(sites, model, processor, folder: str, *, accelerator, shard_size: int, batch_size: int,
                          dtype: str = "float32", autocast_dtype=None, keep_columns: Sequence[str] = (),
                          num_workers: int = 0, max_rows: int | None = None, image_encoder=None,
                          features: str = "embedding", thumbnails: int | None = None) -> None:
    """Embed the sites of ``sites`` into ``folder``'s shards through :func:`encode_sites`.

    ``sites``: a ``datasets.Dataset`` in the common schema, or a :class:`~cloome_hf.data.sources.SiteSource`
    (an index / load_data table opened by :func:`~cloome_hf.data.source_kinds.site_source_of`), whose images are
    read shard by shard: a rerun reads only the missing shards' sites, each process only its own.
    ``max_rows``: embed only the first rows. ``image_encoder``: a backend of :mod:`~cloome_hf.inference.backends`
    in place of the model (the store's settings record which: ``backend``). ``features="backbone"``: the image tower's
    features instead of the embeddings (see :func:`~cloome_hf.inference.encode.backbone_features`).
    ``thumbnails``: also write each shard's site pictures, ``thumbnails`` pixels at most, into the store's
    ``thumbnails/`` (see :mod:`~cloome_hf.inference.thumbnails`), before the shard itself.
    """
    from tqdm.auto import tqdm

    from .encode import encode_sites, site_metadata_columns

    columns = _column_names(sites)
    meta_cols = site_metadata_columns(columns, keep_columns)
    missing = [c for c in meta_cols + ["image", "image_shape"] if c not in columns]
    if missing:
        raise ValueError(f"the dataset lacks column(s) {missing}; it has {columns}")
    os.makedirs(folder, exist_ok=True)
    num_rows = len(sites) if max_rows is None else min(max_rows, len(sites))
    shards = shard_ranges(num_rows, shard_size)
    digest = store_run_digest(os.path.dirname(os.path.abspath(folder)))
    todo = shards_to_compute(folder, _my_shards(len(shards), accelerator), digest)
    bar = tqdm(total=sum(shards[i][1] - shards[i][0] for i in todo), unit="site",
               desc=f"images (process {accelerator.process_index})", disable=not accelerator.is_local_main_process)
    for i in todo:
        with _shard_sites(sites, *shards[i], folder) as part:
            emb = encode_sites(model, processor, part, batch_size=batch_size, num_workers=num_workers,
                               autocast_dtype=autocast_dtype, image_encoder=image_encoder, features=features)
            if thumbnails:
                _write_thumbnails(part, os.path.dirname(os.path.abspath(folder)), i, thumbnails)
            write_shard(_shard_path(folder, i), part.select_columns(meta_cols)[:], emb, dtype, digest)
            bar.update(len(part))
    bar.close()


def _write_thumbnails(part, store: str, shard: int, size: int) -> None:
    from ..data.schema import channels_of, decode_row
    from .thumbnails import THUMBNAILS, write_thumbnail_shard

    sites = (decode_row(row) for row in part.select_columns(["image", "image_shape"]))
    write_thumbnail_shard(_shard_path(os.path.join(store, THUMBNAILS), shard), part["sample_key"], sites,
                          channels_of(part), size)


def embed_molecules_to_store(table, model, processor, folder: str, *, accelerator, shard_size: int,
                             batch_size: int, dtype: str = "float32", autocast_dtype=None) -> None:
    """Embed a molecule library (a DataFrame with a ``smiles`` column, and ``concentration`` in uM for a
    dose-conditioned model) into ``folder``'s shards."""
    from tqdm.auto import tqdm

    from .encode import encode_molecules

    os.makedirs(folder, exist_ok=True)
    shards = shard_ranges(len(table), shard_size)
    digest = store_run_digest(os.path.dirname(os.path.abspath(folder)))
    for i in tqdm(shards_to_compute(folder, _my_shards(len(shards), accelerator), digest), desc="molecules",
                  disable=not accelerator.is_local_main_process):
        path = _shard_path(folder, i)
        part = table.iloc[shards[i][0]:shards[i][1]]
        doses = part["concentration"].to_numpy() if "concentration" in part.columns else None
        emb = encode_molecules(model, processor, list(part["smiles"]), batch_size=batch_size,
                               autocast_dtype=autocast_dtype, concentrations=doses)
        write_shard(path, {c: part[c].tolist() for c in part.columns}, emb, dtype, digest)


def write_store_readme(output_dir: str) -> None:
    """The ``configs`` metadata that makes ``load_dataset(output_dir, "images")`` work; a ``README.md`` that
    is not a store card (a model's card, say) is never overwritten."""
    path = os.path.join(output_dir, README)
    if os.path.exists(path) and not _own_card(path):
        raise ValueError(f"{path} is not a card written by cloome embed; refusing to overwrite it")
    configs = [c for c in CONFIGS if os.path.isdir(os.path.join(output_dir, c))]
    lines = ["---", "configs:"]
    for c in configs:
        lines += [f"- config_name: {c}", "  data_files:", "  - split: train", f"    path: {c}/shard-*.parquet"]
    lines += ["---", "", f"{_CARD_MARKER}; see `{INFO_FILE}`.", ""]
    atomic_write_text(path, "\n".join(lines))


def embeddings_from_arrow(column) -> np.ndarray:
    """(N, D) float32 array from an Arrow list / fixed_size_list column without a Python loop."""
    import pyarrow as pa

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if len(column) == 0:
        raise ValueError("the embedding column is empty")
    if column.null_count:
        raise ValueError(f"the embedding column has {column.null_count} null rows")
    if pa.types.is_fixed_size_list(column.type):
        dim = column.type.list_size
    else:
        lengths = np.asarray(column.value_lengths())
        if (lengths != lengths[0]).any():
            bad = int(np.flatnonzero(lengths != lengths[0])[0])
            raise ValueError(f"embedding row {bad} has length {lengths[bad]}, row 0 has {lengths[0]}")
        dim = int(lengths[0])
    values = column.flatten().to_numpy(zero_copy_only=False)
    return values.astype(np.float32, copy=False).reshape(len(column), dim)


def _read_parquet(path: str):
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path)
    except Exception as err:  # noqa: BLE001 - a damaged file raises ArrowInvalid, OSError, ...
        raise ValueError(f"cannot read the embeddings file {path}: {type(err).__name__}: {err}") from err


def read_embeddings(source, embedding_column: str = "embedding"):
    """A ``pyarrow.Table`` of embeddings from a store's ``images`` / ``molecules`` folder, a Parquet file or
    folder, a ``save_to_disk`` folder, a ``datasets.Dataset``, a ``pyarrow.Table`` or a pandas DataFrame whose
    ``embedding_column`` holds one vector per row. The one reader of embeddings in the package."""
    import pandas as pd
    import pyarrow as pa

    if isinstance(source, pa.Table):
        return source
    if isinstance(source, pd.DataFrame):
        if embedding_column not in source.columns:
            raise ValueError(f"column {embedding_column!r} not in the embeddings DataFrame "
                             f"(has {list(source.columns)})")
        df = source.copy()
        df[embedding_column] = list(np.asarray(np.stack(df[embedding_column].to_numpy()), dtype=np.float32))
        return pa.Table.from_pandas(df, preserve_index=False)
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if any(os.path.isfile(os.path.join(path, f)) for f in ("dataset_info.json", "state.json")):
            import datasets

            return datasets.load_from_disk(path).data.table
        if os.path.isfile(path) or os.path.isdir(path):
            files = [path] if os.path.isfile(path) else sorted(
                os.path.join(root, f) for root, _, fs in os.walk(path) for f in fs if f.endswith(".parquet"))
            if not files:
                raise ValueError(f"no Parquet files under {path}")
            return pa.concat_tables([_read_parquet(f) for f in files])
        raise ValueError(f"embeddings dataset path {path} does not exist")
    if hasattr(source, "data") and hasattr(source.data, "table"):  # datasets.Dataset
        if getattr(source, "_indices", None) is not None:  # a shuffled/selected view: materialise its rows
            source = source.flatten_indices()
        return source.data.table
    raise ValueError(f"cannot read embeddings from {type(source).__name__}")


def load_store(store: str | os.PathLike) -> dict[str, Any]:
    """``{config: datasets.Dataset}`` of a store folder (``images`` and, if present, ``molecules``)."""
    import datasets
    from datasets.table import InMemoryTable

    out = {name: datasets.Dataset(InMemoryTable(read_embeddings(os.path.join(store, name))))
           for name in CONFIGS if os.path.isdir(os.path.join(store, name))}
    if not out:
        raise ValueError(f"{os.fspath(store)} holds no embeddings: expected Parquet files under images/ or "
                         "molecules/")
    return out


__all__ = ["CONFIGS", "INFO_FILE", "check_or_write_info", "embed_images_to_store", "embed_molecules_to_store",
           "embeddings_from_arrow", "load_store", "read_embeddings", "read_info", "remove_store", "shard_ranges",
           "shards_to_compute", "store_run_digest", "write_shard", "write_store_readme"]
