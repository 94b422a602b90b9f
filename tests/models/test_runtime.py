"""The `cloome` command's process takes the input pipeline's fast path (transparent huge pages for torch's CPU
tensors) however it is started, with nothing set by the user; a library user's process is left alone."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cloome_hf.runtime import started_as_command

ROOT = Path(__file__).resolve().parents[2]
TINY_TRAIN = ["train", "--synthetic_molecules", "16", "--synthetic_sites_per_molecule", "2",
              "--synthetic_image_size", "64", "--image_size", "64", "--vision_layers", "1", "1", "1", "1",
              "--base_width", "8", "--molecule_hidden_size", "16", "--projection_dim", "8", "--fingerprint_size", "32",
              "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "16", "--max_steps", "1"]


def _env():
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}  # nothing set by the user
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return env


def _kernel_has_thp() -> bool:
    try:
        return "[never]" not in Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return False


@pytest.mark.parametrize("argv,orig_argv,expected", [
    (["/usr/bin/cloome", "train"], ["python", "/usr/bin/cloome", "train"], True),
    (["-m"], ["python", "-m", "cloome_hf.cli", "train"], True),  # sys.argv[0] while -m imports the package
    (["-m"], ["python", "-mcloome_hf.cli", "embed"], True),
    ([str(ROOT / "scripts" / "train.py")], ["python", "scripts/train.py"], True),
    (["my_analysis.py"], ["python", "my_analysis.py"], False),
    (["-m"], ["python", "-m", "pytest", "tests"], False),
    (["-c"], ["python", "-c", "import cloome_hf"], False),
    ([str(ROOT / "benchmarks" / "train.py")], ["python", "benchmarks/train.py"], False),
])
def test_a_command_process_is_told_from_a_library_process(argv, orig_argv, expected):
    assert started_as_command(argv, orig_argv) is expected


@pytest.mark.skipif(not _kernel_has_thp(), reason="the kernel has transparent huge pages off")
@pytest.mark.parametrize("launcher", ["console_script", "python_m"])
def test_training_from_the_command_records_the_fast_path(tmp_path, launcher):
    if launcher == "console_script":
        script = shutil.which("cloome")
        if script is None:
            pytest.skip("the cloome console script is not installed")
        command = [script]
    else:
        command = [sys.executable, "-m", "cloome_hf.cli"]
    out = tmp_path / "run"
    proc = subprocess.run([*command, *TINY_TRAIN, "--output_dir", str(out)], env=_env(), cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runtime = json.loads((out / "training_config.json").read_text())["runtime"]
    assert runtime["started_as_command"] and runtime["set_thp_before_torch"]
    assert runtime["THP_MEM_ALLOC_ENABLE"] == "1"
    assert runtime["torch_uses_huge_pages"]  # measured: a fresh CPU tensor got huge pages
    # and the run recorded the resolved device-augmentation default: on this CPU, the loader augments
    assert json.loads((out / "training_config.json").read_text())["arguments"]["augment_on_device"] is False


@pytest.mark.skipif(not _kernel_has_thp(), reason="the kernel has transparent huge pages off")
def test_a_library_process_is_left_alone_and_the_user_setting_wins(tmp_path):
    code = "import json, cloome_hf.runtime as r; print(json.dumps(r.runtime_report()))"
    plain = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=120)
    assert plain.returncode == 0, plain.stderr[-2000:]
    report = json.loads(plain.stdout.strip().splitlines()[-1])
    assert not report["started_as_command"] and report["THP_MEM_ALLOC_ENABLE"] == ""
    assert not report["torch_uses_huge_pages"]  # the probe tells the two apart

    # a command's process (argv[0] is the console script) keeps the value the user set
    command = "import sys; sys.argv = ['/usr/bin/cloome']; " + code
    user = subprocess.run([sys.executable, "-c", command], env={**_env(), "THP_MEM_ALLOC_ENABLE": "0"},
                          capture_output=True, text=True, timeout=120)
    assert user.returncode == 0, user.stderr[-2000:]
    report = json.loads(user.stdout.strip().splitlines()[-1])
    assert report["started_as_command"] and not report["set_thp_before_torch"]
    assert report["THP_MEM_ALLOC_ENABLE"] == "0" and not report["torch_uses_huge_pages"]
