"""Readers for the on-disk Cell Painting layouts, each yielding rows of the common schema.

* :class:`BrayNpzSource` - Bray 2017 pre-processed: index CSV + ``{SAMPLE_KEY}.npz`` (key ``sample``, uint8 HxWx5);
* :class:`TiffSource` - raw: the same index with ``IMG_{channel}`` file stems/paths, one 16-bit TIFF per channel;
* :class:`JumpSource` - JUMP cpg0016: ``load_data`` CSV + compound table joined by ``Metadata_JCP2022`` or
  InChIKey.

A source holds the per-site metadata (``records``: a ``pandas.DataFrame`` in the common columns plus the
source's extra metadata) and reads one site at a time through the processor
(:meth:`CloomeImageProcessor.load_uint8_site`: channel ordering + the published 16 -> 8 bit rule). Every
problem raises ``ValueError`` naming the row, sample key and file; with ``errors="skip"`` the site is left
out and recorded in :attr:`SiteSource.skipped` instead. Rows whose SMILES RDKit rejects are excluded when the
source is built (``errors="raise"`` aborts naming the first).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd

from .molecules import inchikeys_from_smiles, invalid_smiles
from ..channels import CHANNELS, JUMP_CHANNELS
from .schema import encode_image

ERROR_POLICIES = ("raise", "skip")


@dataclass
class SkippedSite:
    """A site left out, and why (written to the prepare report)."""

    row: int
    sample_key: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _read_table(table, what: str) -> tuple[pd.DataFrame, str]:
    if isinstance(table, pd.DataFrame):
        return table.reset_index(drop=True), f"{what} table"
    path = os.fspath(table)
    if not os.path.isfile(path):
        raise ValueError(f"{what} file not found: {path}")
    sep = "\t" if path.endswith((".tsv", ".tsv.gz")) else ","
    return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False).reset_index(drop=True), path


def _require(table: pd.DataFrame, columns: Sequence[str], where: str) -> None:
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
    """Base class: ``records`` (one row per site) + :meth:`read_image`. Subclasses fill ``_files``."""

    kind = "base"

    def __init__(self, records: pd.DataFrame, files: list[Any], where: str, errors: str = "raise",
                 expected_shape: Sequence[int] | None = None, processor=None):
        if errors not in ERROR_POLICIES:
            raise ValueError(f"errors must be one of {ERROR_POLICIES}, got {errors!r}")
        self.where = where
        self.errors = errors
        self.expected_shape = tuple(expected_shape) if expected_shape is not None else None
        self._processor = processor
        self.skipped: list[SkippedSite] = []
        records = records.reset_index(drop=True)
        records["sample_key"] = records["sample_key"].astype(str)
        dup = records["sample_key"][records["sample_key"].duplicated()]
        if len(dup):
            raise ValueError(f"{where}: sample key {dup.iloc[0]!r} appears more than once (row {dup.index[0]})")
        keep = np.ones(len(records), dtype=bool)
        for i in invalid_smiles(records["smiles"].tolist()):
            smi = records.smiles[i]
            self._fail(i, records.sample_key[i], f"invalid SMILES {smi!r}" if smi.strip() else "no SMILES")
            keep[i] = False
        if "inchikey" not in records:
            records["inchikey"] = ""
        missing = np.flatnonzero(keep & (records["inchikey"].astype(str).str.strip() == "").to_numpy())
        if len(missing):  # keys are computed only where the source gives none
            records.loc[missing, "inchikey"] = inchikeys_from_smiles(records.smiles[missing].tolist())
        self._invalid_molecules = list(self.skipped)  # rows excluded for their molecule, for the reports
        self.source_rows = np.flatnonzero(keep)  # row of the input table, for error messages
        self.records = records[keep].reset_index(drop=True)
        self._files = [files[i] for i in self.source_rows]

    # -------------------------------------------------------------- errors
    def _fail(self, row: int, sample_key: str, reason: str) -> None:
        message = f"{self.where}, row {row} (sample {sample_key!r}): {reason}"
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
        """uint8 ``(C, H, W)`` of record ``i``; ``ValueError`` naming row, sample and file(s) on any problem."""
        key = self.records.sample_key[i]
        prefix = f"{self.where}, row {self.source_rows[i]} (sample {key!r})"
        try:
            image = self._load(i)
        except ValueError as err:
            raise ValueError(f"{prefix}, file(s) {self.describe_files(i)}: {err}") from err
        if image.ndim != 3 or image.shape[0] != len(CHANNELS):
            raise ValueError(f"{prefix}: image of shape {image.shape} is not {len(CHANNELS)} x H x W "
                             f"(file(s) {self.describe_files(i)})")
        if self.expected_shape is not None and tuple(image.shape[1:]) != self.expected_shape[-2:]:
            raise ValueError(f"{prefix}: image is {image.shape[1]}x{image.shape[2]}, expected "
                             f"{self.expected_shape[-2]}x{self.expected_shape[-1]} (file(s) {self.describe_files(i)})")
        blank = [CHANNELS[c] for c in range(image.shape[0]) if not image[c].any()]
        if blank:
            raise ValueError(f"{prefix}: channel(s) {blank} are all zero (file(s) {self.describe_files(i)})")
        return image

    def iter_rows(self, rows: Sequence[int] | None = None) -> Iterator[dict[str, Any]]:
        """Yield schema rows (dicts with ``image`` bytes and ``image_shape``); skips per the error policy."""
        cols = list(self.records.columns)
        for i in range(len(self.records)) if rows is None else rows:
            try:
                image = self.read_image(i)
            except ValueError as err:
                if self.errors == "raise":
                    raise
                self.skipped.append(SkippedSite(int(self.source_rows[i]), str(self.records.sample_key[i]), str(err)))
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


def _common(table: pd.DataFrame, mapping: Mapping[str, str], drop: Sequence[str]) -> pd.DataFrame:
    """Rename source columns to the common ones; keep the other columns as typed extras."""
    common = pd.DataFrame({new: table[old].astype(str) for new, old in mapping.items() if old in table})
    common["site"] = pd.to_numeric(common["site"], errors="raise").astype(np.int32)
    extras = table.drop(columns=[c for c in list(mapping.values()) + list(drop) if c in table])
    return pd.concat([common, _typed_extras(extras)], axis=1)


_BRAY_MAPPING = {"sample_key": "SAMPLE_KEY", "plate": "PLATE_ID", "well": "WELL_POSITION", "site": "SITE",
                 "smiles": "SMILES", "inchikey": "INCHIKEY"}


class BrayNpzSource(SiteSource):
    """Bray 2017 pre-processed layout: ``index`` CSV + ``root/{SAMPLE_KEY}.npz``."""

    kind = "bray_npz"

    def __init__(self, index, root, errors: str = "raise", expected_shape=None, processor=None):
        table, where = _read_table(index, "index")
        _require(table, ["SAMPLE_KEY", "PLATE_ID", "WELL_POSITION", "SITE", "SMILES"], where)
        files = [os.path.join(os.fspath(root), f"{k}.npz") for k in table.SAMPLE_KEY]
        records = _common(table, _BRAY_MAPPING, [f"IMG_{c}" for c in CHANNELS])
        super().__init__(records, files, where, errors, expected_shape, processor)

    def _load(self, i: int) -> np.ndarray:
        if not os.path.isfile(self._files[i]):
            raise ValueError(f"npz file not found: {self._files[i]}")
        return super()._load(i)


def _resolve_file(value: str, root: str | None, plate: str) -> str | None:
    """Find a channel file given as an absolute path, a path under root, or a stem (``.tif``/``.tiff`` added),
    also under ``root/{plate}/``."""
    bases = [value] if os.path.isabs(value) or root is None else [os.path.join(root, value),
                                                                   os.path.join(root, plate, value)]
    for base in bases:
        for candidate in (base, base + ".tif", base + ".tiff"):
            if os.path.isfile(candidate):
                return candidate
    return None


class TiffSource(SiteSource):
    """Raw layout: the Bray index with ``IMG_{channel}`` columns (file stems or paths) resolved under ``root``."""

    kind = "tiff"

    def __init__(self, index, root=None, errors: str = "raise", expected_shape=None, processor=None):
        table, where = _read_table(index, "index")
        channel_cols = [f"IMG_{c}" for c in CHANNELS]
        _require(table, ["SAMPLE_KEY", "PLATE_ID", "WELL_POSITION", "SITE", "SMILES"] + channel_cols, where)
        self.root = None if root is None else os.fspath(root)
        files = [{c: str(table[f"IMG_{c}"][i]) for c in CHANNELS} for i in range(len(table))]
        records = _common(table, _BRAY_MAPPING, channel_cols)
        super().__init__(records, files, where, errors, expected_shape, processor)

    def _load(self, i: int) -> np.ndarray:
        plate = str(self.records.plate[i])
        resolved = {}
        for c, value in self._files[i].items():
            path = _resolve_file(value, self.root, plate)
            if path is None:
                raise ValueError(f"channel {c} file not found: {value!r} (looked under {self.root})")
            resolved[c] = path
        self._files[i] = resolved  # error messages name the resolved files
        return self.processor.load_uint8_site(resolved)


class JumpSource(SiteSource):
    """JUMP cpg0016 layout: a ``load_data`` CSV joined with a compound table.

    The join key is the first of ``Metadata_JCP2022``, ``Metadata_InChIKey``/``InChIKey``, ``Metadata_broad_sample``/
    ``broad_sample`` present in both tables (give cpg0016's ``well.csv`` as ``wells`` to bring
    ``Metadata_JCP2022`` in by plate and well); the compound table's SMILES column is ``Metadata_SMILES``, ``smiles``
    or ``SMILES``. ``PathName_Orig*`` may be absolute, relative to ``root``, or ``s3://bucket/...`` (then the part
    after the bucket is looked up under ``root``). Sites whose compound has no SMILES are skipped/raised.
    """

    kind = "jump"
    _JOIN = (("Metadata_JCP2022", "Metadata_JCP2022"), ("Metadata_InChIKey", "Metadata_InChIKey"),
             ("Metadata_InChIKey", "InChIKey"), ("Metadata_broad_sample", "Metadata_broad_sample"),
             ("Metadata_broad_sample", "broad_sample"))

    def __init__(self, load_data, compounds, root=None, errors: str = "raise", expected_shape=None, processor=None,
                 wells=None):
        table, where = _read_table(load_data, "load_data")
        comp, comp_where = _read_table(compounds, "compound")
        file_cols = [f"{k}_Orig{j}" for j in JUMP_CHANNELS for k in ("FileName", "PathName")]
        _require(table, ["Metadata_Plate", "Metadata_Well", "Metadata_Site"] + file_cols, where)
        if wells is not None:  # cpg0016's well.csv: (source,) plate, well -> Metadata_JCP2022
            well_table, well_where = _read_table(wells, "well")
            on = [c for c in ("Metadata_Source", "Metadata_Plate", "Metadata_Well") if c in well_table and c in table]
            _require(well_table, ["Metadata_Plate", "Metadata_Well"], well_where)
            extra = [c for c in well_table.columns if c not in table.columns]
            table = table.merge(well_table[on + extra].drop_duplicates(on), on=on, how="left")
            for c in extra:
                table[c] = table[c].fillna("")
        join = next(((a, b) for a, b in self._JOIN if a in table and b in comp), None)
        if join is None:
            raise ValueError(f"cannot join {where} with {comp_where}: no shared compound column among "
                             f"{sorted({a for a, _ in self._JOIN})}")
        smiles_col = next((c for c in ("Metadata_SMILES", "smiles", "SMILES") if c in comp), None)
        if smiles_col is None:
            raise ValueError(f"{comp_where} has no SMILES column (Metadata_SMILES, smiles or SMILES)")
        inchi_col = next((c for c in ("Metadata_InChIKey", "InChIKey", "INCHIKEY") if c in comp), None)
        comp = comp.drop_duplicates(join[1]).set_index(join[1])
        ckeys = table[join[0]].astype(str)
        table = table.copy()
        table["_smiles"] = ckeys.map(comp[smiles_col]).fillna("")
        table["_inchikey"] = ckeys.map(comp[inchi_col]).fillna("") if inchi_col else ""
        source = table["Metadata_Source"].astype(str) + "-" if "Metadata_Source" in table else ""
        table["_key"] = source + table.Metadata_Plate.astype(str) + "-" + table.Metadata_Well.astype(str) + "-" \
            + table.Metadata_Site.astype(str)
        self.root = None if root is None else os.fspath(root)
        files = [{JUMP_CHANNELS[j]: self._path(table[f"PathName_Orig{j}"][i], table[f"FileName_Orig{j}"][i])
                  for j in JUMP_CHANNELS} for i in range(len(table))]
        mapping = {"sample_key": "_key", "plate": "Metadata_Plate", "well": "Metadata_Well", "site": "Metadata_Site",
                   "smiles": "_smiles", "inchikey": "_inchikey"}
        records = _common(table, mapping, file_cols + ([join[0]] if join[0] == "Metadata_InChIKey" else []))
        super().__init__(records, files, where, errors, expected_shape, processor)

    def _path(self, folder: str, name: str) -> str:
        folder = str(folder)
        if folder.startswith("s3://"):
            folder = folder[5:].split("/", 1)[1] if "/" in folder[5:] else ""
        path = os.path.join(folder, str(name))
        return path if os.path.isabs(path) or self.root is None else os.path.join(self.root, path)

    def _load(self, i: int) -> np.ndarray:
        for c, path in self._files[i].items():
            if not os.path.isfile(path):
                raise ValueError(f"channel {c} file not found: {path}")
        return super()._load(i)


def open_source(kind: str, *, index=None, root=None, load_data=None, compounds=None, wells=None,
                errors: str = "raise", expected_shape=None, processor=None) -> SiteSource:
    """Build a source by name: ``"bray_npz"`` (index, root), ``"tiff"`` (index, root), ``"jump"`` (load_data,
    compounds, root) or ``"auto"`` (``jump`` if ``load_data`` is given, else ``bray_npz`` when
    ``root/{first SAMPLE_KEY}.npz`` exists, else ``tiff``); ``wells``: JUMP well table (see :class:`JumpSource`)."""
    if kind == "auto":
        if load_data is not None:
            kind = "jump"
        else:
            if index is None:
                raise ValueError("give index= (Bray / TIFF layouts) or load_data= (JUMP layout)")
            first = (_read_table(index, "index")[0].get("SAMPLE_KEY", pd.Series([""]))).iloc[:1].tolist()
            npz = root is not None and first and os.path.isfile(os.path.join(os.fspath(root), f"{first[0]}.npz"))
            kind = "bray_npz" if npz else "tiff"
    if kind == "bray_npz":
        return BrayNpzSource(index, root, errors, expected_shape, processor)
    if kind == "tiff":
        return TiffSource(index, root, errors, expected_shape, processor)
    if kind == "jump":
        if load_data is None or compounds is None:
            raise ValueError("the 'jump' layout needs load_data= and compounds=")
        return JumpSource(load_data, compounds, root, errors, expected_shape, processor, wells)
    raise ValueError(f"unknown source kind {kind!r}; expected 'bray_npz', 'tiff', 'jump' or 'auto'")
