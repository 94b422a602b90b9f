"""The output-folder contract of ``cloome train``, ``cloome embed`` and ``cloome prepare``: "may I resume into
this folder?" answered in one place.

* :func:`dataset_digest` - the one definition of "the same data": a digest of the rows' identity (count, sample
  keys, plates, wells, sites, molecules, doses) and, for a raw table, of its records and files.
* :func:`changed_fields` / :func:`refuse_changed_settings` - settings recorded when a folder was started are
  compared with this run's, in the form they were stored; a difference is refused naming each changed field
  (``name: recorded -> now``).
* :func:`commit_shard` / :func:`shard_problem` - a shard is written to a temporary file, renamed, and then given a
  record (``.records/{shard folder}/{shard}.json`` in the output folder: row count, SHA-256 of the file, digest of the settings of the run
  that wrote it). A rerun keeps a shard only when its record matches the file; a shard cut off mid-file, with
  another row count, from another run, or a record whose file is gone is named and recomputed. One record file
  per shard keeps each write atomic while several processes write their shards of one folder at once.

Writing goes through :func:`~cloome_hf.safe_io.atomic_write_json`, and one writer per folder is
:class:`~cloome_hf.safe_io.OutputLock`.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Iterable, Mapping

from .safe_io import atomic_write_json, json_safe, read_json

#: The columns that identify a dataset's rows (those present are digested; images are not read).
IDENTITY_COLUMNS = ("sample_key", "plate", "well", "site", "smiles", "inchikey", "concentration")
RECORDS_FOLDER = ".records"


def dataset_digest(*parts: Any) -> str:
    """A 16-hex-digit digest of ``parts``: a ``datasets.Dataset`` (its :data:`IDENTITY_COLUMNS` and length), a
    :class:`~cloome_hf.data.sources.SiteSource` (every record column and the files each site reads) or a pandas
    ``DataFrame`` (every cell). A changed dataset at the same path gives another digest."""
    import pandas as pd

    from .data.sources import SiteSource

    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, SiteSource):
            digest.update(pd.util.hash_pandas_object(part.records, index=True).values.tobytes())
            digest.update(json.dumps([part.describe_files(i) for i in range(len(part))]).encode())
        elif isinstance(part, pd.DataFrame):
            digest.update(pd.util.hash_pandas_object(part, index=True).values.tobytes())
        else:
            from .data.loader import column_values

            names = [c for c in IDENTITY_COLUMNS if c in part.column_names]
            digest.update(json.dumps([len(part), names, *(column_values(part, c) for c in names)],
                                     default=str).encode())
    return digest.hexdigest()[:16]


def as_recorded(settings: Mapping[str, Any]) -> dict[str, Any]:
    """``settings`` in the form a JSON file stores them (tuples as lists, NaN as null, paths as text)."""
    return json.loads(json.dumps(json_safe(dict(settings)), default=str))


def settings_digest(settings: Mapping[str, Any]) -> str:
    """A digest of ``settings`` as recorded: what a shard record names as the run that wrote it."""
    text = json.dumps(as_recorded(settings), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def changed_fields(recorded: Mapping[str, Any], current: Mapping[str, Any], ignore: Iterable[str] = ()
                   ) -> list[str]:
    """Each setting that differs between a folder's record and this run, as ``name: recorded -> now``."""
    current = as_recorded(current)
    skip = set(ignore)
    return [f"{k}: {recorded.get(k)!r} -> {current.get(k)!r}" for k in sorted(set(recorded) | set(current))
            if k not in skip and recorded.get(k) != current.get(k)]


def refuse_changed_settings(recorded: Mapping[str, Any], current: Mapping[str, Any], folder: str, what: str,
                            remedy: str, ignore: Iterable[str] = ()) -> None:
    """``ValueError`` naming every changed field when ``folder`` (holding ``what``) was started with other
    settings than this run's: resuming would mix two runs' outputs."""
    changed = changed_fields(recorded, current, ignore)
    if changed:
        names = ", ".join(c.split(":", 1)[0] for c in changed)
        raise ValueError(f"{folder} holds {what} made with different settings ({names}), so this run would not "
                         f"continue it: {'; '.join(changed)}. {remedy}")


# ------------------------------------------------------------------------------------------------ shards
def shard_record_path(shard_path: str) -> str:
    """``{output_dir}/.records/{shard folder}/{shard}.json`` for ``{output_dir}/{shard folder}/{shard}``: beside
    the output, not among the shards, so that globs of the shard folder see shards only."""
    folder, name = os.path.split(os.path.abspath(shard_path))
    return os.path.join(os.path.dirname(folder), RECORDS_FOLDER, os.path.basename(folder), name + ".json")


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def commit_shard(tmp_path: str, shard_path: str, rows: int, run_digest: str) -> None:
    """Rename the finished ``tmp_path`` to ``shard_path`` and record its row count, checksum and writer. A run
    killed between the two leaves a shard without a record: the rerun recomputes it."""
    record = {"file": os.path.basename(shard_path), "rows": int(rows), "sha256": file_sha256(tmp_path),
              "settings_digest": run_digest}
    os.makedirs(os.path.dirname(shard_record_path(shard_path)), exist_ok=True)
    os.replace(tmp_path, shard_path)
    atomic_write_json(shard_record_path(shard_path), record)


def shard_problem(shard_path: str, run_digest: str) -> str | None:
    """Why the kept shard ``shard_path`` may not be reused by the run of ``run_digest`` (``None``: it may)."""
    record_path = shard_record_path(shard_path)
    name = os.path.basename(shard_path)
    has_file, has_record = os.path.isfile(shard_path), os.path.isfile(record_path)
    if not has_file:
        return f"{name}: its record exists but the file is missing" if has_record else f"{name}: not written"
    if not has_record:
        return f"{name}: no record (written by an older or interrupted run)"
    try:
        record = read_json(record_path, "shard record")
    except ValueError as err:
        return f"{name}: {err}"
    if record.get("settings_digest") != run_digest:
        return f"{name}: written by another run (settings {record.get('settings_digest')}, this run {run_digest})"
    if file_sha256(shard_path) != record.get("sha256"):
        return f"{name}: its checksum does not match its record (cut off, damaged or replaced)"
    recorded = record.get("rows")
    if isinstance(recorded, bool) or not isinstance(recorded, int):
        return f"{name}: its record's row count {recorded!r} is not a number of rows (damaged record)"
    rows = _parquet_rows(shard_path)
    if rows != recorded:
        return f"{name}: holds {rows} rows, its record says {record.get('rows')}"
    return None


def discard_shard(shard_path: str) -> None:
    """Remove a shard and its record, so that it is recomputed."""
    for path in (shard_path, shard_record_path(shard_path)):
        if os.path.isfile(path):
            os.remove(path)


def _parquet_rows(path: str) -> int | None:
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path).metadata.num_rows
    except Exception:  # noqa: BLE001 - a damaged footer raises ArrowInvalid, OSError, ...
        return None


__all__ = ["IDENTITY_COLUMNS", "as_recorded", "changed_fields", "commit_shard", "dataset_digest", "discard_shard",
           "file_sha256", "refuse_changed_settings", "settings_digest", "shard_problem", "shard_record_path"]
