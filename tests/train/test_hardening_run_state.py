"""#22 class 2, tampered or inconsistent run state: every field of a checkpoint's trainer state is checked
against the run it is resumed into before anything runs, and a refused resume leaves the folder as it was."""

import json
import shutil

import pytest

from conftest import TINY_TRAIN_ARGS


def _resume(run, checkpoint):
    from cloome_hf.train import main

    return main(["--output_dir", str(run), *TINY_TRAIN_ARGS, "--resume_from_checkpoint", str(checkpoint)])


def _tampered_copy(finished_tiny_run, tmp_path, name="checkpoint-1", folder=None, **fields):
    run = tmp_path / "run"
    shutil.copytree(finished_tiny_run, run)
    checkpoint = run / "checkpoints" / name
    if folder is not None:
        checkpoint = checkpoint.rename(run / "checkpoints" / folder)
    state_path = checkpoint / "trainer_state.json"
    state = json.loads(state_path.read_text())
    state.update(fields)
    state_path.write_text(json.dumps(state))  # json writes a NaN best_score as NaN, as an editor would
    return run, checkpoint


def _snapshot(run):
    return {p.relative_to(run): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("fields, folder, message", [
    ({"batch_in_epoch": 10_000}, None, r"batch_in_epoch=10000 lies outside \[0, "),  # would loop forever
    ({"batch_in_epoch": -1}, None, r"batch_in_epoch=-1 lies outside"),
    ({"step": 50, "batch_in_epoch": 50}, "checkpoint-50", r"step=50 lies outside \[0, 2\]"),  # beyond the run
    ({"step": -3}, "checkpoint--3", r"step=-3 lies outside"),
    ({"step": "1"}, None, r"step='1' is not an integer"),
    ({"step": True}, None, r"step=True is not an integer"),
    ({"epoch": 1.5}, None, r"epoch=1.5 is not an integer"),
    ({"best_score": float("nan")}, None, r"best_score=nan lies outside"),
    ({"best_score": 7.0}, None, r"best_score=7.0 lies outside"),
    ({"epoch": 1}, None, r"step=1 disagrees with epoch=1 and batch_in_epoch=1"),
    ({"step": 2, "batch_in_epoch": 2}, None, r"step=2 disagrees with the folder's name"),
])
def test_a_tampered_trainer_state_is_refused_before_anything_runs(finished_tiny_run, tmp_path, one_thread, fields,
                                                                  folder, message):
    run, checkpoint = _tampered_copy(finished_tiny_run, tmp_path, folder=folder, **fields)
    before = _snapshot(run)
    with pytest.raises(ValueError, match=message) as refused:
        _resume(run, checkpoint)
    assert str(checkpoint) in str(refused.value)
    assert _snapshot(run) == before  # the finished model and every checkpoint are untouched


def test_an_untampered_checkpoint_still_resumes_to_the_same_end(finished_tiny_run, tmp_path, one_thread):
    run, checkpoint = _tampered_copy(finished_tiny_run, tmp_path)
    (run / "model.safetensors").unlink()
    _resume(run, checkpoint)  # the checks refuse nothing a real resume needs: it runs step 2 and writes the model
    assert json.loads((checkpoint.parent / "checkpoint-2" / "trainer_state.json").read_text())["step"] == 2
    assert (run / "model.safetensors").stat().st_size > 0


def _audited_copy(finished_tiny_run, tmp_path, *lines):
    """A copy of the finished tiny run with an audit log of ``lines`` (JSON-encoded records, or raw text)."""
    run = tmp_path / "run"
    shutil.copytree(finished_tiny_run, run)
    (run / "audit").mkdir()
    (run / "audit" / "rank0.jsonl").write_text(
        "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return run


@pytest.mark.parametrize("end_record", [{"step": 2, "final_parameter_digest": "abc"},
                                        {"final_parameter_digest": "abc"}])  # the form before it had its step
@pytest.mark.parametrize("resumed_step", [1, 2])  # 2: the last checkpoint, at the end record's own step
def test_a_finished_audited_run_resumes_with_one_end_record(end_record, resumed_step, finished_tiny_run, tmp_path,
                                                            one_thread):
    run = _audited_copy(finished_tiny_run, tmp_path, {"step": 1, "rows": ["a"]}, {"step": 2, "rows": ["b"]},
                        end_record)
    from cloome_hf.train import main

    main(["--output_dir", str(run), *TINY_TRAIN_ARGS, "--audit_log", "--resume_from_checkpoint",
          str(run / "checkpoints" / f"checkpoint-{resumed_step}"), "--allow_changed_settings"])
    records = [json.loads(line) for line in (run / "audit" / "rank0.jsonl").read_text().splitlines()]
    assert records[0] == {"step": 1, "rows": ["a"]}  # kept: before the resumed step
    assert [r["step"] for r in records] == [1, 2, 2]  # step 2 once (kept, or redone), then the one end record
    assert (records[1]["rows"] == ["b"]) == (resumed_step == 2)
    assert set(records[2]) == {"step", "final_parameter_digest"} and records[2]["final_parameter_digest"] != "abc"


@pytest.mark.parametrize("bad_line", ["not json", json.dumps({"rows": ["a"]}), json.dumps({"step": "two"}),
                                      json.dumps([1, 2])])
def test_a_bad_audit_line_refuses_the_resume_and_cuts_no_log(bad_line, finished_tiny_run, tmp_path, one_thread):
    from cloome_hf.train import main

    run = _audited_copy(finished_tiny_run, tmp_path, {"step": 1, "rows": ["a"]}, bad_line)
    before = _snapshot(run)
    with pytest.raises(ValueError, match=r"rank0\.jsonl has a line that is not a cloome train log record"):
        main(["--output_dir", str(run), *TINY_TRAIN_ARGS, "--audit_log", "--resume_from_checkpoint",
              str(run / "checkpoints" / "checkpoint-1"), "--allow_changed_settings"])
    assert _snapshot(run) == before  # the train log too: nothing was cut before the refusal
