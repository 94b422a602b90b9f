"""The CLI's error boundary, from the user's side: each entry point (the ``cloome`` console script, ``python -m
cloome_hf.cli``, the ``scripts/*.py`` shims) ends a refused input with exit status 2 and exactly two lines,
``cloome CMD: error: ...`` and ``cloome CMD: hint: ...``; ``--debug`` shows the traceback instead. Each entry point
starts a process once; the other refusals run ``cloome_hf.cli.main`` in this process (``run_cloome``)."""

import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import run_cloome

ROOT = Path(__file__).resolve().parents[2]


def _cloome(args, cwd, entry=None):
    """Run a cloome command through ``entry`` (``"console"``, ``"module"``, a shim's file name; ``None``: in this
    process); returns the finished process."""
    if entry is None:
        return run_cloome(args, cwd)
    prefix = {"console": ["cloome"], "module": [sys.executable, "-m", "cloome_hf.cli"]}.get(entry)
    if prefix is None:  # a scripts/ shim
        prefix = [sys.executable, str(ROOT / "scripts" / entry)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(prefix + list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _assert_one_line_error(proc, command, pattern):
    """Exit status 2, and stderr ends in the error line matching ``pattern`` and a hint line; no traceback."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "usage:" not in proc.stderr, proc.stderr
    assert re.fullmatch(rf"cloome {command}: error: .*{pattern}.*", lines[-2]), lines[-2:]
    assert lines[-1].startswith(f"cloome {command}: hint: "), lines[-1]


def test_mistyped_local_dataset_is_reported_missing_not_looked_up_on_the_hub(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "sites").mkdir()
    proc = _cloome(["train", "--dataset", "data/sitez", "--output_dir", "run"], tmp_path)
    _assert_one_line_error(proc, "train", r"dataset 'data/sitez' does not exist.*data holds sites")
    assert "Hub" not in proc.stderr and "huggingface" not in proc.stderr


def test_usage_error_is_one_line_and_points_to_help(tmp_path):
    proc = _cloome(["train", "--recipe", "nope", "--output_dir", "run"], tmp_path, entry="module")
    _assert_one_line_error(proc, "train", r"invalid choice: 'nope'")
    assert "cloome train --help" in proc.stderr


def test_bad_smiles_is_one_line_from_the_scripts_shim(tmp_path):
    index = tmp_path / "index.csv"
    index.write_text("SAMPLE_KEY,PLATE_ID,WELL_POSITION,SITE,SMILES,IMG_Mito,IMG_ERSyto,IMG_ERSytoBleed,"
                     "IMG_Ph_golgi,IMG_Hoechst\nP1-A01-1,P1,A01,1,C1CC(,m,e,b,g,h\n")
    proc = _cloome(["--layout", "tiff", "--index", "index.csv", "--root", ".", "--errors", "raise",
                    "--output_dir", "out"], tmp_path, entry="prepare_dataset.py")
    _assert_one_line_error(proc, "prepare", r"invalid SMILES 'C1CC\('")
    assert "RDKit" in proc.stderr.splitlines()[-1]


def test_used_output_folder_is_refused_in_one_line(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "all_results.json").write_text("{}")
    proc = _cloome(["train", "--output_dir", "run"], tmp_path)
    _assert_one_line_error(proc, "train", r"run already holds a training run")
    assert (run / "all_results.json").read_text() == "{}"  # nothing of the earlier run is touched


def test_unknown_command_is_one_line(tmp_path):
    proc = _cloome(["trian"], tmp_path, entry="console")
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "cloome: error: unknown command 'trian'; the commands are train, prepare, embed, evaluate, search, "
        "convert, push, serve, space", "cloome: hint: run 'cloome --help'"]


def test_debug_anywhere_shows_the_traceback(tmp_path):
    proc = _cloome(["train", "--dataset", "./missing", "--debug", "--output_dir", "run"], tmp_path)
    assert proc.returncode != 0
    assert "Traceback (most recent call last)" in proc.stderr
    assert "FileNotFoundError: dataset './missing' does not exist" in proc.stderr
