"""The one JSON writer (safe_io.atomic_write_json): strict JSON with one NaN policy for every file it writes."""

import json

import numpy as np

from cloome_hf.evaluation.report import write_results_json
from cloome_hf.safe_io import atomic_write_json


def test_non_finite_numbers_become_null_and_numpy_values_plain_json(tmp_path):
    value = {"nan": float("nan"), "inf": np.float32("inf"), "n": np.int64(3), "a": np.array([1.5, np.nan]),
             "t": (1, 2), 4: "four key"}
    atomic_write_json(tmp_path / "x.json", value)
    text = (tmp_path / "x.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"nan": None, "inf": None, "n": 3, "a": [1.5, None], "t": [1, 2], "4": "four key"}


def test_results_json_follows_the_same_policy(tmp_path):
    value = {"tasks": {"retrieval": {"top1": np.float64("nan"), "ranks": np.arange(3)}}}
    write_results_json(value, tmp_path / "results.json")
    atomic_write_json(tmp_path / "same.json", value)
    assert (tmp_path / "results.json").read_text() == (tmp_path / "same.json").read_text()
    assert json.loads((tmp_path / "results.json").read_text())["tasks"]["retrieval"] == {"top1": None,
                                                                                         "ranks": [0, 1, 2]}
