"""One entry point for every Cell Painting source: :func:`load_cell_painting`."""

from __future__ import annotations

import glob
import os
import re
from typing import Any, Mapping, Sequence

from .prepare import MANIFEST, verify_prepared
from ..channels import CHANNELS
from .schema import check_schema, dataset_description
from .remote import is_url
from .source_kinds import site_source_of
from .sources import SiteSource


def _with_channels(ds, channels):
    """Record the channel order in the dataset info (``ds.info.description``)."""
    if hasattr(ds, "info"):
        ds.info.description = dataset_description(channels)
    return ds


_NUMBERED_SHARD = re.compile(r"-(\d{5})-of-(\d{5})\.parquet$")


def _parquet_files(folder: str) -> dict[str, list[str]]:
    """``{split: files}`` of a folder of Parquet shards (``data/{split}-*.parquet``, else any ``*.parquet``)
    without a ``prepare`` manifest. Shards named ``...-00003-of-00012.parquet`` (the Hub convention) must all
    be there: a missing one is refused, naming it."""
    files = sorted(glob.glob(os.path.join(folder, "data", "*.parquet")))
    if files:
        by_split: dict[str, list[str]] = {}
        for f in files:
            by_split.setdefault(os.path.basename(f).split("-")[0], []).append(f)
    else:
        files = sorted(glob.glob(os.path.join(folder, "**", "*.parquet"), recursive=True))
        if not files:
            raise ValueError(f"no Parquet files under {folder}")
        by_split = {"train": files}
    for split, names in by_split.items():
        numbered: dict[tuple[str, int], set[int]] = {}
        for f in names:
            match = _NUMBERED_SHARD.search(f)
            if match:
                numbered.setdefault((f[:match.start()], int(match.group(2))), set()).add(int(match.group(1)))
        for (stem, total), present in numbered.items():
            absent = sorted(set(range(total)) - present)
            if absent:
                raise ValueError(f"{folder}: split {split!r} lacks shard(s) {absent[:5]} of the {total} shards "
                                 f"{os.path.basename(stem)}-NNNNN-of-{total:05d}.parquet (an incomplete copy)")
    return by_split


def looks_local(location: str) -> bool:
    """True for a location a user means as a local path: it starts with ``./``, ``../``, ``/`` or ``~``, or its
    parent folder exists (``data/sitez`` when ``data/`` does). A Hub id (``user/name``) has none of these,
    unless a local folder ``user/`` exists, in which case the local reading is the likelier one."""
    if is_url(location):
        return False
    if location.startswith(("./", "../", "/", "~", "." + os.sep, ".." + os.sep)) or os.path.isabs(location):
        return True
    parent = os.path.dirname(os.path.expanduser(location).rstrip("/" + os.sep))
    return bool(parent) and os.path.isdir(parent)


def refuse_missing_local_path(location: Any, what: str = "dataset") -> None:
    """``FileNotFoundError`` naming ``location`` when it looks like a local path (:func:`looks_local`) that does
    not exist: a mistyped folder is reported as missing, never sent to the Hub as a repository id."""
    if not isinstance(location, (str, os.PathLike)):
        return
    path = os.fspath(location)
    if looks_local(path) and not os.path.exists(os.path.expanduser(path)):
        parent = os.path.dirname(os.path.abspath(os.path.expanduser(path)))
        if not os.path.isdir(parent):
            found = f"; {parent} does not exist either"
        else:
            near = sorted(os.listdir(parent))
            found = f"; {parent} holds {', '.join(near[:8])}{', ...' if len(near) > 8 else ''}" if near else \
                f"; {parent} is empty"
        raise FileNotFoundError(f"{what} {path!r} does not exist (no such local file or folder: "
                                f"{os.path.abspath(os.path.expanduser(path))}){found}")


def _generate(source: SiteSource, shards):
    """``datasets`` generator; ``shards`` (lists of record indices) is split over the ``num_proc`` workers."""
    for rows in shards:
        yield from source.iter_rows(rows)


def load_cell_painting(
    source: Any,
    *,
    kind: str = "auto",
    split: str | None = None,
    streaming: bool = False,
    root=None,
    compounds=None,
    wells=None,
    errors: str = "raise",
    cache_dir: str | None = None,
    num_proc: int | None = None,
    synthetic: Mapping[str, Any] | None = None,
    source_options: dict[str, Any] | None = None,
    rows: Sequence[int] | None = None,
    **load_dataset_kwargs,
):
    """Load Cell Painting sites as a ``datasets`` object in the common schema (:mod:`cloome_hf.data.schema`).

    Args:
        source: one of
            * ``"synthetic"``: the embedded synthetic Cell Painting generator
              (:func:`~cloome_hf.data.synthetic.make_synthetic_dataset` with the options in ``synthetic``);
            * a ``datasets`` ``save_to_disk`` folder (``Dataset`` or ``DatasetDict``) in the schema;
            * a folder written by ``prepare`` (``data/{split}-*.parquet``) or any folder of Parquet shards in
              the schema;
            * a Hub dataset id in the schema (``datasets.load_dataset(source)``);
            * an index CSV (Bray npz layout with ``root`` = the npz folder, or raw TIFF layout with ``root`` =
              the image folder), or a CellProfiler / JUMP ``load_data`` table (CSV, CSV.gz or Parquet, local or
              a URL) with optional ``compounds`` = the compound table (and ``wells`` = cpg0016's well table when
              ``load_data`` has no compound column); its rows carry ``perturbation_type``;
            * a :class:`~cloome_hf.data.sources.SiteSource`.
        kind: ``"auto"``, ``"parquet"``, ``"hub"``, ``"bray_npz"``, ``"tiff"`` or ``"jump"``. The raw layouts
            are ``cloome prepare --kind``'s names; a prepare manifest records them as ``source_kind``.
        split: a split name to return one ``Dataset`` / ``IterableDataset``; ``None`` returns a ``DatasetDict``
            (index / JUMP sources have a single ``"train"`` split).
        streaming: ``IterableDataset`` reading lazily (Parquet shards, Hub, or the raw files themselves).
        errors: ``"raise"`` or ``"skip"`` for unreadable sites / invalid SMILES of raw sources.
        cache_dir: ``datasets`` cache for the Arrow files of non-streaming loads.
        num_proc: processes for non-streaming conversion of raw sources.
        synthetic: keyword arguments of ``make_synthetic_dataset`` for ``source="synthetic"``.
        source_options: options of the LoadData reader (:class:`~cloome_hf.data.jump.JumpSource`):
            ``illumination``, ``storage_options``, ``plates``, ``extra_channels``, ``retries``, ``read_threads``.
        rows: raw sources only: read just these sites (record indices of the source, in this order), e.g. one
            output shard of ``cloome embed``.

    ``root``, ``compounds``, ``wells``, ``source_options`` and ``rows`` apply to index / load_data tables and
    :class:`~cloome_hf.data.sources.SiteSource` objects; given with any other source they are refused, not
    ignored.

    Returns:
        ``Dataset``, ``DatasetDict``, ``IterableDataset`` or ``IterableDatasetDict``; the channel order of the
        ``image`` column is in ``ds.info.description`` (:func:`cloome_hf.data.schema.channels_of`).
    """
    import datasets

    if not (isinstance(source, str) and source == "synthetic"):
        refuse_missing_local_path(source)
    raw = site_source_of(source, kind=kind, root=root, compounds=compounds, wells=wells, errors=errors,
                         source_options=source_options)
    if raw is not None:
        return _load_raw(raw, split, streaming, rows, num_proc, cache_dir)
    _refuse_table_options(source, root=root, compounds=compounds, wells=wells, source_options=source_options,
                          rows=rows)
    if isinstance(source, str) and source == "synthetic":
        from .synthetic import make_synthetic_dataset

        return _pick_split(datasets.DatasetDict({"train": make_synthetic_dataset(**dict(synthetic or {}))}),
                           split, "synthetic")
    path = os.fspath(source)
    if _is_saved_dataset(path):
        out = _pick_split(datasets.load_from_disk(path), split, path)
        for part in out.values() if isinstance(out, datasets.DatasetDict) else [out]:
            check_schema(part.column_names, where=path)
        return out
    if kind == "parquet" or (kind == "auto" and os.path.isdir(path)):
        out, channels = _load_parquet(path, split, streaming, cache_dir, load_dataset_kwargs)
    elif kind in ("hub", "auto"):
        out = datasets.load_dataset(path, split=split, streaming=streaming, cache_dir=cache_dir,
                                    **load_dataset_kwargs)
        channels = None
    else:
        raise ValueError(f"unknown kind {kind!r}; expected auto, parquet, hub, bray_npz, tiff or jump")
    parts = out.values() if isinstance(out, (datasets.DatasetDict, datasets.IterableDatasetDict)) else [out]
    for part in parts:
        names = part.column_names or list((part.features or {}).keys())
        check_schema(names, where=path)
        _with_channels(part, channels or _hub_channels(part))
    return out


def _load_raw(raw: SiteSource, split, streaming: bool, rows, num_proc, cache_dir):
    """The sites of an index / load_data table (all, or ``rows``), read through its source."""
    import datasets

    selected = list(range(len(raw))) if rows is None else [int(i) for i in rows]
    if selected and not 0 <= min(selected) <= max(selected) < len(raw):
        raise ValueError(f"rows {min(selected)}..{max(selected)} are outside the {len(raw)} sites of {raw.where}")
    if streaming:
        ds = datasets.IterableDataset.from_generator(_generate, features=raw.features(),
                                                     gen_kwargs={"source": raw, "shards": [selected]})
    else:
        n = max(1, min(num_proc or 1, len(selected)))
        chunks = [selected[i::n] for i in range(n)]
        try:
            ds = datasets.Dataset.from_generator(
                _generate, features=raw.features(), gen_kwargs={"source": raw, "shards": chunks},
                cache_dir=cache_dir, num_proc=n if n > 1 else None)
        except datasets.exceptions.DatasetGenerationError as err:
            cause = err.__cause__ or err.__context__
            if isinstance(cause, ValueError):  # a bad site: surface the message naming file and row
                raise cause from None
            raise
    ds = _with_channels(ds, raw.channels)
    if split is None:
        return (datasets.IterableDatasetDict if streaming else datasets.DatasetDict)({"train": ds})
    if split != "train":
        raise ValueError(f"a {raw.kind} source has only the split 'train', not {split!r}")
    return ds


def _load_parquet(path: str, split, streaming: bool, cache_dir, load_dataset_kwargs):
    """``(datasets object, channels)`` of a ``prepare`` folder (checked against its manifest) or Parquet shards."""
    import datasets

    channels = CHANNELS
    if os.path.exists(os.path.join(path, MANIFEST)):  # a prepare folder: its shards must match its plan
        channels, files = verify_prepared(path, None if split is None else [split])
        channels = tuple(channels)
    else:
        files = _parquet_files(path)
    if split is not None:
        if split not in files:
            raise ValueError(f"{path} has no split {split!r}; splits: {sorted(files)}")
        files = {split: files[split]}  # only the asked split is read (and had to be complete)
    empty = sorted(s for s, f in files.items() if not f)
    if empty:
        raise ValueError(f"split(s) {empty} of {path} hold no sites: every site was skipped (see the prepare "
                         "report)")
    out = datasets.load_dataset("parquet", data_files=files, split=split, streaming=streaming, cache_dir=cache_dir,
                                **load_dataset_kwargs)
    return out, channels


def _refuse_table_options(source, **given) -> None:
    """Options of site tables given with another source would be ignored: refuse them, naming them."""
    named = sorted(name for name, value in given.items() if value is not None and value != {})
    if named:
        raise ValueError(f"{', '.join(named)} apply to index / load_data tables (a local table file or a URL "
                         f"ending in .csv, .csv.gz, .tsv or .parquet), but {source!r} is not one")


def _is_saved_dataset(path) -> bool:
    """A folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``."""
    return any(os.path.isfile(os.path.join(os.fspath(path), name))
               for name in ("dataset_info.json", "state.json", "dataset_dict.json"))


def _pick_split(out, split: str | None, where: str):
    """``out`` itself (``split=None``) or its split ``split`` (a ``Dataset`` passes only as its one split)."""
    import datasets

    if split is None:
        return out if isinstance(out, datasets.DatasetDict) else datasets.DatasetDict({"train": out})
    if isinstance(out, datasets.DatasetDict):
        if split not in out:
            raise ValueError(f"{where} has no split {split!r}; splits: {sorted(out)}")
        return out[split]
    if split != "train":
        raise ValueError(f"{where} is a single dataset (split 'train'), not a split {split!r}")
    return out


def _hub_channels(ds):
    from .schema import channels_of

    return channels_of(ds)
