"""The training step: augmentation on the device (same losses and samples as in the loader), no reads of device
values on steps that log nothing, the deferred non-finite stop, and validation reading the dataset in batches."""

import json
import sys

import datasets
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY_ARGS, load_train_script, read_log

SHORT = [*TINY_ARGS, "--vision_layers", "1", "1", "1", "1", "--eval_steps", "100", "--save_steps", "100"]


def _audit_rows(folder):
    with open(folder / "audit" / "rank0.jsonl") as f:
        return [r["rows"] for r in map(json.loads, f) if "rows" in r]


def test_augmenting_on_the_device_trains_like_augmenting_in_the_loader(tmp_path, one_thread, monkeypatch):
    """--augment_on_device (uint8 batches, the batched path of the same transform in the step, on the CPU device
    here, decoded in 2 workers) gives the per-step losses and samples of the loader's CPU augmentation in the main
    process. A resized crop makes both paths resample. Batches from workers are given back after their step (their
    buffers are reused), and that changes no loss either. That pixels do not depend on workers or on where they
    are augmented is asserted once, at the loader (tests/data/test_data_torch.py)."""
    from cloome_hf.train import loop

    seen, released = {}, {}
    original, original_step = loop.batch_pixel_values, loop.train_step

    def spy(run, batch):
        pixels = original(run, batch)
        seen.setdefault(run.train_args.output_dir, set()).add(
            (tuple(sorted(k for k in batch if k in ("images", "pixel_values", "seeds"))),
             str(batch.get("images", pixels).dtype)))
        return pixels

    def step_spy(run, batch):
        had_tokens = "buffer_tokens" in batch
        loss = original_step(run, batch)
        released.setdefault(run.train_args.output_dir, set()).add((had_tokens, "buffer_tokens" in batch))
        return loss

    monkeypatch.setattr(loop, "batch_pixel_values", spy)
    monkeypatch.setattr(loop, "train_step", step_spy)
    args = [*SHORT, "--max_steps", "3", "--logging_steps", "1", "--audit_log", "--random_resized_crop_scale", "0.5",
            "1.0"]
    runs = {"loader": [], "device_2_workers": ["--augment_on_device", "--dataloader_num_workers", "2"]}
    losses, rows = {}, {}
    for name, extra in runs.items():
        out = tmp_path / name
        load_train_script().main(["--output_dir", str(out), *args, *extra])
        losses[name] = [r["loss"] for r in read_log(out) if "loss" in r]
        rows[name] = _audit_rows(out)
    assert seen[str(tmp_path / "loader")] == {(("pixel_values",), "torch.float32")}
    for name in runs:  # every batch carries its buffers' tokens (workers' and the main process's alike), and the
        assert released[str(tmp_path / name)] == {(True, False)}  # step gives them back
    assert seen[str(tmp_path / "device_2_workers")] == {(("images", "seeds"), "torch.uint8")}
    assert len(losses["loader"]) == 3 and losses["loader"][0] != losses["loader"][-1]
    assert rows["device_2_workers"] == rows["loader"]
    np.testing.assert_allclose(losses["device_2_workers"], losses["loader"], rtol=1e-5)


def test_steps_that_log_nothing_read_no_tensor_values(tmp_path, one_thread, monkeypatch):
    """No ``.item()`` / ``float()`` / ``bool()`` / ``.tolist()`` of a tensor from the package's code inside a
    step that neither logs, evaluates, checkpoints nor ends an epoch (each would make the host wait for the
    device); the steps that do read (the instrumentation sees them)."""
    from cloome_hf.train import loop

    reads, current = {}, {}
    package = str(__import__("cloome_hf").__path__[0])

    def counting(name):
        method = getattr(torch.Tensor, name)

        def wrapper(self, *a, **k):
            if "step" in current and sys._getframe(1).f_code.co_filename.startswith(package):
                reads.setdefault(current["step"], []).append(f"{name} in {sys._getframe(1).f_code.co_name}")
            return method(self, *a, **k)
        return wrapper

    for name in ("item", "tolist", "__float__", "__bool__", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, counting(name))
    original, checks = loop.train_step, {}

    def step(run, batch):
        current["step"] = run.state.step + 1
        try:
            return original(run, batch)
        finally:
            checks[current.pop("step")] = run.is_check_step()

    monkeypatch.setattr(loop, "train_step", step)
    load_train_script().main(["--output_dir", str(tmp_path / "run"), *SHORT, "--max_steps", "6",
                              "--logging_steps", "3"])
    assert checks == {1: False, 2: False, 3: True, 4: False, 5: False, 6: True}
    assert {s: reads.get(s) for s, check in checks.items() if not check} == {1: None, 2: None, 4: None, 5: None}
    assert reads[3] and reads[6]


def test_a_deferred_non_finite_stop_saves_the_state_of_an_immediate_one(tmp_path, one_thread):
    """The bad step is only seen at the next check step; by then the device has undone it and every later step,
    so the saved last good state equals the checkpoint an every-step check wrote just before the bad step
    (weights, optimiser state, schedule and data position)."""
    from cloome_hf.train import TrainingStopped

    args = [*TINY_ARGS, "--vision_layers", "1", "1", "1", "1", "--learning_rate", "1e30", "--warmup_steps", "0",
            "--max_steps", "6", "--eval_steps", "100"]
    stops = {}
    for name, cadence in (("every_step", "1"), ("deferred", "100")):
        with pytest.raises(TrainingStopped, match=r"non-finite \w+ at step \d+") as err:
            load_train_script().main(["--output_dir", str(tmp_path / name), *args, "--save_steps", cadence])
        stops[name] = err.value.args[0]
    bad_step = int(stops["deferred"].split("at step ")[1].split(";")[0])
    assert bad_step < 6, "the deferred run must have skipped steps before its check at step 6"
    assert stops["every_step"].split(";")[0] == stops["deferred"].split(";")[0]
    good = {name: tmp_path / name / "checkpoints" / f"checkpoint-{bad_step - 1}" for name in stops}
    assert all(str(good[name]) in stops[name] for name in stops)
    weights = {name: load_file(good[name] / "model.safetensors") for name in stops}
    assert all(torch.isfinite(t).all() for t in weights["deferred"].values())
    for key, value in weights["every_step"].items():
        assert torch.equal(weights["deferred"][key], value), key
    optimizers = {name: torch.load(good[name] / "optimizer.pt", weights_only=True) for name in stops}
    assert optimizers["deferred"]["param_groups"] == optimizers["every_step"]["param_groups"]
    for param, state in optimizers["every_step"]["state"].items():
        for key, value in state.items():
            assert torch.equal(optimizers["deferred"]["state"][param][key], value), (param, key)
    for file in ("scheduler.json", "trainer_state.json"):
        saved = {name: json.loads((good[name] / file).read_text()) for name in stops}
        for record in saved.values():
            record.pop("sequence", None)
        assert saved["deferred"] == saved["every_step"], file


def test_validation_reads_the_dataset_in_batches_not_rows(monkeypatch):
    """encode_dataset (what validation runs) reads a column table once and the images a batch at a time."""
    from cloome_hf import CloomeModel
    from cloome_hf.data import make_synthetic_dataset
    from cloome_hf.featurization_cloome import MoleculeFeaturizer
    from cloome_hf.image_processing_cloome import CloomeImageProcessor
    from cloome_hf.inference.encode import encode_dataset
    from cloome_hf.processing_cloome import CloomeProcessor
    from conftest import TINY_MOLECULE, TINY_VISION

    from cloome_hf import CloomeConfig

    ds = make_synthetic_dataset(num_molecules=12, sites_per_molecule=3, image_size=64, seed=0)
    model = CloomeModel(CloomeConfig(vision_config=dict(TINY_VISION), molecule_config=dict(TINY_MOLECULE),
                                     projection_dim=16))
    processor = CloomeProcessor(CloomeImageProcessor(do_center_crop=False),
                                MoleculeFeaturizer(fingerprint_size=TINY_MOLECULE["fingerprint_size"]))
    calls = []
    getitem, iterate = datasets.Dataset.__getitem__, datasets.Dataset.__iter__
    monkeypatch.setattr(datasets.Dataset, "__getitem__", lambda self, key: calls.append(type(key).__name__)
                        or getitem(self, key))
    monkeypatch.setattr(datasets.Dataset, "__iter__", lambda self: calls.append("iter") or iterate(self))
    embeddings = encode_dataset(model, processor, ds, batch_size=8)
    assert embeddings.image.shape == (36, 16)
    assert calls.count("list") == 5  # ceil(36 / 8) image batches
    assert "int" not in calls and "iter" not in calls and calls.count("str") <= 2, calls
