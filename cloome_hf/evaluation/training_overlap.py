"""Which evaluation molecules a model was trained on.

``cloome train`` records the molecules (InChIKeys) of its training and validation splits in the model folder
(``training_molecules.json``); ``cloome evaluate`` compares its molecules with them, so a report says how many
it has seen in training, and says it first when most were: retrieval among molecules a model was trained on
measures memory, not generalisation.
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterable

from ..safe_io import atomic_write_text

TRAINING_MOLECULES_FILE = "training_molecules.json"


def write_training_molecules(folder: str, train_inchikeys: Iterable[str], validation_inchikeys: Iterable[str],
                             dataset: str | None = None) -> str:
    """Record the molecules of a run's splits in ``folder``; returns the file's path."""
    path = os.path.join(folder, TRAINING_MOLECULES_FILE)
    record = {"dataset": dataset, "train": sorted({str(k) for k in train_inchikeys if str(k).strip()}),
              "validation": sorted({str(k) for k in validation_inchikeys if str(k).strip()})}
    atomic_write_text(path, json.dumps(record) + "\n")
    return path


def read_training_molecules(model: str) -> dict[str, Any] | None:
    """The record of a local model folder (``None`` for a Hub id or a folder without one)."""
    path = os.path.join(os.fspath(model), TRAINING_MOLECULES_FILE)
    if not os.path.isfile(path):
        return None
    from ..safe_io import read_json

    record = read_json(path, "training molecules record")
    if not isinstance(record.get("train"), list) or not isinstance(record.get("validation"), list):
        raise ValueError(f"{path} lacks the 'train' / 'validation' lists of InChIKeys")
    return record


def training_overlap(model: str, inchikeys: Iterable[str]) -> dict[str, Any]:
    """How many of the evaluation molecules (``inchikeys``) the model at ``model`` trained on.

    Returns ``{"recorded": bool, "n_molecules", "n_seen_in_training", "n_seen_in_validation",
    "on_training_data": more than half were trained on, "training_dataset"}``; without a record only
    ``recorded=False`` and ``n_molecules``."""
    keys = {str(k) for k in inchikeys if str(k).strip()}
    record = read_training_molecules(model)
    if record is None:
        return {"recorded": False, "n_molecules": len(keys)}
    seen = len(keys & set(record["train"]))
    return {"recorded": True, "n_molecules": len(keys), "n_seen_in_training": seen,
            "n_seen_in_validation": len(keys & set(record["validation"])),
            "on_training_data": bool(keys) and seen > len(keys) / 2, "training_dataset": record.get("dataset")}


def overlap_line(overlap: dict[str, Any] | None) -> str:
    """One sentence for the report and the console."""
    if not overlap:
        return "molecules seen in training: unknown"
    n = overlap["n_molecules"]
    if not overlap["recorded"]:
        return (f"molecules seen in training: unknown (the model folder has no {TRAINING_MOLECULES_FILE}; "
                f"{n} evaluation molecules)")
    seen, val = overlap["n_seen_in_training"], overlap["n_seen_in_validation"]
    text = (f"molecules seen in training: {seen} of the {n} evaluation molecules were in the model's training "
            f"split, {val} in its validation split")
    if overlap["on_training_data"]:
        text = "EVALUATED ON THE TRAINING DATA: " + text + " (these scores measure memory, not generalisation)"
    return text


__all__ = ["TRAINING_MOLECULES_FILE", "overlap_line", "read_training_molecules", "training_overlap",
           "write_training_molecules"]
