"""JUMP Cell Painting (cpg0016) and any CellProfiler LoadData table as a site source: :class:`JumpSource`.

A ``load_data`` table (CSV, CSV.gz or Parquet, local or at any fsspec URL) has one row per site with
``Metadata_Plate``, ``Metadata_Well``, ``Metadata_Site`` (and usually ``Metadata_Source``, ``Metadata_Batch`` and
microscope metadata) and, per channel ``DNA, ER, RNA, AGP, Mito`` (:data:`~cloome_hf.channels.JUMP_CHANNELS`),
either ``URL_Orig{channel}`` or ``FileName_Orig{channel}`` + ``PathName_Orig{channel}``. ``load_data_with_illum``
adds ``URL_Illum{channel}`` (or ``FileName_`` / ``PathName_Illum{channel}``): one ``.npy`` per plate and channel,
applied as CellProfiler's "Divide" (:mod:`cloome_hf.data.illumination`) before the 16 -> 8 bit rule.
Brightfield columns (``OrigBrightfield``, ``_H``, ``_L``) are read only when named in ``extra_channels``.

Compounds come from cpg0016's tables (``well.csv.gz``: plate, well -> ``Metadata_JCP2022``; ``compound.csv.gz``:
``Metadata_JCP2022`` -> ``Metadata_SMILES`` / ``Metadata_InChIKey``; ``plate.csv.gz``: batch and plate type), from
an in-house table joined on InChIKey / ``broad_sample``, or from the load_data table itself. Sites whose compound
has no structure are kept (type ``unknown``), so that whole plates can be embedded; every site carries
``perturbation_type`` (:mod:`cloome_hf.data.perturbations`).
"""

from __future__ import annotations

import os
from typing import Any, Collection, Mapping, Sequence

import numpy as np
import pandas as pd

from ..channels import CHANNELS, JUMP_CHANNELS
from ..image_files import decode_image_bytes, read_image_file
from .illumination import IlluminationCache, correct_illumination
from .perturbations import CONTROL_TYPE_COLUMNS, JUMP_POSITIVE_CONTROLS, NEGATIVE_CONTROLS, PERT_TYPE_COLUMNS
from .locations import resolve_table_value
from .remote import is_url, read_bytes, read_table
from .sources import SiteSource, common_columns, require_columns

#: Extra channels some sources image; read only when asked for (``extra_channels``).
BRIGHTFIELD_CHANNELS = ("Brightfield", "Brightfield_H", "Brightfield_L")
ILLUMINATION_MODES = (True, False, "auto")
_SITE_COLUMNS = ("Metadata_Plate", "Metadata_Well", "Metadata_Site")
_JOIN = (("Metadata_JCP2022", "Metadata_JCP2022"), ("Metadata_InChIKey", "Metadata_InChIKey"),
         ("Metadata_InChIKey", "InChIKey"), ("Metadata_broad_sample", "Metadata_broad_sample"),
         ("Metadata_broad_sample", "broad_sample"))
_SMILES_COLUMNS = ("Metadata_SMILES", "smiles", "SMILES")
_INCHIKEY_COLUMNS = ("Metadata_InChIKey", "InChIKey", "INCHIKEY")


def location_columns(table: pd.DataFrame, stage: str, channel: str) -> tuple[str, ...] | None:
    """The column(s) locating ``channel``'s file at ``stage`` (``"Orig"`` or ``"Illum"``): ``(URL_…,)`` or
    ``(PathName_…, FileName_…)``; ``None`` when the table has neither form."""
    if f"URL_{stage}{channel}" in table:
        return (f"URL_{stage}{channel}",)
    folder, name = f"PathName_{stage}{channel}", f"FileName_{stage}{channel}"
    return (folder, name) if folder in table and name in table else None


def _locations(table: pd.DataFrame, columns: Sequence[str], root: str | None, where: str) -> list[str]:
    """Per row, where the file is (``""`` where the table gives none), by the one resolver
    (:mod:`~cloome_hf.data.locations`): mapped under ``root``, and refused, naming the row, when it is of a scheme
    that is not allowed or leads out of ``root``."""
    if len(columns) == 1:
        raw = [v.strip() for v in table[columns[0]].astype(str)]
    else:
        raw = [("" if not n.strip() else (f"{p.strip().rstrip('/')}/{n.strip()}" if p.strip() else n.strip()))
               for p, n in zip(table[columns[0]].astype(str), table[columns[1]].astype(str))]
    column = " + ".join(columns)
    return [resolve_table_value(where, row, column, v, root) if v else "" for row, v in enumerate(raw)]


def _first_site(table: pd.DataFrame, rows=None) -> str:
    rows = np.flatnonzero(np.ones(len(table), bool) if rows is None else rows)
    if not len(rows):
        return "no site"
    r = table.iloc[rows[0]]
    return f"plate {r.Metadata_Plate}, well {r.Metadata_Well}, site {r.Metadata_Site}"


def _merge(table: pd.DataFrame, other: pd.DataFrame, other_where: str, where: str,
           keys: Sequence[str]) -> pd.DataFrame:
    """Left-join ``other``'s new columns on the ``keys`` both tables have; refuse a join that matches nothing."""
    on = [c for c in keys if c in other and c in table]
    if "Metadata_Plate" not in on:
        raise ValueError(f"{other_where} lacks Metadata_Plate; cannot join it with {where}")
    extra = [c for c in other.columns if c not in table.columns]
    merged = table.merge(other[on + extra].drop_duplicates(on), on=on, how="left", indicator=True)
    if not (merged.pop("_merge") == "both").any():
        example = other[on].iloc[0].to_dict() if len(other) else {}
        raise ValueError(f"{other_where} matches no site of {where} on {on}: the first site is "
                         f"{_first_site(table)}, the first row of {other_where} is {example}")
    for c in extra:
        merged[c] = merged[c].fillna("")
    return merged


class JumpSource(SiteSource):
    """Sites of a CellProfiler ``load_data`` table (JUMP cpg0016 layout), read from any fsspec location.

    Args:
        load_data: the table (path, URL or ``DataFrame``).
        compounds: compound table (``Metadata_JCP2022`` / InChIKey / ``broad_sample`` -> SMILES); ``None`` takes
            the SMILES from the load_data table's own ``Metadata_SMILES`` column, or none (image-only embedding).
        root: local mirror: ``s3://bucket/key`` is read from ``root/key``, relative paths from ``root/path``.
        errors: ``"raise"`` or ``"skip"`` (unreadable sites are then listed in ``skipped``).
        expected_shape: refuse sites of another ``(H, W)``.
        processor: processor whose 16 -> 8 bit settings are used.
        wells: cpg0016 ``well.csv.gz`` (source, plate, well -> ``Metadata_JCP2022``), when load_data lacks it.
        plates: cpg0016 ``plate.csv.gz`` (brings ``Metadata_Batch``, ``Metadata_PlateType``).
        illumination: ``"auto"`` (correct when the table has ``Illum`` columns), ``True`` (require them) or
            ``False``.
        extra_channels: channels read after the five stains, e.g. ``("Brightfield",)``.
        storage_options: fsspec options (``{"anon": False}``, ``{"client_kwargs": {"endpoint_url": ...}}``);
            the Cell Painting Gallery bucket is read anonymously unless credentials are given.
        retries / retry_wait: retries of transient read errors, and the first wait in seconds (doubling).
        read_threads: sites read at once.
        negative_controls / positive_controls: compound ids (``Metadata_JCP2022`` / ``Metadata_broad_sample``) of
            the controls; default DMSO and JUMP's eight positive controls.
    """

    kind = "jump"

    def __init__(self, load_data, compounds=None, root=None, errors: str = "raise", expected_shape=None,
                 processor=None, wells=None, plates=None, illumination: bool | str = "auto",
                 extra_channels: Sequence[str] = (), storage_options: Mapping[str, Any] | None = None,
                 retries: int = 3, retry_wait: float = 0.5, read_threads: int = 8,
                 negative_controls: Collection[str] = NEGATIVE_CONTROLS,
                 positive_controls: Collection[str] = tuple(JUMP_POSITIVE_CONTROLS)):
        if illumination not in ILLUMINATION_MODES or not isinstance(illumination, (bool, str)):
            raise ValueError(f"illumination must be True, False or 'auto', got {illumination!r}")
        self.storage_options = dict(storage_options or {})
        self.retries, self.retry_wait = int(retries), float(retry_wait)
        self.root = None if root is None else os.fspath(root)
        read = {"storage_options": self.storage_options, "retries": self.retries, "retry_wait": self.retry_wait}
        table, where = read_table(load_data, "load_data", **read)
        require_columns(table, list(_SITE_COLUMNS), where)
        stains = list(JUMP_CHANNELS)
        extra = [str(c) for c in extra_channels]
        if set(extra) & set(stains) or len(set(extra)) != len(extra):
            raise ValueError(f"extra_channels {extra} repeat a channel (the stains {stains} are always read)")
        orig = self._orig_columns(table, where, stains + extra)
        illum = self._illum_columns(table, where, stains, extra, illumination)
        if wells is not None:
            well_table, well_where = read_table(wells, "well", **read)
            table = _merge(table, well_table, well_where, where, ("Metadata_Source", "Metadata_Plate",
                                                                   "Metadata_Well"))
        if plates is not None:
            plate_table, plate_where = read_table(plates, "plate", **read)
            table = _merge(table, plate_table, plate_where, where, ("Metadata_Source", "Metadata_Batch",
                                                                      "Metadata_Plate"))
        table, join_column = self._join_compounds(table, where, compounds, read)
        source = table["Metadata_Source"].astype(str) + "-" if "Metadata_Source" in table else ""
        table["_key"] = source + table.Metadata_Plate.astype(str) + "-" + table.Metadata_Well.astype(str) + "-" \
            + table.Metadata_Site.astype(str)
        files = self._files_of(table, orig, illum, where)
        self._columns = {"orig": orig, "illum": illum}
        self._illumination = IlluminationCache()
        location_cols = [c for c in table.columns if c.startswith(("URL_", "FileName_", "PathName_"))]
        mapping = {"sample_key": "_key", "plate": "Metadata_Plate", "well": "Metadata_Well", "site": "Metadata_Site",
                   "smiles": "_smiles", "inchikey": "_inchikey"}
        records = common_columns(table, mapping, location_cols + ([join_column] if join_column == "Metadata_InChIKey"
                                                          else []))
        perturbation = {"negative_controls": tuple(negative_controls),
                        "positive_controls": tuple(positive_controls)}
        super().__init__(records, files, where, errors, expected_shape, processor, keep_unstructured=True,
                         channels=CHANNELS + tuple(extra), read_threads=read_threads,
                         perturbation_options=perturbation)

    # ------------------------------------------------------------ building
    @staticmethod
    def _orig_columns(table, where, channels) -> dict[str, tuple[str, ...]]:
        columns = {c: location_columns(table, "Orig", c) for c in channels}
        missing = [c for c, cols in columns.items() if cols is None]
        if missing:
            plates = sorted(set(table.Metadata_Plate.astype(str)))[:5]
            raise ValueError(
                f"{where} lacks the image column(s) of channel(s) {missing}: expected URL_Orig{{channel}} or "
                f"FileName_Orig{{channel}} + PathName_Orig{{channel}} for sites from {_first_site(table)} "
                f"(plates {plates}); it has {[c for c in table.columns if not c.startswith('Metadata_')]}")
        return columns

    @staticmethod
    def _illum_columns(table, where, stains, extra, mode) -> dict[str, tuple[str, ...]]:
        columns = {c: location_columns(table, "Illum", c) for c in stains + extra}
        present = [c for c in stains if columns[c] is not None]
        if mode is False or (mode == "auto" and not present):
            return {}
        missing = [c for c in stains if columns[c] is None]
        if missing:
            raise ValueError(
                f"{where} has no illumination column(s) for channel(s) {missing} (URL_Illum{{channel}} or "
                f"FileName_Illum{{channel}} + PathName_Illum{{channel}}) for sites from {_first_site(table)}"
                + ("" if mode is True else f", but has them for {present}")
                + "; use load_data_with_illum, or illumination=False")
        return {c: cols for c, cols in columns.items() if cols is not None}

    @staticmethod
    def _join_compounds(table, where, compounds, read) -> tuple[pd.DataFrame, str | None]:
        """``_smiles`` / ``_inchikey`` (and the compound table's control annotations) joined into ``table``."""
        table = table.copy()
        if compounds is None:
            smiles = next((c for c in _SMILES_COLUMNS if c in table), None)
            inchi = next((c for c in _INCHIKEY_COLUMNS if c in table), None)
            table["_smiles"] = table[smiles].astype(str) if smiles else ""
            table["_inchikey"] = table[inchi].astype(str) if inchi else ""
            return table, None
        comp, comp_where = read_table(compounds, "compound", **read)
        join = next(((a, b) for a, b in _JOIN if a in table and b in comp), None)
        if join is None:
            raise ValueError(f"cannot join {where} with {comp_where}: no shared compound column among "
                             f"{sorted({a for a, _ in _JOIN})} (give wells= to bring Metadata_JCP2022 in)")
        smiles_col = next((c for c in _SMILES_COLUMNS if c in comp), None)
        if smiles_col is None:
            raise ValueError(f"{comp_where} has no SMILES column (Metadata_SMILES, smiles or SMILES)")
        inchi_col = next((c for c in _INCHIKEY_COLUMNS if c in comp), None)
        comp = comp.drop_duplicates(join[1]).set_index(join[1])
        keys = table[join[0]].astype(str)
        matched = keys.isin(comp.index) & (keys.str.strip() != "")
        if not matched.any():
            given = keys[keys.str.strip() != ""]
            raise ValueError(
                f"the compound join of {where} with {comp_where} on {join[0]} matches nothing: "
                + (f"{_first_site(table, (keys == given.iloc[0]).to_numpy())} has {given.iloc[0]!r}, "
                   if len(given) else f"every site has an empty {join[0]}, e.g. {_first_site(table)}; ")
                + f"the compound table has e.g. {comp.index[:3].tolist()}")
        table["_smiles"] = keys.map(comp[smiles_col]).fillna("")
        table["_inchikey"] = keys.map(comp[inchi_col]).fillna("") if inchi_col else ""
        for names in (PERT_TYPE_COLUMNS, CONTROL_TYPE_COLUMNS):  # annotations of JUMP-Target-like tables
            col = next((c for c in names if c in comp), None)
            if col is not None and names[0] not in table:
                table[names[0]] = keys.map(comp[col]).fillna("")
        return table, join[0]

    def _files_of(self, table, orig, illum, where) -> list[dict[str, dict[str, str]]]:
        orig_loc = {c: _locations(table, cols, self.root, where) for c, cols in orig.items()}
        illum_loc = {c: _locations(table, cols, self.root, where) for c, cols in illum.items()}
        return [{"orig": {c: v[i] for c, v in orig_loc.items()}, "illum": {c: v[i] for c, v in illum_loc.items()}}
                for i in range(len(table))]

    # ------------------------------------------------------------ reading
    def describe_files(self, i: int) -> str:
        files = self._files[i]
        text = ", ".join(files["orig"].values())
        return text + (f"; illumination {', '.join(files['illum'].values())}" if files["illum"] else "")

    def _read(self, location: str) -> bytes:
        return read_bytes(location, self.storage_options, self.retries, self.retry_wait)

    def _read_channel(self, location: str) -> np.ndarray:
        """One channel file as an array: local files read directly, URLs fetched through fsspec; both decoded by
        the one image-file reader (same checks, same messages)."""
        if not is_url(location):
            return read_image_file(location)
        return decode_image_bytes(self._read(location), location)

    def _load(self, i: int) -> np.ndarray:
        plate = str(self.records.plate[i])
        files = self._files[i]
        arrays = {}
        for channel, location in files["orig"].items():
            if not location:
                raise ValueError(f"the table gives no file for channel {channel} "
                                 f"(empty {' + '.join(self._columns['orig'][channel])})")
            raw = self._read_channel(location)
            if raw.ndim != 2:
                raise ValueError(f"channel {channel} file {location} must hold one 2-D image, got shape {raw.shape}")
            if channel in files["illum"]:
                arrays[channel] = self._corrected(plate, channel, raw, files["illum"][channel])
            else:
                arrays[channel] = raw
        n = len(self.channels)
        # The order is passed per call: the stored channel order never depends on the processor given.
        return self.processor.load_uint8_site(arrays, channel_order=list(self.channels), image_mean=[1.0] * n,
                                              image_std=[1.0] * n)

    def _corrected(self, plate: str, channel: str, raw: np.ndarray, location: str) -> np.ndarray:
        if not location:
            raise ValueError(f"plate {plate} has no illumination file for channel {channel} "
                             f"(empty {' + '.join(self._columns['illum'][channel])})")
        try:
            function = self._illumination.get(plate, channel, location, raw.shape, self._read)
        except ValueError as err:
            raise ValueError(f"illumination function of plate {plate}, channel {channel}: {err}") from err
        return correct_illumination(raw, function)
