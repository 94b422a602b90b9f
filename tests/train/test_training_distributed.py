"""Real multi-process and crash/resume runs of scripts/train.py (CPU, gloo, subprocesses)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY_ARGS, load_train_script, read_log, run_cloome
from forked_launch import launch_train
from local_servers import free_port

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = str(ROOT / "scripts" / "train.py")


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def _audit(folder, rank):
    with open(Path(folder) / "audit" / f"rank{rank}.jsonl") as f:
        records = [json.loads(line) for line in f]
    steps = {r["step"]: r["rows"] for r in records if "rows" in r}
    return steps, [r["final_parameter_digest"] for r in records if "final_parameter_digest" in r]


def _launch_two_processes(out, args, per_device_batch: int, launcher: str = "forked"):
    """``cloome train`` in 2 processes (gloo on CPU): started by the ``accelerate launch --multi_gpu
    --num_processes 2`` command (``launcher="accelerate"``), or forked as that launch would start them
    (``forked_launch``: the same environment, without a new interpreter's imports per process)."""
    sizes = ["--per_device_train_batch_size", str(per_device_batch), "--per_device_eval_batch_size", "16"]
    if launcher == "forked":
        launch_train(["--output_dir", out, *sizes, *args])
        return
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(free_port()), SCRIPT, "--output_dir", str(out),
           "--per_device_train_batch_size", str(per_device_batch), "--per_device_eval_batch_size", "16", *args]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        stderr = proc.communicate(timeout=300)[1]
    except subprocess.TimeoutExpired:  # e.g. one process waits in a collective the other never reaches
        proc.terminate()  # SIGTERM: the launcher stops its workers (SIGKILL would leave them running)
        stderr = proc.communicate(timeout=60)[1]
        pytest.fail(f"the 2-process run did not finish in 300 s:\n{stderr[-3000:]}")
    assert proc.returncode == 0, stderr[-3000:]


# Augmenting on the device: uint8 batches, the transform in the step; the two processes also decode in 2 workers
# each, the single process in the main process, so the same numbers show determinism across workers too. The
# loader-augmenting case is started by the real ``accelerate launch`` command, the others are forked like it.
@pytest.mark.parametrize("two_process_extra,common_extra,launcher", [
    ([], [], "accelerate"),
    (["--dataloader_num_workers", "2"], ["--augment_on_device", "--random_resized_crop_scale", "0.5", "1"], "forked")],
    ids=["loader_augments", "device_augments"])
def test_two_processes_match_one_process_on_the_same_global_batches(tmp_path, one_thread, two_process_extra,
                                                                     common_extra, launcher):
    common = [*TINY_ARGS[:-4], "--max_steps", "4", "--logging_steps", "1", "--save_steps", "100",
              "--sync_batchnorm", "--audit_log", "--eval_steps", "100", *common_extra]
    two = tmp_path / "two"
    _launch_two_processes(two, [*common, *two_process_extra], per_device_batch=8, launcher=launcher)
    one = tmp_path / "one"
    load_train_script().main(["--output_dir", str(one), "--per_device_train_batch_size", "16",
                              "--per_device_eval_batch_size", "32", *common])

    rank0, digest0 = _audit(two, 0)
    rank1, digest1 = _audit(two, 1)
    single, _ = _audit(one, 0)
    assert sorted(rank0) == sorted(rank1) == sorted(single) == [1, 2, 3, 4]
    for step in single:
        assert len(rank0[step]) == len(rank1[step]) == 8
        assert not set(rank0[step]) & set(rank1[step]), f"ranks shared samples at step {step}"
        # each process took its slice of the same global batch
        assert rank0[step] + rank1[step] == single[step]
    assert digest0 == digest1 and len(digest0) == 1  # replicas hold identical weights

    two_losses = [r["loss"] for r in read_log(two) if "loss" in r]
    one_losses = [r["loss"] for r in read_log(one) if "loss" in r]
    assert len(two_losses) == 4
    # global-batch loss with gathered embeddings and global batch-norm statistics: the same numbers
    torch.testing.assert_close(torch.tensor(two_losses), torch.tensor(one_losses), rtol=1e-4, atol=1e-5)
    assert two_losses[-1] != two_losses[0]  # and training moved the weights


# Only the killed run needs a process of its own; the straight run and the resume run in this one (one thread, as
# the killed process has), which also shows that a resumed run's numbers do not depend on the process.
def test_sigkill_after_checkpoint_then_resume_equals_straight_run(tmp_path, one_thread):
    steps = 24
    args = [*TINY_ARGS, "--max_steps", str(steps), "--save_steps", str(steps // 2 // 2), "--save_total_limit", "0",
            "--logging_steps", "1", "--audit_log", "--eval_steps", "100", "--warmup_steps", "3"]
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    run = [sys.executable, SCRIPT]
    load_train_script().main(["--output_dir", str(straight), *args])

    victim = subprocess.Popen([*run, "--output_dir", str(crashed), *args], env=_env(), cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    half = crashed / "checkpoints" / f"checkpoint-{steps // 2}" / "trainer_state.json"
    deadline = time.time() + 240
    while not half.exists() and victim.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (crashed / "all_results.json").exists()
    killed_at = max(r["step"] for r in read_log(crashed))
    assert steps // 2 <= killed_at < steps

    proc = run_cloome(["train", "--output_dir", crashed, *args, "--resume_from_checkpoint", "latest"], ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from" in proc.stdout + proc.stderr
    # no step lost or repeated, each step on the same samples with the same loss
    log_s = [r for r in read_log(straight) if "loss" in r]
    log_c = [r for r in read_log(crashed) if "loss" in r]
    assert [r["step"] for r in log_c] == list(range(1, steps + 1))
    assert [r["loss"] for r in log_c] == [r["loss"] for r in log_s]
    assert _audit(crashed, 0)[0] == _audit(straight, 0)[0]
    w_s, w_c = load_file(straight / "model.safetensors"), load_file(crashed / "model.safetensors")
    assert w_s.keys() == w_c.keys()
    for name in w_s:
        assert torch.equal(w_s[name], w_c[name]), name
    assert not [p for p in os.listdir(crashed / "checkpoints") if p.startswith(".tmp-")]


@pytest.fixture(scope="module")
def well_sites(tmp_path_factory):
    """Sites of 24 molecules on 2 plates, 5 sites each: every molecule has a well of 3 sites and one of 2."""
    from cloome_hf.data.synthetic import make_synthetic_dataset

    path = tmp_path_factory.mktemp("well_sites") / "sites"
    make_synthetic_dataset(num_molecules=24, sites_per_molecule=5, num_plates=2, image_size=64,
                           seed=1).save_to_disk(str(path))
    return path


def _well(sample_key: str) -> str:
    return sample_key.rsplit("-", 1)[0]  # PLATE-WELL-SITE


# The two units that accelerate cannot cut by rows: a batch of bags (sites of whole wells) and a graph batch
# (atoms). The sampler cuts them per process by bags / molecules; the gathered loss is the global batch's.
@pytest.mark.parametrize("unit", ["well_bags", "gnn_graphs"])
def test_two_processes_cut_bags_and_graph_batches_by_molecule_like_one_process(tmp_path, one_thread, well_sites,
                                                                               unit):
    common = [*TINY_ARGS[:-4], "--max_steps", "3", "--logging_steps", "1", "--save_steps", "100",
              "--eval_steps", "100", "--sync_batchnorm", "--audit_log"]
    if unit == "well_bags":
        common += ["--dataset", str(well_sites), "--validation_fraction", "0.25", "--bag_by", "well",
                   "--bag_pooling", "mean"]
    else:
        common += ["--molecule_encoder", "gnn", "--gnn_layer", "gine", "--molecule_num_layers", "2"]
    two, one = tmp_path / "two", tmp_path / "one"
    _launch_two_processes(two, common, per_device_batch=4)
    load_train_script().main(["--output_dir", str(one), "--per_device_train_batch_size", "8",
                              "--per_device_eval_batch_size", "32", *common])

    rank0, digest0 = _audit(two, 0)
    rank1, digest1 = _audit(two, 1)
    single, _ = _audit(one, 0)
    assert sorted(rank0) == sorted(rank1) == sorted(single) == [1, 2, 3]
    for step in single:
        assert rank0[step] + rank1[step] == single[step]  # each process took its share of the same global batch
        if unit == "well_bags":  # 4 whole wells each, none cut between the processes
            wells0, wells1 = [{_well(k) for k in rank[step]} for rank in (rank0, rank1)]
            assert len(wells0) == len(wells1) == 4 and not wells0 & wells1
        else:  # 4 molecules (sites) each
            assert len(rank0[step]) == len(rank1[step]) == 4
    if unit == "well_bags":
        sites_per_well = [sum(_well(k) == w for k in keys) for keys in single.values() for w in map(_well, keys)]
        assert {2, 3} <= set(sites_per_well)  # bags of different sizes: the shares differ in sites, not in bags
    assert digest0 == digest1 and len(digest0) == 1  # replicas hold identical weights

    two_losses = [r["loss"] for r in read_log(two) if "loss" in r]
    one_losses = [r["loss"] for r in read_log(one) if "loss" in r]
    assert len(two_losses) == 3 and two_losses[-1] != two_losses[0]
    torch.testing.assert_close(torch.tensor(two_losses), torch.tensor(one_losses), rtol=1e-4, atol=1e-5)


# Well bags read from a cached-feature store (cloome embed --features backbone) in two processes: each takes whole
# wells of the same global batch, and the run equals one process running the frozen tower on the sites.
def test_two_processes_train_well_bags_on_cached_features_like_one_process_on_the_tower(tmp_path, one_thread,
                                                                                        well_sites, tiny_tower_folder):
    from cloome_hf.cli import embed

    common = ["--dataset", str(well_sites), "--backbone", tiny_tower_folder("dinov2"), "--freeze_image_tower",
              "true", "--augment", "false", "--image_size", "32", "--molecule_hidden_size", "32",
              "--molecule_num_layers", "2", "--projection_dim", "16", "--fingerprint_size", "128", "--max_steps",
              "3", "--logging_steps", "1", "--save_steps", "100", "--eval_steps", "100", "--bag_by", "well",
              "--bag_pooling", "attention", "--validation_fraction", "0.25", "--sync_batchnorm", "--audit_log"]
    # (the recipe's warm-up, not --warmup_steps 0: a first full-size Adam step moves every parameter by about the
    # learning rate in the sign of its gradient, and the biases before BatchNorm have gradients that are zero up to
    # rounding, whose sign the order of the sums across processes decides)
    one, two, store = tmp_path / "one", tmp_path / "two", tmp_path / "features"
    load_train_script().main(["--output_dir", str(one), "--per_device_train_batch_size", "8",
                              "--per_device_eval_batch_size", "32", *common])
    embed.main(["--model", str(one), "--dataset", str(well_sites), "--output_dir", str(store), "--features",
                "backbone", "--batch_size", "16"])
    _launch_two_processes(two, ["--image_features", str(store), *common], per_device_batch=4)

    (rank0, digest0), (rank1, digest1), (single, _) = _audit(two, 0), _audit(two, 1), _audit(one, 0)
    assert sorted(rank0) == sorted(single) == [1, 2, 3]
    for step in single:
        wells0, wells1 = [{_well(k) for k in rank[step]} for rank in (rank0, rank1)]
        assert len(wells0) == len(wells1) == 4 and not wells0 & wells1  # whole wells, none cut between them
        assert sorted(rank0[step] + rank1[step]) == sorted(single[step])
    assert digest0 == digest1 and len(digest0) == 1
    two_losses = [r["loss"] for r in read_log(two) if "loss" in r]
    one_losses = [r["loss"] for r in read_log(one) if "loss" in r]
    assert len(two_losses) == 3 and len(set(two_losses)) > 1
    torch.testing.assert_close(torch.tensor(two_losses), torch.tensor(one_losses), rtol=1e-4, atol=1e-5)
    assert json.loads((two / "training_config.json").read_text())["arguments"]["image_features"] == str(store)


# A two-process run resumed from a checkpoint in the middle of an epoch: each process's slice of the loader starts
# at the next global batch, so the resumed steps take the same rows, with the same losses, to the same weights.
def test_two_processes_resumed_mid_epoch_continue_the_straight_run(tmp_path, one_thread):
    args = [*TINY_ARGS[:-4], "--max_steps", "6", "--save_steps", "3", "--save_total_limit", "0",
            "--logging_steps", "1", "--eval_steps", "100", "--warmup_steps", "2", "--audit_log", "--sync_batchnorm"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    _launch_two_processes(straight, args, per_device_batch=4)
    state = json.loads((straight / "checkpoints" / "checkpoint-3" / "trainer_state.json").read_text())
    assert (state["step"], state["epoch"], state["batch_in_epoch"]) == (3, 0, 3)  # mid-epoch: 4 batches an epoch
    shutil.copytree(straight, resumed)
    (resumed / "model.safetensors").unlink()  # the resumed run's model is its own, not the straight run's copy
    _launch_two_processes(resumed, [*args, "--resume_from_checkpoint",
                                    str(resumed / "checkpoints" / "checkpoint-3")], per_device_batch=4)

    for rank in (0, 1):
        (rows_s, digests_s), (rows_r, digests_r) = _audit(straight, rank), _audit(resumed, rank)
        assert {s: rows_r[s] for s in (4, 5, 6)} == {s: rows_s[s] for s in (4, 5, 6)}
        assert len(digests_s) == 1 and digests_r == digests_s  # the copied end record dropped, the same one written
    losses = {name: {r["step"]: r["loss"] for r in read_log(folder) if "loss" in r}
              for name, folder in (("straight", straight), ("resumed", resumed))}
    assert [losses["resumed"][s] for s in (4, 5, 6)] == [losses["straight"][s] for s in (4, 5, 6)]
    w_s, w_r = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert w_s.keys() == w_r.keys() and all(torch.equal(w_s[k], w_r[k]) for k in w_s)
