"""Convert a Cell Painting source (Bray npz / raw TIFF / JUMP) into Parquet shards of the common schema.

Output folder (loadable with :func:`cloome_hf.data.load_cell_painting` or ``datasets.load_dataset("parquet")``,
and publishable as a Hub dataset as is)::

    output_dir/
      cloome_data.json                 manifest: channels, source kind, shard plan, hash of the input records
      data/{split}-00000-of-00012.parquet   one shard per `shard_size` sites (Hub naming convention)
      reports/{split}-00000.json       sites skipped in that shard, and why
      prepare_report.json              totals + every skipped site / invalid molecule

Shards are written in parallel (``num_proc`` forked workers), each to a temporary file renamed on completion,
so an interrupted run leaves only finished shards; rerunning with the same input and settings keeps them and
writes the rest. A different input or shard plan in the same folder is refused (it would mix datasets), and so
is a second run writing into the folder at the same time (process 0 holds its :class:`~cloome_hf.safe_io.OutputLock`).
:func:`verify_prepared` (what :func:`~cloome_hf.data.load_cell_painting` runs) refuses a folder whose shards do
not match its manifest: missing shards (an interrupted run), rows missing from a shard, files of another plan.

Across processes and machines (one shared ``output_dir``), process ``k`` of ``n`` writes the shards ``i`` with
``i % n == k``: disjoint, deterministic, and together the shards one process writes alone (same names, same
rows). ``k`` and ``n`` come from ``process_index`` / ``num_processes`` or, under ``accelerate launch`` /
``torchrun``, from the ``RANK`` / ``WORLD_SIZE`` environment. The report counts every finished shard of the
folder, so the last process to finish (or any rerun) writes the complete one.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import multiprocessing
import os
import re
from typing import Any


from ..output_folder import (
    commit_shard,
    dataset_digest,
    discard_shard,
    refuse_changed_settings,
    settings_digest,
    shard_problem,
    shard_record_path,
)
from ..safe_io import OutputLock, atomic_write_json, read_json, require_keys, temporary_name
from .perturbations import type_counts
from .sources import SiteSource

logger = logging.getLogger(__name__)
MANIFEST = "cloome_data.json"
REPORT = "prepare_report.json"
FORMAT = "cloome_hf.cell_painting/1"
# What a rerun must share with the run that started the folder (the split's plan after the first two).
_COMPARED = ("channels", "features", "records_hash", "shard_size", "num_shards")
_SPLIT_KEYS = ("source_kind", "source", "num_sites", "shard_size", "num_shards", "records_hash")
_SOURCE: SiteSource | None = None  # the source of the forked workers (inherited, not pickled per task)
#: ``cloome prepare`` fails when it leaves out more than this share of the sites (``--max_skipped_fraction``).
DEFAULT_MAX_SKIPPED_FRACTION = 0.1


class IncompleteOutputError(ValueError):
    """A run finished but wrote nothing, or left out more of its input than allowed. The output stays as written
    (and is listed in its report); ``hint`` says what to do, for the CLI's second line."""

    def __init__(self, message: str, hint: str):
        super().__init__(message)
        self.hint = hint


_SITE_PREFIX = re.compile(r"^.*?, site \S+?(?:, file\(s\) .*?)?: ")
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")


def reason_kind(reason: str) -> str:
    """A skip reason without the site it names (row, sample, plate, well, files) and with quoted values as
    ``'…'``: the reasons of many sites that failed the same way compare equal."""
    return _QUOTED.sub("'…'", _SITE_PREFIX.sub("", str(reason), count=1)).strip()


def most_common_reason(skipped: list[dict[str, Any]]) -> tuple[str, int, str]:
    """``(kind of reason, how many sites, one full reason)`` of the commonest way sites were skipped."""
    counts = collections.Counter(reason_kind(s["reason"]) for s in skipped)
    kind, count = counts.most_common(1)[0]
    example = next(s["reason"] for s in skipped if reason_kind(s["reason"]) == kind)
    return kind, count, example


def check_written(report: dict[str, Any], report_path: str, max_skipped_fraction: float = DEFAULT_MAX_SKIPPED_FRACTION
                  ) -> None:
    """Refuse (:class:`IncompleteOutputError`) a prepare run that wrote no site, or skipped more than
    ``max_skipped_fraction`` of the sites it looked at; the message names the report file and the commonest
    reason with its count."""
    if not 0 <= max_skipped_fraction <= 1:
        raise ValueError(f"max_skipped_fraction must lie in [0, 1], got {max_skipped_fraction}")
    written, skipped = int(report["num_written"]), list(report["skipped"])
    seen = written + len(skipped)
    if seen == 0:
        raise IncompleteOutputError(f"the input holds no sites ({report_path})",
                                    "check that the index / load_data table has rows")
    if written and len(skipped) <= max_skipped_fraction * seen:
        return
    kind, count, _ = most_common_reason(skipped)
    limit = "" if not written else f", more than the allowed {max_skipped_fraction:.0%}"
    raise IncompleteOutputError(
        f"wrote {written} of {seen} sites, skipped {len(skipped)} ({len(skipped) / seen:.0%}{limit}); most often "
        f"({count}x): {kind}; every skipped site and why is listed in {report_path}",
        "fix those inputs and rerun (finished shards are kept)" + (
            ", or accept the partial dataset with --max_skipped_fraction 1" if written else ""))


def _shard_paths(output_dir: str, split: str, i: int, n: int) -> tuple[str, str]:
    return (os.path.join(output_dir, "data", f"{split}-{i:05d}-of-{n:05d}.parquet"),
            os.path.join(output_dir, "reports", f"{split}-{i:05d}.json"))


def _read_manifest(path: str) -> dict[str, Any]:
    """The manifest of a prepared folder; ``ValueError`` naming it when damaged or foreign."""
    manifest = read_json(path, "prepare manifest")
    require_keys(manifest, ("format", "channels", "splits"), path, "prepare manifest")
    if manifest["format"] != FORMAT or not isinstance(manifest["splits"], dict):
        raise ValueError(f"the prepare manifest {path} is of format {manifest['format']!r}, expected {FORMAT!r}")
    for split, plan in manifest["splits"].items():
        if not isinstance(plan, dict):
            raise ValueError(f"the prepare manifest {path}: split {split!r} is not a JSON object")
        require_keys(plan, _SPLIT_KEYS, path, f"prepare manifest (split {split!r})")
    return manifest


def _shard_rows(parquet_path: str) -> int:
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(parquet_path).metadata.num_rows
    except Exception as err:  # noqa: BLE001 - a damaged footer raises ArrowInvalid, OSError, ...
        raise ValueError(f"cannot read the shard {parquet_path}: {type(err).__name__}: {err}") from err


def verify_prepared(folder: str | os.PathLike, splits: list[str] | None = None
                    ) -> tuple[list[str], dict[str, list[str]]]:
    """Check the ``splits`` (default: all) of a ``prepare`` folder against its manifest; return
    ``(channels, {split: shards with rows})``.

    Refused (``ValueError`` naming the folder and the shards): a missing shard or shard report (an interrupted
    or unfinished run: rerun ``prepare`` with the same input to finish it), a shard whose row count is not its
    sites minus those its report lists as skipped, and Parquet files under ``data/`` that the manifest's plan
    does not name (another run's shards). Shards whose sites were all skipped are left out of the result.
    """
    out = os.fspath(folder)
    manifest = _read_manifest(os.path.join(out, MANIFEST))
    unknown = sorted(set(splits or ()) - set(manifest["splits"]))
    if unknown:
        raise ValueError(f"{out} has no split {unknown[0]!r}; splits: {sorted(manifest['splits'])}")
    planned = {os.path.basename(_shard_paths(out, split, i, int(plan["num_shards"]))[0])
               for split, plan in manifest["splits"].items() for i in range(int(plan["num_shards"]))}
    files, problems = {}, []
    for split in sorted(manifest["splits"]) if splits is None else splits:
        plan = manifest["splits"][split]
        n, size, sites = int(plan["num_shards"]), int(plan["shard_size"]), int(plan["num_sites"])
        missing, files[split] = [], []
        for i in range(n):
            parquet_path, report_path = _shard_paths(out, split, i, n)
            if not (os.path.isfile(parquet_path) and os.path.isfile(report_path)):
                missing.append(os.path.basename(parquet_path))
                continue
            expected = min((i + 1) * size, sites) - i * size - len(read_json(report_path, "shard report", list))
            rows = _shard_rows(parquet_path)
            if rows != expected:
                problems.append(f"{os.path.basename(parquet_path)} has {rows} rows, its plan and report say "
                                f"{expected}")
            elif rows:
                files[split].append(parquet_path)
        if missing:
            problems.append(f"split {split!r} lacks {len(missing)} of its {n} shards ({', '.join(missing[:5])}"
                            f"{', ...' if len(missing) > 5 else ''}): an interrupted or unfinished prepare; rerun "
                            "it with the same input to finish")
    data = os.path.join(out, "data")
    foreign = sorted(f for f in (os.listdir(data) if os.path.isdir(data) else []) if f.endswith(".parquet")
                     and f not in planned)
    if foreign:
        problems.append(f"data/ holds Parquet files its manifest does not plan ({', '.join(foreign[:5])}): "
                        "another run's shards")
    if problems:
        raise ValueError(f"{out} does not match its manifest {MANIFEST}: " + "; ".join(problems))
    return list(manifest["channels"]), files


def resolve_process(process_index: int | None = None, num_processes: int | None = None) -> tuple[int, int]:
    """``(index, count)`` of this process: explicit values, else ``RANK`` / ``WORLD_SIZE`` (set by ``accelerate
    launch`` and ``torchrun`` on every machine), else ``(0, 1)``."""
    if (process_index is None) != (num_processes is None):
        raise ValueError("give both process_index and num_processes, or neither")
    if process_index is None:
        try:
            process_index, num_processes = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
        except ValueError as err:
            raise ValueError(f"RANK / WORLD_SIZE must be integers, got {os.environ.get('RANK')!r} / "
                             f"{os.environ.get('WORLD_SIZE')!r}") from err
    if num_processes < 1 or not 0 <= process_index < num_processes:
        raise ValueError(f"process_index must lie in [0, num_processes), got {process_index} of {num_processes}")
    return int(process_index), int(num_processes)


def _write_shard(task: tuple[int, int, int, str, str, str, int]) -> tuple[int, int, list[dict[str, Any]]]:
    """Write shard ``i`` (rows ``start:stop`` of the source); returns (i, sites written, skipped sites)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    i, start, stop, parquet_path, report_path, compression, row_group_size, run_digest = task
    source = _SOURCE
    source.skipped = []
    features = source.features()
    schema = features.arrow_schema
    rows = list(source.iter_rows(range(start, stop)))
    skipped = [s.to_dict() for s in source.skipped]
    atomic_write_json(report_path, skipped)
    tmp = temporary_name(parquet_path)
    if rows:
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp, compression=compression,
                       row_group_size=row_group_size)
    else:  # no row group at all: an empty row group makes datasets' Parquet reader fail (batch size 0)
        pq.ParquetWriter(tmp, schema, compression=compression).close()
    commit_shard(tmp, parquet_path, len(rows), run_digest)  # exists only once complete, then gets its record
    return i, len(rows), skipped


def prepare_dataset(
    source: SiteSource,
    output_dir: str | os.PathLike,
    split: str = "train",
    shard_size: int = 500,
    num_proc: int = 1,
    compression: str = "zstd",
    row_group_size: int = 32,
    progress: bool = True,
    max_shards: int | None = None,
    process_index: int | None = None,
    num_processes: int | None = None,
) -> dict[str, Any]:
    """Write ``source`` as Parquet shards under ``output_dir`` (see module docstring) and return the report.

    Args:
        source: a :class:`~cloome_hf.data.sources.SiteSource` (its ``errors`` policy decides raise vs. skip).
        split: split name in the shard file names.
        shard_size: sites per shard (also the unit of parallelism and of resumption).
        num_proc: worker processes.
        compression: Parquet codec of the shards (``"zstd"``, ``"snappy"``, ``"none"``).
        row_group_size: sites per Parquet row group (what a streaming reader holds in memory at once).
        max_shards: stop after writing this many new shards (to stage very large conversions; rerun to go on).
        process_index, num_processes: this process's share of the shards (see the module docstring); default
            from ``RANK`` / ``WORLD_SIZE``, else all shards.

    Returns:
        dict with ``num_sites``, ``num_written``, ``num_skipped``, ``skipped`` (row, sample_key, reason),
        ``num_shards``, ``shards_reused``, ``complete`` (every shard of the folder exists), ``perturbation_types``
        (sites written per type), ``num_without_structure``, and ``process_index``, ``num_processes``,
        ``process_complete`` (this process's shards exist).
    """
    if shard_size < 1 or num_proc < 1:
        raise ValueError(f"shard_size and num_proc must be >= 1, got {shard_size} and {num_proc}")
    rank, world = resolve_process(process_index, num_processes)
    out = os.fspath(output_dir)
    # one run per folder: process 0 of a run holds the lock (the others write their disjoint shares)
    with OutputLock(out, "cloome prepare") if rank == 0 else contextlib.nullcontext():
        return _prepare(source, out, split, shard_size, num_proc, compression, row_group_size, progress,
                        max_shards, rank, world)


def _prepare(source, out, split, shard_size, num_proc, compression, row_group_size, progress, max_shards,
             rank, world) -> dict[str, Any]:
    global _SOURCE
    os.makedirs(os.path.join(out, "data"), exist_ok=True)
    os.makedirs(os.path.join(out, "reports"), exist_ok=True)
    n_sites = len(source)
    n_shards = max(1, -(-n_sites // shard_size))
    manifest = {"format": FORMAT, "channels": list(source.channels), "source_kind": source.kind,
                "source": source.where, "split": split, "num_sites": n_sites, "shard_size": shard_size,
                "num_shards": n_shards, "records_hash": dataset_digest(source),
                "features": source.features().to_dict()}
    manifest_path = os.path.join(out, MANIFEST)
    settings = {k: manifest[k] for k in _COMPARED}
    if os.path.exists(manifest_path):
        old = _read_manifest(manifest_path)
        olds = old["splits"].get(split)
        recorded = {"channels": old["channels"], "features": old.get("features"),
                    **({k: olds.get(k) for k in _COMPARED[2:]} if olds is not None else {})}
        refuse_changed_settings(recorded, settings if olds is not None else {k: settings[k] for k in _COMPARED[:2]},
                                out, f"prepared sites (split {split!r})", "Use a new output_dir")
        splits = old["splits"]
    else:
        splits = {}
    run_digest = settings_digest(settings)
    splits[split] = {k: manifest[k] for k in _SPLIT_KEYS}
    atomic_write_json(manifest_path, {"format": manifest["format"], "channels": manifest["channels"],
                                      "features": manifest["features"], "splits": splits})

    mine = [i for i in range(n_shards) if i % world == rank]
    for i in mine:  # temporary files of this process's workers killed mid-write (others may be writing theirs)
        for path in _shard_paths(out, split, i, n_shards):
            folder, name = os.path.split(path)
            for other in os.listdir(folder):
                if other.startswith(name + ".tmp"):
                    os.remove(os.path.join(folder, other))
    tasks, reused = [], 0
    for i in mine:
        parquet_path, report_path = _shard_paths(out, split, i, n_shards)
        problem = shard_problem(parquet_path, run_digest)
        if problem is None and os.path.exists(report_path):
            reused += 1
            continue
        if os.path.exists(parquet_path) or os.path.exists(shard_record_path(parquet_path)):
            logger.warning("recomputing shard %s", os.path.join(out, "data", problem or "its report is missing"))
            discard_shard(parquet_path)
        tasks.append((i, i * shard_size, min((i + 1) * shard_size, n_sites), parquet_path, report_path,
                      compression, row_group_size, run_digest))
    if max_shards is not None:
        tasks = tasks[:max_shards]

    from tqdm.auto import tqdm

    _SOURCE = source
    try:
        bar = tqdm(total=len(tasks), desc=f"prepare {split}", unit="shard", disable=not progress)
        if num_proc > 1 and len(tasks) > 1:
            with multiprocessing.get_context("fork").Pool(min(num_proc, len(tasks))) as pool:
                for _ in pool.imap_unordered(_write_shard, tasks):
                    bar.update()
        else:
            for task in tasks:
                _write_shard(task)
                bar.update()
        bar.close()
    finally:
        _SOURCE = None
        source.skipped = list(getattr(source, "_invalid_molecules", []))
    report = _report(source, out, split, n_shards, reused)
    report.update(process_index=rank, num_processes=world, process_complete=all(
        os.path.exists(_shard_paths(out, split, i, n_shards)[0]) for i in mine))
    return report


def report_name(split: str) -> str:
    """The report file of a split, in the output folder."""
    return REPORT if split == "train" else f"prepare_report_{split}.json"


def _report(source: SiteSource, out: str, split: str, n_shards: int, reused: int) -> dict[str, Any]:
    """Gather the per-shard reports and the molecules excluded when the source was built."""
    import pyarrow.parquet as pq

    skipped = [s.to_dict() for s in getattr(source, "_invalid_molecules", [])]
    written, done, types, unstructured = 0, 0, [], 0
    for i in range(n_shards):
        parquet_path, report_path = _shard_paths(out, split, i, n_shards)
        if not os.path.exists(parquet_path):
            continue
        done += 1
        shard = pq.ParquetFile(parquet_path)
        written += shard.metadata.num_rows
        columns = [c for c in ("smiles", "perturbation_type") if c in shard.schema_arrow.names]
        meta = shard.read(columns=columns).to_pydict()
        types += meta.get("perturbation_type", [])
        unstructured += sum(not s.strip() for s in meta["smiles"])
        skipped += read_json(report_path, "shard report", expect=list)
    report = {"split": split, "num_sites": len(source) + len(getattr(source, "_invalid_molecules", [])),
              "num_written": written, "num_skipped": len(skipped), "skipped": skipped, "num_shards": n_shards,
              "shards_done": done, "shards_reused": reused, "complete": done == n_shards,
              "perturbation_types": type_counts(types), "num_without_structure": unstructured}
    atomic_write_json(os.path.join(out, report_name(split)), report)
    return report
