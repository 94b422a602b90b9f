"""Reading site files and tables from local paths and the URLs fsspec reaches (``s3://``, ``gs://``, ``https://``).

* Where a location leads is decided by the one resolver, :mod:`cloome_hf.data.locations` (allowed schemes, local
  paths under the root); :func:`resolve_location` is its entry point here: ``s3://bucket/key`` -> ``root/key``,
  relative paths under ``root``.
* :func:`storage_options_for` adds ``anon=True`` for the public Cell Painting Gallery bucket unless the caller
  gave credentials of their own.
* :func:`read_bytes` reads one file with retries and exponential backoff on transient errors (connection
  resets, timeouts, HTTP 5xx / 429); a permanent error (missing file, no access, HTTP 4xx) fails at once. Either
  way the error is a ``ValueError`` naming the URL; callers add the plate, well and site.
* :func:`read_table` reads a CSV / TSV (optionally ``.gz``) or Parquet table as strings (``""`` for missing), the
  way every site table of :mod:`cloome_hf.data` is read.
"""

from __future__ import annotations

import io
import os
import time
from typing import Any, Mapping
from urllib.parse import urlsplit

import pandas as pd

from .locations import local_path, parse_location, resolve, url_scheme

#: The public bucket of the Cell Painting Gallery (cpg0016-jump and friends); read anonymously by default.
CELL_PAINTING_GALLERY = "cellpainting-gallery"
#: HTTP statuses worth retrying: timeouts, throttling and server-side failures.
TRANSIENT_HTTP_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
_PERMANENT_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)
_CREDENTIAL_OPTIONS = ("anon", "key", "secret", "token", "profile", "session")
TABLE_SUFFIXES = (".csv", ".csv.gz", ".tsv", ".tsv.gz", ".parquet", ".pq")


def is_url(location: str) -> bool:
    """True for ``scheme://...`` locations other than ``file:`` URLs (any case; whether the scheme is allowed is
    the resolver's to say when the location is opened)."""
    scheme = url_scheme(str(location).strip())
    return scheme is not None and scheme != "file"


def is_table_location(location: Any) -> bool:
    """True for a local table file, or a URL ending in a table suffix (CSV, TSV, their ``.gz``, Parquet)."""
    if not isinstance(location, (str, os.PathLike)):
        return False
    location = os.fspath(location)
    if is_url(location):
        return location.lower().endswith(TABLE_SUFFIXES)
    try:
        return os.path.isfile(local_path(location))
    except ValueError:
        return False


def resolve_location(location: str, root: str | None = None) -> str:
    """Where to read ``location`` from.

    Without ``root`` the location is used as it is (a ``file:`` URL as its path). With ``root`` (a local mirror,
    or another URL prefix) a URL ``scheme://bucket/key`` becomes ``root/key`` (the mirror holds the bucket's keys,
    e.g. after ``aws s3 sync s3://cellpainting-gallery/cpg0016-jump/... root/cpg0016-jump/...``) and a relative
    path ``root/path``; whatever ends outside ``root`` is refused (:func:`cloome_hf.data.locations.resolve`).
    """
    return resolve(str(location), root)


def storage_options_for(location: str, storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``fsspec`` options for ``location``: the caller's, plus ``anon=True`` for the Cell Painting Gallery bucket
    when the caller gave no credentials (it is public; signed requests would need an AWS account)."""
    options = dict(storage_options or {})
    parts = urlsplit(str(location))
    if parts.scheme in ("s3", "s3a") and parts.netloc == CELL_PAINTING_GALLERY and not any(
            k in options for k in _CREDENTIAL_OPTIONS):
        options["anon"] = True
    return options


#: Network failures of aiohttp (fsspec's HTTP), botocore and urllib3 that are not ``OSError`` subclasses.
_TRANSIENT_ERROR_NAMES = frozenset({
    "ClientConnectionError", "ServerDisconnectedError", "ClientPayloadError", "EndpointConnectionError",
    "ConnectionClosedError", "ReadTimeoutError", "ConnectTimeoutError", "IncompleteReadError",
    "ResponseStreamingError", "ProtocolError",
})


def is_transient(error: BaseException) -> bool:
    """Whether retrying a failed read may succeed: not for missing files or refused access, nor for HTTP 4xx other
    than timeouts / throttling; yes for connection errors, timeouts, HTTP 5xx and other I/O errors."""
    if isinstance(error, _PERMANENT_ERRORS):
        return False
    status = getattr(error, "status", None)
    if status is None:
        response = getattr(error, "response", None)  # botocore ClientError
        if isinstance(response, Mapping):
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if isinstance(status, int):
        return status in TRANSIENT_HTTP_STATUS
    if isinstance(error, (OSError, ConnectionError, TimeoutError)):
        return True
    return any(cls.__name__ in _TRANSIENT_ERROR_NAMES for cls in type(error).__mro__)


def _read_once(location: str, storage_options: Mapping[str, Any]) -> bytes:
    parsed = parse_location(location)  # refuses a scheme that is not allowed, before fsspec sees it
    if not parsed.is_remote:
        with open(parsed.path, "rb") as f:
            return f.read()
    import fsspec

    fs, path = fsspec.core.url_to_fs(parsed.url, **storage_options_for(parsed.url, storage_options))
    return fs.cat_file(path)


def read_bytes(location: str, storage_options: Mapping[str, Any] | None = None, retries: int = 3,
               retry_wait: float = 0.5) -> bytes:
    """The bytes of one file, retrying transient errors ``retries`` times (waits ``retry_wait * 2**k`` s).

    Raises:
        ValueError: naming ``location`` and the cause, for a permanent error or when the retries are used up.
    """
    if retries < 0 or retry_wait < 0:
        raise ValueError(f"retries and retry_wait must be >= 0, got {retries} and {retry_wait}")
    try:
        parse_location(location)
    except ValueError as err:
        raise ValueError(f"cannot read {location!r}: it {err}") from None
    for attempt in range(retries + 1):
        try:
            return _read_once(location, storage_options or {})
        except Exception as err:  # noqa: BLE001 - every backend raises its own types; classified below
            if not is_transient(err):
                raise ValueError(f"cannot read {location}: {type(err).__name__}: {err}") from err
            if attempt == retries:
                raise ValueError(f"cannot read {location} after {retries + 1} attempts: "
                                 f"{type(err).__name__}: {err}") from err
            time.sleep(retry_wait * 2 ** attempt)
    raise AssertionError("unreachable")


def _as_strings(table: pd.DataFrame) -> pd.DataFrame:
    """Every column as text, ``""`` for missing, as ``pd.read_csv(dtype=str, keep_default_na=False)`` gives."""
    out = {}
    for c in table.columns:
        col = table[c]
        if pd.api.types.is_float_dtype(col.dtype) and col.dropna().apply(float.is_integer).all():
            col = col.astype("Int64")  # integers stored as float because of missing values: "3", not "3.0"
        out[c] = ["" if pd.isna(v) else str(v) for v in col]
    return pd.DataFrame(out, index=table.index, dtype=object)


def read_table(table: Any, what: str, storage_options: Mapping[str, Any] | None = None, retries: int = 3,
               retry_wait: float = 0.5, as_text: bool = True) -> tuple[pd.DataFrame, str]:
    """Read any table of the package: CSV, TSV (``\\t``), either gzipped, or Parquet, from a local path or a URL;
    or take a ``DataFrame`` as it is. With ``as_text`` (site / compound / well / plate tables) all values are
    strings, ``""`` where missing; without it the columns keep their types (feature tables, molecule libraries).

    Returns:
        ``(table, where)``: the table with a fresh index and the name used in error messages (the path/URL, or
        ``DataFrame.attrs["source"]``, or ``"{what} table"``).
    """
    if isinstance(table, pd.DataFrame):
        return table.reset_index(drop=True), str(table.attrs.get("source", f"{what} table"))
    location = os.fspath(table)
    try:
        parsed = parse_location(location)
    except ValueError as err:
        raise ValueError(f"{what} table {location!r} {err}") from None
    if not parsed.is_remote and not os.path.isfile(parsed.path):
        raise ValueError(f"{what} table {location} does not exist")
    data = io.BytesIO(read_bytes(location, storage_options, retries, retry_wait))
    name = location.lower()
    text = {"dtype": str, "keep_default_na": False} if as_text else {"low_memory": False}
    try:
        if name.endswith((".parquet", ".pq")):
            frame = pd.read_parquet(data)
            frame = _as_strings(frame) if as_text else frame
        else:
            sep = "\t" if name.endswith((".tsv", ".tsv.gz")) else ","
            frame = pd.read_csv(data, sep=sep, compression="gzip" if name.endswith(".gz") else None, **text)
    except Exception as err:  # noqa: BLE001 - pandas / pyarrow raise many types for damaged files
        raise ValueError(f"cannot read the {what} table {location}: {type(err).__name__}: {err}") from err
    frame = frame.reset_index(drop=True)
    frame.attrs["source"] = location
    return frame, location
