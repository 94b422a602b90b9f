"""The common Cell Painting site schema every loader produces and every consumer reads.

One row per imaged site:

================  ==========  ==========================================================================
column            type        meaning
================  ==========  ==========================================================================
``sample_key``    string      unique site id, ``"{plate}-{well}-{site}"`` (Bray) / with source prefix (JUMP)
``plate``         string      plate barcode
``well``          string      well position, e.g. ``"A01"``
``site``          int32       field of view within the well
``smiles``        string      the perturbing molecule
``inchikey``      string      molecule key: fingerprints are computed once per key and joined on it
``image``         binary      raw C-order ``uint8`` bytes of the ``(C, H, W)`` site, channels in
                              :data:`CHANNELS` order (see :func:`decode_image`)
``image_shape``   int32[3]    ``(C, H, W)``
================  ==========  ==========================================================================

plus any extra metadata columns of the source (``IMG_CNT_CELLS``, ``Metadata_Source``, ...), and optionally
``concentration`` (float64, the dose in uM; NaN where unknown, 0 for vehicle controls): a source's dose column
(:data:`CONCENTRATION_SOURCE_COLUMNS`) becomes it, ``prepare`` / ``embed`` carry it, the loader yields it as
``concentrations`` and a dose-conditioned model encodes it. Every raw source
also writes ``perturbation_type`` (string, one of :data:`PERTURBATION_TYPES`: ``trt``, ``negcon``, ``poscon``,
``unknown``; see :mod:`cloome_hf.data.perturbations`); datasets without it are read as ``trt`` wherever a site
has a SMILES. JUMP sites without a structure (ORF / CRISPR plates, compounds without a SMILES) have
``smiles == inchikey == ""`` and type ``unknown``: they are embedded, never trained on.

Why raw bytes and not ``datasets.Array3D``: Parquet stores a fixed-shape nested list with one repetition
level per value (1.8 M per Bray site), which is slow to write and read; one binary value per site is a
single memcpy, and :func:`decode_image` is a zero-copy ``np.frombuffer``. ``benchmarks/bench_data.py``
measures the loader against one ``.npz`` per site.
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

import numpy as np

from ..channels import CHANNELS

SCHEMA_COLUMNS: tuple[str, ...] = ("sample_key", "plate", "well", "site", "smiles", "inchikey", "image", "image_shape")
#: Values of the optional ``perturbation_type`` column.
PERTURBATION_TYPES: tuple[str, ...] = ("trt", "negcon", "poscon", "unknown")
#: The optional dose column (uM).
CONCENTRATION = "concentration"
#: Source columns a dose is read from, with the factor to uM: the schema's own, and the Broad / LINCS metadata's
#: ``Metadata_mmoles_per_liter`` (mM). Columns of unstated unit are not guessed at.
CONCENTRATION_SOURCE_COLUMNS: dict[str, float] = {CONCENTRATION: 1.0, "Metadata_mmoles_per_liter": 1000.0}
#: Columns that are not images: cheap to read for splits, fingerprint tables and samplers.
METADATA_COLUMNS: tuple[str, ...] = ("sample_key", "plate", "well", "site", "smiles", "inchikey")


def features(extra: Mapping[str, Any] | None = None):
    """``datasets.Features`` of the common schema plus ``extra`` (name -> ``datasets`` feature)."""
    import datasets

    feats = {
        "sample_key": datasets.Value("string"),
        "plate": datasets.Value("string"),
        "well": datasets.Value("string"),
        "site": datasets.Value("int32"),
        "smiles": datasets.Value("string"),
        "inchikey": datasets.Value("string"),
        "image": datasets.Value("binary"),
        "image_shape": datasets.List(datasets.Value("int32"), length=3),
    }
    feats.update(extra or {})
    return datasets.Features(feats)


def dataset_description(channels: Sequence[str] = CHANNELS) -> str:
    """JSON stored in ``DatasetInfo.description`` recording the channel order of the ``image`` column."""
    return json.dumps({"cloome_hf": {"channels": list(channels), "image": "uint8 CHW raw bytes"}})


def channels_of(ds) -> tuple[str, ...]:
    """Channel order recorded in a dataset's info; the canonical order when none is recorded."""
    try:
        return tuple(json.loads(ds.info.description)["cloome_hf"]["channels"])
    except (AttributeError, TypeError, ValueError, KeyError):
        return CHANNELS


def encode_image(image: np.ndarray) -> tuple[bytes, list[int]]:
    """``(C, H, W)`` uint8 array -> ``(raw bytes, shape)`` for the ``image`` / ``image_shape`` columns."""
    if image.dtype != np.uint8 or image.ndim != 3:
        raise ValueError(f"expected a uint8 (C, H, W) image, got dtype {image.dtype} shape {image.shape}")
    return np.ascontiguousarray(image).tobytes(), [int(s) for s in image.shape]


def decode_image(data: bytes, shape: Sequence[int]) -> np.ndarray:
    """Raw bytes + ``(C, H, W)`` -> read-only uint8 array (no copy)."""
    shape = tuple(int(s) for s in shape)
    if len(data) != int(np.prod(shape)):
        raise ValueError(f"image has {len(data)} bytes but image_shape {shape} needs {int(np.prod(shape))}")
    return np.frombuffer(data, dtype=np.uint8).reshape(shape)


def decode_row(row: Mapping[str, Any]) -> np.ndarray:
    """The ``(C, H, W)`` uint8 image of one dataset row."""
    return decode_image(row["image"], row["image_shape"])


def check_schema(column_names: Sequence[str], where: str = "dataset") -> None:
    """Raise ``ValueError`` naming the missing common columns."""
    missing = [c for c in SCHEMA_COLUMNS if c not in column_names]
    if missing:
        raise ValueError(f"{where} lacks the Cell Painting schema columns {missing}; has {list(column_names)}")
