"""What perturbed each site: ``perturbation_type`` in ``trt``, ``negcon``, ``poscon`` or ``unknown``.

* ``negcon`` / ``poscon``: negative / positive controls. They come from ``Metadata_control_type`` or
  ``Metadata_pert_type`` where the tables carry them (JUMP pilot data, JUMP-Target metadata, LINCS), else from
  the compound's identity: DMSO (JUMP ``JCP2022_033924``, or its InChIKey) is the negative control, and the eight
  compounds JUMP put on every compound plate (:data:`JUMP_POSITIVE_CONTROLS`) are the positive controls.
* ``trt``: any other site whose compound has a structure (a SMILES).
* ``unknown``: no structure (ORF / CRISPR reagents, untreated wells, compounds the tables give no SMILES for), or
  a control of unspecified kind. Such sites are embedded but never trained on.

:func:`contrastive_training_sites` selects the rows contrastive training uses: sites with a structure, without
the negative controls unless asked (a DMSO "molecule" with thousands of sites would dominate the batches and
teach nothing), and counts what it left out.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Collection, Sequence

import numpy as np
import pandas as pd

from .schema import PERTURBATION_TYPES

#: JUMP's id of DMSO, the negative control of every compound plate.
DMSO_JCP2022 = "JCP2022_033924"
#: Compound ids read as negative controls by default (LINCS / Broad plate maps write the vehicle as "DMSO").
NEGATIVE_CONTROLS = (DMSO_JCP2022, "DMSO")
#: Columns whose compound ids are matched against the control lists, in this order.
COMPOUND_ID_COLUMNS = ("Metadata_JCP2022", "Metadata_broad_sample", "broad_sample")
DMSO_INCHIKEY = "IAZDPXIOMUYVGZ-UHFFFAOYSA-N"
#: The positive controls on JUMP cpg0016 compound plates (JCP2022 id -> name), as the JUMP consortium lists them.
JUMP_POSITIVE_CONTROLS: dict[str, str] = {
    "JCP2022_085227": "aloxistatin", "JCP2022_037716": "AMG900", "JCP2022_025848": "dexamethasone",
    "JCP2022_046054": "FK-866", "JCP2022_035095": "LY2109761", "JCP2022_064022": "NVS-PAK1-1",
    "JCP2022_050797": "quinidine", "JCP2022_012818": "TC-S-7004",
}
#: Values taken as "not given" in metadata columns ("NA" is how the JUMP-Target tables write it).
_MISSING = {"", "na", "nan", "none", "null"}
#: Spellings of the annotation columns (JUMP ``Metadata_*``, JUMP-Target / LINCS without the prefix).
PERT_TYPE_COLUMNS = ("Metadata_pert_type", "pert_type")
CONTROL_TYPE_COLUMNS = ("Metadata_control_type", "control_type")
_PERT_TYPE_VALUES = {"trt": "trt", "trt_cp": "trt", "treatment": "trt", "negcon": "negcon", "ctl_vehicle": "negcon",
                     "poscon": "poscon", "control": "", "empty": "unknown", "untreated": "unknown"}


def _control_kind(value: str, column: str, where: str) -> str:
    """``negcon`` / ``poscon`` / ``trt`` / ``unknown`` / ``""`` (no information) of one annotation value."""
    v = str(value).strip().lower()
    if v in _MISSING:
        return ""
    if v.startswith("negcon"):
        return "negcon"
    if v.startswith("poscon"):  # JUMP-Target: poscon_orf, poscon_cp, poscon_diverse
        return "poscon"
    if v in _PERT_TYPE_VALUES:
        return _PERT_TYPE_VALUES[v]
    raise ValueError(f"{where}: unrecognised {column} value {value!r}; expected negcon*, poscon*, "
                     f"{sorted(k for k in _PERT_TYPE_VALUES if k not in ('negcon', 'poscon'))} or empty")


def perturbation_types(
    table: pd.DataFrame,
    has_structure: np.ndarray,
    where: str = "table",
    compound_columns: Sequence[str] = COMPOUND_ID_COLUMNS,
    negative_controls: Collection[str] = NEGATIVE_CONTROLS,
    positive_controls: Collection[str] = tuple(JUMP_POSITIVE_CONTROLS),
) -> np.ndarray:
    """The ``perturbation_type`` of every row of ``table``.

    Priority: ``Metadata_control_type`` (or ``control_type``), then ``Metadata_pert_type`` (``pert_type``), then
    the compound id in ``compound_columns`` (or an ``inchikey`` column equal to DMSO's), then the structure.

    Args:
        table: the site table (strings), one row per site.
        has_structure: (N,) bool, whether the row's compound has a SMILES.
        compound_columns: columns of compound ids matched against ``negative_controls`` / ``positive_controls``.

    Returns:
        (N,) object array of strings in :data:`~cloome_hf.data.schema.PERTURBATION_TYPES`.
    """
    has_structure = np.asarray(has_structure, dtype=bool)
    out = np.where(has_structure, "trt", "unknown").astype(object)
    identity = np.zeros(len(table), dtype=bool)
    if "inchikey" in table:
        dmso = (table["inchikey"].astype(str) == DMSO_INCHIKEY).to_numpy()
        out[dmso], identity[dmso] = "negcon", True
    for column in (c for c in compound_columns if c in table):
        ids = table[column].astype(str).str.strip()
        for kind, members in (("negcon", negative_controls), ("poscon", positive_controls)):
            hit = ids.isin(set(members)).to_numpy() & ~identity
            out[hit], identity[hit] = kind, True
    for columns in (PERT_TYPE_COLUMNS, CONTROL_TYPE_COLUMNS):  # the later, more specific, column wins
        column = next((c for c in columns if c in table), None)
        if column is None:
            continue
        for value in pd.unique(table[column].astype(str)):
            kind = _control_kind(value, column, where)
            rows = (table[column].astype(str) == value).to_numpy()
            if kind == "trt":
                out[rows & ~identity] = np.where(has_structure[rows & ~identity], "trt", "unknown")
            elif kind:
                out[rows] = kind
            elif value.strip().lower() == "control":  # a control of unstated kind: only its identity can tell
                out[rows & ~identity] = "unknown"
    return out


def type_counts(types: Any) -> dict[str, int]:
    """``{perturbation_type: count}`` over all four types (zeros included)."""
    values, counts = np.unique(np.asarray(list(types), dtype=object).astype(str), return_counts=True)
    found = dict(zip(values.tolist(), counts.tolist()))
    return {t: int(found.get(t, 0)) for t in PERTURBATION_TYPES}


@dataclass
class TrainingSites:
    """Rows of a site dataset usable for contrastive training, and what was left out.

    Attributes:
        dataset: the selected rows (``Dataset.select``; an ``IterableDataset`` is filtered lazily).
        num_sites: sites kept (``None`` for an ``IterableDataset``).
        num_negative_controls_left_out: ``negcon`` sites left out (0 with ``include_controls``).
        num_without_structure_left_out: sites without a SMILES or of ``unknown`` type.
    """

    dataset: Any
    num_sites: int | None
    num_negative_controls_left_out: int | None
    num_without_structure_left_out: int | None

    def report(self) -> dict[str, int | None]:
        """The counts, for a training report."""
        out = asdict(self)
        out.pop("dataset")
        return out


def is_training_site(row: dict[str, Any], include_controls: bool = False) -> bool:
    """Whether one row (with ``smiles`` and optionally ``perturbation_type``) is trained on."""
    kind = row.get("perturbation_type") or ("trt" if str(row.get("smiles", "")).strip() else "unknown")
    has_structure = bool(str(row.get("smiles", "")).strip())
    return has_structure and kind != "unknown" and (include_controls or kind != "negcon")


def contrastive_training_sites(ds, include_controls: bool = False) -> TrainingSites:
    """The sites contrastive training uses: those with a structure, without negative controls by default.

    Datasets without a ``perturbation_type`` column (older prepared folders, synthetic data) count every site
    with a SMILES as ``trt``. Only the ``smiles`` and ``perturbation_type`` columns are read, never the images.

    Args:
        ds: a ``datasets.Dataset`` or ``IterableDataset`` in the site schema.
        include_controls: keep the negative controls (``--include_controls``).
    """
    import datasets

    if isinstance(ds, datasets.IterableDataset):
        return TrainingSites(ds.filter(is_training_site, fn_kwargs={"include_controls": include_controls}),
                             None, None, None)
    if not isinstance(ds, datasets.Dataset):
        raise ValueError(f"contrastive_training_sites needs a datasets.Dataset or IterableDataset (one split), got "
                         f"{type(ds).__name__}")
    columns = ["smiles"] + (["perturbation_type"] if "perturbation_type" in ds.column_names else [])
    meta = ds.select_columns(columns).to_pandas()  # follows any selection / shuffle of ds; no image is read
    has_structure = (meta["smiles"].fillna("").astype(str).str.strip() != "").to_numpy()
    if "perturbation_type" in meta:
        kinds = meta["perturbation_type"].fillna("unknown").astype(str).to_numpy()
    else:
        kinds = np.where(has_structure, "trt", "unknown")
    negcon = kinds == "negcon"
    trainable = has_structure & (kinds != "unknown")
    keep = trainable & (include_controls | ~negcon)
    rows = np.flatnonzero(keep)
    return TrainingSites(ds.select(rows), int(len(rows)), int((trainable & negcon & ~keep).sum()),
                         int((~trainable).sum()))
