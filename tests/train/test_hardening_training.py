"""Hostile and careless inputs to ``cloome train``: pickles planted in a checkpoint, a reused folder, a changed
resume, concurrent runs, rotation order."""

import os
import pickle
import shutil

import pytest

from conftest import TINY_TRAIN_ARGS
from lock_holder import lock_held_elsewhere


def _train(out, *extra):
    from cloome_hf.train import main

    return main(["--output_dir", str(out), *TINY_TRAIN_ARGS, *extra])


class Payload:
    """Unpickling this creates ``marker``: proof that code from the file ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def finished_run(finished_tiny_run):
    """The shared tiny run (conftest: ``cloome train`` with TINY_TRAIN_ARGS); every test copies it first."""
    return finished_tiny_run


def test_a_pickle_in_any_checkpoint_file_is_refused_and_runs_nothing(finished_run, tmp_path, one_thread):
    checkpoint = finished_run / "checkpoints" / "checkpoint-2"
    files = sorted(os.listdir(checkpoint))
    assert {"model.safetensors", "optimizer.pt", "scheduler.json", "rng_state_0.safetensors", "rng_state_0.json",
            "trainer_state.json"} <= set(files)
    for name in files:
        run = tmp_path / f"attack-{name}"
        shutil.copytree(finished_run, run)
        marker = tmp_path / f"ran-{name}"
        with open(run / "checkpoints" / "checkpoint-2" / name, "wb") as f:
            pickle.dump(Payload(marker), f)
        with pytest.raises(ValueError, match=name.replace(".", r"\.")):
            _train(run, "--resume_from_checkpoint", str(run / "checkpoints" / "checkpoint-2"))
        assert not marker.exists(), f"unpickling {name} ran code"


def test_a_fresh_run_into_a_used_folder_is_refused(finished_run, tmp_path, one_thread):
    run = tmp_path / "reused"
    shutil.copytree(finished_run, run)
    log = (run / "train_log.jsonl").read_text()
    with pytest.raises(ValueError, match="already holds a training run"):
        _train(run)
    assert (run / "train_log.jsonl").read_text() == log  # nothing of the old run was touched
    _train(run, "--overwrite_output_dir")
    assert sorted(os.listdir(run / "checkpoints")) == ["checkpoint-1", "checkpoint-2"]


def test_a_resume_with_changed_settings_is_refused_naming_them(finished_run, tmp_path, one_thread):
    run = tmp_path / "changed"
    shutil.copytree(finished_run, run)
    with pytest.raises(ValueError, match=r"global_batch_size: 8 -> 12.*learning_rate"):
        _train(run, "--resume_from_checkpoint", "latest", "--per_device_train_batch_size", "12",
               "--learning_rate", "0.01")
    result = _train(run, "--resume_from_checkpoint", "latest", "--learning_rate", "0.01", "--allow_changed_settings")
    assert result["global_step"] == 2


def test_checkpoints_rotate_by_the_order_they_were_written(tmp_path, one_thread):
    from cloome_hf.train.checkpoint import list_checkpoints, resolve_checkpoint

    run = tmp_path / "rotation"
    _train(run, "--max_steps", "3")  # checkpoints 1, 2, 3
    # resume from step 1 for a shorter run: its new checkpoint-2 is the newest, although checkpoint-3 has a
    # higher step; rotation by step number would delete the new one and "latest" would pick the abandoned one
    _train(run, "--resume_from_checkpoint", str(run / "checkpoints" / "checkpoint-1"), "--max_steps", "2",
           "--save_total_limit", "2", "--allow_changed_settings")
    assert [step for step, _ in list_checkpoints(run / "checkpoints")] == [3, 2]
    assert resolve_checkpoint("latest", run / "checkpoints").endswith("checkpoint-2")


def test_a_second_writer_is_refused_while_the_first_lives(tmp_path):
    from cloome_hf.safe_io import LOCK_FILE, OutputLock

    folder = tmp_path / "busy"
    with lock_held_elsewhere(folder, "holder") as pid:
        with pytest.raises(ValueError, match=rf"in use by another run \(holder, pid {pid}"):
            OutputLock(folder, "second").acquire()
    assert (folder / LOCK_FILE).exists()  # a killed holder leaves its lock behind ...
    with OutputLock(folder, "second"):  # ... which a live writer takes over
        pass
    assert not (folder / LOCK_FILE).exists()
