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


def _cloome(env_dir, work, *args, timeout=600):
    proc = subprocess.run([str(env_dir / "bin" / "cloome"), *map(str, args)], cwd=work, env=_env(),
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"cloome {args[0]} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_the_wheel_is_imported_not_the_checkout(installed):
    env_dir, work = installed
    proc = subprocess.run([str(env_dir / "bin" / "python"), "-c", "import cloome_hf; print(cloome_hf.__file__)"],
                          cwd=work, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert Path(proc.stdout.strip()).is_relative_to(env_dir), proc.stdout


def test_the_wheel_ships_the_example_site(installed):
    env_dir, work = installed
    code = ("import json, cloome_hf, tifffile; s = cloome_hf.example_site(); "
            "print(json.dumps({c: [p, list(tifffile.imread(p).shape)] for c, p in s.items()}))")
    proc = subprocess.run([str(env_dir / "bin" / "python"), "-c", code], cwd=work, env=_env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    site = json.loads(proc.stdout.strip().splitlines()[-1])
    assert list(site) == ["Mito", "ERSyto", "ERSytoBleed", "Ph_golgi", "Hoechst"]
    for path, shape in site.values():
        assert Path(path).is_relative_to(env_dir) and shape == [520, 696], (path, shape)


def test_every_command_runs_from_the_installed_wheel(installed):
    env_dir, work = installed
    _cloome(env_dir, work, "train", "--output_dir", "run", "--synthetic_molecules", "24",
            "--synthetic_sites_per_molecule", "2", "--base_width", "8", "--molecule_hidden_size", "32",
            "--projection_dim", "16", "--fingerprint_size", "128", "--per_device_train_batch_size", "8",
            "--max_steps", "2", "--eval_steps", "2", "--save_steps", "2")
    assert (work / "run" / "model.safetensors").is_file() and (work / "run" / "training_config.json").is_file()

    raw = subprocess.run([str(env_dir / "bin" / "python"), "-m", "cloome_hf.data", "synthetic", "--output_dir", "raw",
                          "--layout", "bray_npz", "--num_molecules", "12", "--sites_per_molecule", "2",
                          "--num_plates", "2"], cwd=work, env=_env(), check=True, capture_output=True, text=True,
                         timeout=300)
    layout = json.loads(raw.stdout.strip().splitlines()[-1])
    _cloome(env_dir, work, "prepare", "--layout", "bray_npz", "--index", layout["index"], "--root", layout["root"],
            "--output_dir", "sites")
    assert json.loads((work / "sites" / "prepare_report.json").read_text())["num_written"] == 24
    pd.DataFrame({"smiles": ["CCO", "c1ccccc1O", "CC(=O)Oc1ccccc1C(=O)O"]}).to_csv(work / "library.csv", index=False)
    _cloome(env_dir, work, "embed", "--model", "run", "--dataset", "sites", "--molecules", "library.csv",
            "--output_dir", "emb", "--batch_size", "8")
    assert len(list((work / "emb" / "images").glob("shard-*.parquet"))) == 1
    assert len(list((work / "emb" / "molecules").glob("shard-*.parquet"))) == 1

    _cloome(env_dir, work, "search", "--embeddings", "emb", "--smiles", "CCO", "--k", "3", "--output", "hits.csv")
    assert len(pd.read_csv(work / "hits.csv")) == 3

    _cloome(env_dir, work, "evaluate", "--model", "run", "--dataset", "sites", "--tasks", "retrieval",
            "--output_dir", "eval", "--gallery_queries", "2")
    results = json.loads((work / "eval" / "results.json").read_text())
    assert results["tasks"]["retrieval"]["image_to_molecule"]["top1"]["n"] == 12

    torch.save({"epoch": 1, "state_dict": make_upstream_state_dict(seed=3)}, work / "upstream.pt")
    _cloome(env_dir, work, "convert", "--checkpoint_path", "upstream.pt", "--output_dir", "converted",
            "--preset", "bioactivity")
    assert (work / "converted" / "model.safetensors").is_file() and (work / "converted" / "README.md").is_file()

    _cloome(env_dir, work, "push", "--model_dir", "run", "--embeddings", "emb", "--results", "eval/results.json",
            "--repo_id", "me/cloome-tiny", "--local_dir", "publish")
    assert (work / "publish" / "model" / "model.safetensors").is_file()
    assert "learning_rate" in (work / "publish" / "model" / "README.md").read_text()  # the training recipe
    assert list((work / "publish" / "dataset" / "images").glob("*.parquet"))
