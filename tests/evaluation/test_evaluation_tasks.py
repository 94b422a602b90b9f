"""The evaluation task registry: runner, report and CLI read it, so a registered task is run, reported and
summarised without touching them."""

import numpy as np
import pandas as pd
import pytest

from cloome_hf.cli.evaluate import summary_rows
from cloome_hf.evaluation import EVALUATION_TASKS, EvaluationTask, register_task, render_report, run_tasks
from cloome_hf.evaluation.jump import JUMP_TASKS
from cloome_hf.evaluation.runner import TASKS


@pytest.fixture
def norm_task():
    def run(inputs):
        return {"mean_norm": float(np.linalg.norm(inputs.image, axis=1).mean()), "n": len(inputs.keys)}

    task = register_task(EvaluationTask(
        "mean_norm", "paper", section=lambda r: [f"## Mean norm {r['tasks']['mean_norm']['mean_norm']:.2f}"]
        if "mean_norm" in r.get("tasks", {}) else [],
        headline=lambda res: [("mean_norm", "mean", res["mean_norm"], None, None, res["n"])], run=run,
        requires=("moa",), missing="mean_norm needs MoA labels"))
    yield task
    del EVALUATION_TASKS["mean_norm"]


def test_protocol_lists_are_read_from_the_registry():
    assert set(TASKS) | set(JUMP_TASKS) == set(EVALUATION_TASKS)
    assert set(JUMP_TASKS) == {"jump_activity", "jump_consistency"}
    assert {"retrieval", "zeroshot_molecule", "zeroshot_moa", "linear_probe", "map"} == set(TASKS)


def test_a_registered_task_is_run_reported_and_summarised(norm_task):
    image = np.array([[3.0, 4.0], [0.0, 2.0]])
    meta = pd.DataFrame({"inchikey": ["A", "B"], "plate": ["p", "p"]})
    with pytest.raises(ValueError, match="mean_norm needs MoA labels"):
        run_tasks(["mean_norm"], image, meta)
    results = {"tasks": run_tasks(["mean_norm"], image, meta, moa=np.array(["x", "y"]))}
    assert results["tasks"]["mean_norm"] == {"mean_norm": 3.5, "n": 2}
    assert "## Mean norm 3.50" in render_report(results)
    assert summary_rows(results) == [("mean_norm", "mean", 3.5, None, None, 2)]


def test_a_task_name_is_registered_once(norm_task):
    with pytest.raises(ValueError, match="'mean_norm' is already registered"):
        register_task(norm_task)
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        run_tasks(["nope"], np.zeros((1, 2)), pd.DataFrame({"inchikey": ["A"], "plate": ["p"]}))
