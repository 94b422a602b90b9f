"""Readers for the on-disk Cell Painting layouts, each yielding rows of the common schema.

* :class:`BrayNpzSource` - Bray 2017 pre-processed: index CSV + ``{SAMPLE_KEY}.npz`` (key ``sample``, uint8 HxWx5);
* :class:`TiffSource` - raw: the same index with ``IMG_{channel}`` file stems/paths, one 16-bit TIFF per channel;
* :class:`~cloome_hf.data.jump.JumpSource` - JUMP cpg0016 / CellProfiler LoadData tables (``URL_Orig*`` or
  ``FileName_Orig*`` + ``PathName_Orig*``, with illumination correction, any fsspec URL), see
  :mod:`cloome_hf.data.jump`.

A source holds the per-site metadata (``records``: a ``pandas.DataFrame`` in the common columns plus the
source's extra metadata and ``perturbation_type``) and reads sites through the processor
(:meth:`CloomeImageProcessor.load_uint8_site`: channel ordering + the published 16 -> 8 bit rule), on
``read_threads`` threads at once. Every problem raises ``ValueError`` naming the row, sample, plate, well, site
and file; with ``errors="skip"`` the site is left out and recorded in :attr:`SiteSource.skipped` instead. Rows
whose SMILES RDKit rejects are excluded when the source is built (``errors="raise"`` aborts naming the first).
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd

from ..channels import CHANNELS
from .molecules import inchikeys_from_smiles, invalid_smiles
from .perturbations import perturbation_types
from .locations import parse_location, resolve_table_value
from .remote import is_url, read_table
from .schema import CONCENTRATION, CONCENTRATION_SOURCE_COLUMNS, encode_image

ERROR_POLICIES = ("raise", "skip")


@dataclass
class SkippedSite:
    """A site left out, and why (written to the prepare report)."""

    row: int
    sample_key: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def require_columns(table: pd.DataFrame, columns: Sequence[str], where: str) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"{where} lacks required column(s) {missing}; has {list(table.columns)}")


def _typed_extras(table: pd.DataFrame) -> pd.DataFrame:
    """Extra metadata columns with a type that is stable across shards: integer columns (also all-digit
    text columns) become int64, float columns float64, everything else strings ("" for missing)."""
    out = {}
    for c in table.columns:
        col = table[c]
        if pd.api.types.is_integer_dtype(col.dtype):
            out[c] = col.astype(np.int64)
        elif pd.api.types.is_float_dtype(col.dtype):
            out[c] = col.astype(np.float64)
        elif len(col) and all(isinstance(v, str) and v.lstrip("-").isdigit() and len(v) < 18 for v in col):
            out[c] = col.astype(np.int64)
        else:
            out[c] = pd.Series([v if isinstance(v, str) else ("" if pd.isna(v) else str(v)) for v in col],
                               index=col.index, dtype=object)
    return pd.DataFrame(out, index=table.index)


class SiteSource:
    """Base class: ``records`` (one row per site) + :meth:`read_image`. Subclasses fill ``_files``.

    Args:
        records: one row per site in the common columns (``sample_key, plate, well, site, smiles``, optionally
            ``inchikey``) plus extra metadata.
        files: per record, what :meth:`_load` reads (a path, or ``{channel: location}``).
        where: the input's name for error messages.
        errors: ``"raise"`` or ``"skip"``.
        expected_shape: refuse sites of another ``(H, W)``.
        processor: the :class:`~cloome_hf.image_processing_cloome.CloomeImageProcessor` converting to 8 bit.
        keep_unstructured: keep rows without a SMILES (as ``smiles == inchikey == ""``, type ``unknown``) instead of
            excluding them; rows with an invalid SMILES are excluded either way.
        channels: channel order of the images read.
        read_threads: sites read at once by :meth:`iter_rows` (network latency hides behind the others).
        perturbation_options: keyword arguments of :func:`~cloome_hf.data.perturbations.perturbation_types`.
    """

    kind = "base"

    def __init__(self, records: pd.DataFrame, files: list[Any], where: str, errors: str = "raise",
                 expected_shape: Sequence[int] | None = None, processor=None, keep_unstructured: bool = False,
                 channels: Sequence[str] = CHANNELS, read_threads: int = 1,
                 perturbation_options: Mapping[str, Any] | None = None):
        if errors not in ERROR_POLICIES:
            raise ValueError(f"errors must be one of {ERROR_POLICIES}, got {errors!r}")
        if read_threads < 1:
            raise ValueError(f"read_threads must be >= 1, got {read_threads}")
        self.where = where
        self.errors = errors
        self.expected_shape = tuple(expected_shape) if expected_shape is not None else None
        self.channels = tuple(channels)
        self.read_threads = int(read_threads)
        self._processor = processor
        self.skipped: list[SkippedSite] = []
        records = records.reset_index(drop=True)
        records["sample_key"] = records["sample_key"].astype(str)
        dup = records["sample_key"][records["sample_key"].duplicated()]
        if len(dup):
            raise ValueError(f"{where}: sample key {dup.iloc[0]!r} appears more than once (row {dup.index[0]})")
        keep = np.ones(len(records), dtype=bool)
        structured = (records["smiles"].astype(str).str.strip() != "").to_numpy()
        checked = np.flatnonzero(structured) if keep_unstructured else np.arange(len(records))
        for j in invalid_smiles(records["smiles"][checked].tolist()):
            i = int(checked[j])
            smi = records.smiles[i]
            self._fail(i, records.sample_key[i], f"invalid SMILES {smi!r}" if smi.strip() else "no SMILES",
                       self._site_of(records, i))
            keep[i] = False
        if "inchikey" not in records:
            records["inchikey"] = ""
        records.loc[~structured, "inchikey"] = ""
        missing = np.flatnonzero(keep & structured & (records["inchikey"].astype(str).str.strip() == "").to_numpy())
        if len(missing):  # keys are computed only where the source gives none
            records.loc[missing, "inchikey"] = inchikeys_from_smiles(records.smiles[missing].tolist())
        self._invalid_molecules = list(self.skipped)  # rows excluded for their molecule, for the reports
        self.source_rows = np.flatnonzero(keep)  # row of the input table, for error messages
        records = records[keep].reset_index(drop=True)
        if "perturbation_type" not in records:
            records["perturbation_type"] = perturbation_types(records, structured[keep], where,
                                                              **(perturbation_options or {}))
        self.records = with_concentration(records, where)
        self._files = [files[i] for i in self.source_rows]

    # -------------------------------------------------------------- errors
    @staticmethod
    def _site_of(records: pd.DataFrame, i: int) -> str:
        return f"plate {records.plate[i]}, well {records.well[i]}, site {records.site[i]}"

    def site_label(self, i: int) -> str:
        """``"{where}, row R (sample 'K') at plate P, well W, site S"`` of record ``i``, for error messages."""
        return (f"{self.where}, row {self.source_rows[i]} (sample {self.records.sample_key[i]!r}) at "
                f"{self._site_of(self.records, i)}")

    def _fail(self, row: int, sample_key: str, reason: str, site: str = "") -> None:
        message = f"{self.where}, row {row} (sample {sample_key!r}){' at ' + site if site else ''}: {reason}"
        if self.errors == "raise":
            raise ValueError(message)
        self.skipped.append(SkippedSite(int(row), str(sample_key), reason))

    # -------------------------------------------------------------- reading
    @property
    def processor(self):
        if self._processor is None:
            from cloome_hf.image_processing_cloome import CloomeImageProcessor

            self._processor = CloomeImageProcessor(channel_order=CHANNELS)
        return self._processor

    @property
    def extra_columns(self) -> list[str]:
        return [c for c in self.records.columns if c not in ("sample_key", "plate", "well", "site", "smiles",
                                                                "inchikey")]

    def __len__(self) -> int:
        return len(self.records)

    def _load(self, i: int) -> np.ndarray:
        return self.processor.load_uint8_site(self._files[i])

    def describe_files(self, i: int) -> str:
        f = self._files[i]
        return ", ".join(map(os.fspath, f.values())) if isinstance(f, Mapping) else os.fspath(f)

    def read_image(self, i: int) -> np.ndarray:
        """uint8 ``(C, H, W)`` of record ``i``; ``ValueError`` naming row, sample, plate, well, site and file(s)."""
        prefix = self.site_label(i)
        try:
            image = self._load(i)
        except ValueError as err:
            raise ValueError(f"{prefix}, file(s) {self.describe_files(i)}: {err}") from err
        n = len(self.channels)
        if image.ndim != 3 or image.shape[0] != n:
            raise ValueError(f"{prefix}: image of shape {image.shape} is not {n} x H x W "
                             f"(file(s) {self.describe_files(i)})")
        if self.expected_shape is not None and tuple(image.shape[1:]) != self.expected_shape[-2:]:
            raise ValueError(f"{prefix}: image is {image.shape[1]}x{image.shape[2]}, expected "
                             f"{self.expected_shape[-2]}x{self.expected_shape[-1]} (file(s) {self.describe_files(i)})")
        blank = [self.channels[c] for c in range(image.shape[0]) if not image[c].any()]
        if blank:
            raise ValueError(f"{prefix}: channel(s) {blank} are all zero (file(s) {self.describe_files(i)})")
        return image

    def _try_read(self, i: int) -> np.ndarray | ValueError:
        try:
            return self.read_image(i)
        except ValueError as err:
            return err

    def _images(self, rows: Sequence[int]) -> Iterator[tuple[int, np.ndarray | ValueError]]:
        """``(record, image or error)`` in the order of ``rows``; ``read_threads`` sites in flight at once."""
        if self.read_threads == 1:
            for i in rows:
                yield i, self._try_read(i)
            return
        with ThreadPoolExecutor(self.read_threads, thread_name_prefix="cloome-read") as pool:
            pending: deque = deque()
            for i in rows:
                pending.append((i, pool.submit(self._try_read, i)))
                if len(pending) >= 2 * self.read_threads:
                    j, future = pending.popleft()
                    yield j, future.result()
            while pending:
                j, future = pending.popleft()
                yield j, future.result()

    def iter_rows(self, rows: Sequence[int] | None = None) -> Iterator[dict[str, Any]]:
        """Yield schema rows (dicts with ``image`` bytes and ``image_shape``); skips per the error policy."""
        cols = list(self.records.columns)
        for i, image in self._images(range(len(self.records)) if rows is None else rows):
            if isinstance(image, ValueError):
                if self.errors == "raise":
                    raise image
                self.skipped.append(SkippedSite(int(self.source_rows[i]), str(self.records.sample_key[i]),
                                                str(image)))
                continue
            row = {c: self.records[c].iat[i] for c in cols}
            row = {c: (v.item() if isinstance(v, np.generic) else v) for c, v in row.items()}
            row["image"], row["image_shape"] = encode_image(image)
            yield row

    def extra_features(self) -> dict[str, Any]:
        """``datasets`` features of the extra metadata columns."""
        import datasets

        def feature(dtype):
            if pd.api.types.is_integer_dtype(dtype):
                return datasets.Value("int64")
            return datasets.Value("float64") if pd.api.types.is_float_dtype(dtype) else datasets.Value("string")

        return {c: feature(self.records[c].dtype) for c in self.extra_columns}

    def features(self):
        from .schema import features

        return features(self.extra_features())


def with_concentration(records: pd.DataFrame, where: str) -> pd.DataFrame:
    """``records`` with the schema's ``concentration`` column (uM) from the first dose column it has (see
    :data:`~cloome_hf.data.schema.CONCENTRATION_SOURCE_COLUMNS`), unchanged when it has none; a dose that is not
    a number >= 0 (empty = unknown) is a ``ValueError`` naming the sample."""
    from ..featurization_cloome import check_concentrations

    column = next((c for c in CONCENTRATION_SOURCE_COLUMNS if c in records.columns), None)
    if column is None:
        return records
    values = [np.nan if isinstance(v, str) and not v.strip() else v for v in records[column]]
    doses = check_concentrations(values, where=f"{where}, column {column!r}",
                                 labels=[f"sample {k}" for k in records["sample_key"]])
    records = records.copy()
    records[CONCENTRATION] = doses * CONCENTRATION_SOURCE_COLUMNS[column]
    return records


def common_columns(table: pd.DataFrame, mapping: Mapping[str, str], drop: Sequence[str]) -> pd.DataFrame:
    """Rename source columns to the common ones; keep the other columns as typed extras."""
    common = pd.DataFrame({new: table[old].astype(str) for new, old in mapping.items() if old in table})
    site = pd.to_numeric(common["site"], errors="coerce")
    if site.isna().any() or (site % 1 != 0).any():
        row = int(np.flatnonzero((site.isna() | (site % 1 != 0)).to_numpy())[0])
        raise ValueError(f"row {row}: site {common['site'][row]!r} is not an integer (plate "
                         f"{common['plate'][row]}, well {common['well'][row]})")
    common["site"] = site.astype(np.int32)
    extras = table.drop(columns=[c for c in list(mapping.values()) + list(drop) if c in table])
    return pd.concat([common, _typed_extras(extras)], axis=1)


_BRAY_MAPPING = {"sample_key": "SAMPLE_KEY", "plate": "PLATE_ID", "well": "WELL_POSITION", "site": "SITE",
                 "smiles": "SMILES", "inchikey": "INCHIKEY"}


class BrayNpzSource(SiteSource):
    """Bray 2017 pre-processed layout: ``index`` CSV + ``root/{SAMPLE_KEY}.npz``."""

    kind = "bray_npz"

    def __init__(self, index, root, errors: str = "raise", expected_shape=None, processor=None):
        table, where = read_table(index, "index")
        require_columns(table, ["SAMPLE_KEY", "PLATE_ID", "WELL_POSITION", "SITE", "SMILES"], where)
        self.root = os.fspath(root)
        files = [(resolve_table_value(where, row, "SAMPLE_KEY", str(key), self.root) if str(key).strip()
                  else os.path.join(self.root, "")) + ".npz" for row, key in enumerate(table.SAMPLE_KEY)]
        records = common_columns(table, _BRAY_MAPPING, [f"IMG_{c}" for c in CHANNELS])
        super().__init__(records, files, where, errors, expected_shape, processor)

    def _load(self, i: int) -> np.ndarray:
        if not os.path.isfile(self._files[i]):
            raise ValueError(f"npz file not found: {self._files[i]}")
        return super()._load(i)


def _tiff_bases(where: str, row: int, column: str, value: str, root: str | None, plate: str) -> list[str]:
    """Where a channel file given as a path or stem may be: the value resolved under ``root`` and, for a relative
    value, under ``root/{plate}/`` too; every candidate by the resolver's rule (a URL needs ``root``, the local
    mirror, as a TIFF index reads local files). An empty value has none: its site is not found when read."""
    if not value.strip():
        return []
    first = resolve_table_value(where, row, column, value, root)
    if root is None and is_url(first):
        raise ValueError(f"{where}, row {row}: {column} {value!r} is a URL; a TIFF index reads local files (give "
                         "root, the local mirror of its bucket, or use a load_data table)")
    location = parse_location(value)
    if root is None or location.is_remote or os.path.isabs(location.path):
        return [first]  # the value names one place
    return [first, resolve_table_value(where, row, f"PLATE_ID + {column}", f"{plate}/{location.path}", root)]


def _resolve_file(bases: Sequence[str]) -> str | None:
    """The first existing file of ``bases``, each as given or as a stem (``.tif``/``.tiff`` added)."""
    for base in bases:
        for candidate in (base, base + ".tif", base + ".tiff"):
            if os.path.isfile(candidate):
                return candidate
    return None


class TiffSource(SiteSource):
    """Raw layout: the Bray index with ``IMG_{channel}`` columns (file stems or paths) resolved under ``root``."""

    kind = "tiff"

    def __init__(self, index, root=None, errors: str = "raise", expected_shape=None, processor=None):
        table, where = read_table(index, "index")
        channel_cols = [f"IMG_{c}" for c in CHANNELS]
        require_columns(table, ["SAMPLE_KEY", "PLATE_ID", "WELL_POSITION", "SITE", "SMILES"] + channel_cols, where)
        self.root = None if root is None else os.fspath(root)
        files = [{c: str(table[f"IMG_{c}"][i]) for c in CHANNELS} for i in range(len(table))]
        bases = [{c: _tiff_bases(where, row, f"IMG_{c}", value, self.root, str(table.PLATE_ID[row]))
                  for c, value in channels.items()} for row, channels in enumerate(files)]
        records = common_columns(table, _BRAY_MAPPING, channel_cols)
        super().__init__(records, files, where, errors, expected_shape, processor)
        self._bases = [bases[row] for row in self.source_rows]  # where each kept site's channels may be

    def _load(self, i: int) -> np.ndarray:
        resolved = {}
        for c, value in self._files[i].items():
            path = _resolve_file(self._bases[i][c])
            if path is None:
                raise ValueError(f"channel {c} file not found: {value!r} (looked under {self.root})")
            resolved[c] = path
        self._files[i] = resolved  # error messages name the resolved files
        return self.processor.load_uint8_site(resolved)
