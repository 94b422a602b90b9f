"""The installed wheel is the product: build it, install it into a fresh virtual environment, and run every
``cloome`` command from a folder outside the checkout."""

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import pandas as pd
import pytest
import torch

from upstream_checkpoint import make_upstream_state_dict

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A virtual environment with the freshly built wheel (dependencies from the system site-packages)."""
    tmp = tmp_path_factory.mktemp("wheel")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "--wheel-dir", str(tmp / "dist"), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    wheel, = (tmp / "dist").glob("cloome_hf-*.whl")
    env_dir = tmp / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--ignore-installed", "-q",
                              str(wheel)], capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]
    work = tmp / "elsewhere"  # not the checkout: nothing may be read from scripts/ or tests/
    work.mkdir()
    return env_dir, work


def _env():
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return dict(env, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")


# Every command in one process of the installed wheel (one import of torch instead of one per command; each
# command starts from a fresh accelerate state, as a new process would). The console script runs once, below.
DRIVER = r"""
import json, sys
from accelerate.state import AcceleratorState
import cloome_hf, tifffile
from cloome_hf.cli import main
from cloome_hf.data.__main__ import main as data_main

site = cloome_hf.example_site()
print(json.dumps({"module": cloome_hf.__file__,
                  "site": {c: [p, list(tifffile.imread(p).shape)] for c, p in site.items()}}))
layout = data_main(["synthetic", "--output_dir", "raw", "--kind", "bray_npz", "--synthetic_molecules", "12",
                    "--synthetic_sites_per_molecule", "2", "--synthetic_plates", "2"])
commands = [
    ["train", "--output_dir", "run", "--synthetic_molecules", "24", "--synthetic_sites_per_molecule", "2",
     "--base_width", "8", "--molecule_hidden_size", "32", "--projection_dim", "16", "--fingerprint_size", "128",
     "--per_device_train_batch_size", "8", "--max_steps", "2", "--eval_steps", "2", "--save_steps", "2"],
    ["prepare", "--kind", "bray_npz", "--index", layout["index"], "--root", layout["root"], "--output_dir", "sites"],
    ["embed", "--model", "run", "--dataset", "sites", "--molecules", "library.csv", "--output_dir", "emb",
     "--batch_size", "8"],
    ["evaluate", "--model", "run", "--dataset", "sites", "--tasks", "retrieval", "--output_dir", "eval",
     "--gallery_queries", "2"],
    ["convert", "--checkpoint_path", "upstream.pt", "--output_dir", "converted", "--recipe", "bioactivity"],
    ["push", "--model", "run", "--embeddings", "emb", "--results", "eval/results.json", "--repo_id",
     "me/cloome-tiny", "--local_dir", "publish"],
    # #25: the same path with a graph-network molecule tower (convert reads the published MLP weights only)
    ["train", "--output_dir", "gnn_run", "--synthetic_molecules", "24", "--synthetic_sites_per_molecule", "2",
     "--base_width", "8", "--molecule_hidden_size", "32", "--projection_dim", "16", "--per_device_train_batch_size",
     "8", "--max_steps", "2", "--eval_steps", "2", "--save_steps", "2", "--molecule_encoder", "gnn"],
    ["embed", "--model", "gnn_run", "--dataset", "synthetic", "--molecules", "library.csv", "--output_dir",
     "gnn_emb", "--batch_size", "64"],
    ["search", "--embeddings", "gnn_emb", "--smiles", "CCO", "--k", "3", "--output", "gnn_hits.csv"],
    ["evaluate", "--model", "gnn_run", "--dataset", "synthetic", "--synthetic_molecules", "12",
     "--synthetic_sites_per_molecule", "2", "--synthetic_plates", "2", "--tasks", "retrieval", "--output_dir",
     "gnn_eval"],
    ["push", "--model", "gnn_run", "--embeddings", "gnn_emb", "--results", "gnn_eval/results.json",
     "--repo_id", "me/cloome-gnn", "--local_dir", "gnn_publish"],
]
for argv in commands:
    AcceleratorState._reset_state(reset_partial_state=True)
    status = main(argv)
    if status != 0:
        sys.exit(f"cloome {argv[0]} exited {status}")
"""


@pytest.fixture(scope="module")
def driven(installed):
    """The driver's run in the working folder outside the checkout: ``(work, what it printed first)``."""
    env_dir, work = installed
    pd.DataFrame({"smiles": ["CCO", "c1ccccc1O", "CC(=O)Oc1ccccc1C(=O)O"]}).to_csv(work / "library.csv", index=False)
    torch.save({"epoch": 1, "state_dict": make_upstream_state_dict(seed=3)}, work / "upstream.pt")
    (work / "driver.py").write_text(DRIVER)
    proc = subprocess.run([str(env_dir / "bin" / "python"), "driver.py"], cwd=work, env=_env(), capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, f"{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return work, json.loads(proc.stdout.strip().splitlines()[0])


def test_the_wheel_is_imported_not_the_checkout(installed, driven):
    env_dir, _ = installed
    assert Path(driven[1]["module"]).is_relative_to(env_dir), driven[1]["module"]


def test_the_wheel_ships_the_example_site(installed, driven):
    env_dir, _ = installed
    site = driven[1]["site"]
    assert list(site) == ["Mito", "ERSyto", "ERSytoBleed", "Ph_golgi", "Hoechst"]
    for path, shape in site.values():
        assert Path(path).is_relative_to(env_dir) and shape == [520, 696], (path, shape)


def test_every_command_runs_from_the_installed_wheel(installed, driven):
    env_dir, work = installed
    assert (work / "run" / "model.safetensors").is_file() and (work / "run" / "training_config.json").is_file()
    assert json.loads((work / "sites" / "prepare_report.json").read_text())["num_written"] == 24
    assert len(list((work / "emb" / "images").glob("shard-*.parquet"))) == 1
    assert len(list((work / "emb" / "molecules").glob("shard-*.parquet"))) == 1
    results = json.loads((work / "eval" / "results.json").read_text())
    assert results["tasks"]["retrieval"]["image_to_molecule"]["top1"]["n"] == 12
    assert (work / "converted" / "model.safetensors").is_file() and (work / "converted" / "README.md").is_file()
    assert (work / "publish" / "model" / "model.safetensors").is_file()
    assert "learning_rate" in (work / "publish" / "model" / "README.md").read_text()  # the training recipe
    assert list((work / "publish" / "dataset" / "images").glob("*.parquet"))


def test_every_command_runs_with_a_gnn_tower_from_the_installed_wheel(installed, driven):
    _, work = installed
    assert json.loads((work / "gnn_run" / "config.json").read_text())["molecule_config"]["encoder"] == "gnn"
    assert (work / "gnn_run" / "molecule_tower_gnn.py").is_file()  # the remote-code copy carries the tower
    assert len(pd.read_csv(work / "gnn_hits.csv")) == 3
    results = json.loads((work / "gnn_eval" / "results.json").read_text())
    assert results["tasks"]["retrieval"]["image_to_molecule"]["top1"]["n"] == 12
    card = (work / "gnn_publish" / "model" / "README.md").read_text()
    assert "graph network" in card and "GraphFeaturizer" in card


def test_the_console_script_runs_a_command(installed, driven):
    """``cloome`` as pip installed it (the ``[project.scripts]`` entry point), on the driver's embeddings."""
    env_dir, work = installed
    proc = subprocess.run([str(env_dir / "bin" / "cloome"), "search", "--embeddings", "emb", "--smiles", "CCO",
                           "--k", "3", "--output", "hits.csv"], cwd=work, env=_env(), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(pd.read_csv(work / "hits.csv")) == 3
