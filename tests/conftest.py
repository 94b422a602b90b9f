"""Shared test set-up: offline Hub, deterministic seeds, tiny configurations."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402


# A ResNet of the published design, shrunk for CPU tests: 64 px inputs leave a 2x2 map for a 2x2 head pool.
TINY_VISION = {
    "backbone": "cloome_resnet50",
    "num_channels": 5,
    "layers": [1, 1, 1, 1],
    "image_size": [64, 64],
    "base_width": 8,
    "head_pool_size": 2,
}
TINY_MOLECULE = {"fingerprint_size": 64, "hidden_size": 32, "num_hidden_layers": 2}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def tiny_config():
    from cloome_hf import CloomeConfig

    return CloomeConfig(vision_config=dict(TINY_VISION), molecule_config=dict(TINY_MOLECULE), projection_dim=16)


@pytest.fixture
def one_thread():
    """One intra-op thread, for tests that compare weights bit for bit across runs or processes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---- newcomer3: shared training-run helpers (were in test_training.py, imported by other test modules) ----
# A tiny CLOOME on a small synthetic set: every `cloome train` run with these takes seconds on one CPU core.
TINY_ARGS = [
    "--synthetic_molecules", "40", "--synthetic_sites_per_molecule", "3", "--base_width", "8",
    "--molecule_hidden_size", "32", "--projection_dim", "16", "--fingerprint_size", "128",
    "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "32",
]
# The smallest `cloome train` run the CLI accepts: 2 steps, a checkpoint at each, no validation in between.
TINY_TRAIN_ARGS = [*TINY_ARGS, "--vision_layers", "1", "1", "1", "1", "--max_steps", "2", "--save_steps", "1",
                   "--eval_steps", "100", "--save_total_limit", "0"]


def load_train_script():
    """``cloome train`` as the package implements it (``scripts/train.py`` is a shim over it)."""
    import types

    from cloome_hf.train import loop, params

    return types.SimpleNamespace(main=loop.main, parse_args=params.parse_args)


def read_log(folder):
    """The per-step records of a run's ``train_log.jsonl``."""
    import json

    with open(os.path.join(folder, "train_log.jsonl")) as f:
        return [json.loads(line) for line in f]
# ---- end newcomer3 ----


def run_cloome(args, cwd=None, env=None):
    """``cloome ARGS`` in this process, as the console script runs it (``cloome_hf.cli.main``, from a fresh
    accelerate state, in ``cwd``, with ``env`` added to the environment), so a test does not pay a new process's
    6-7 s of imports. Returns a ``subprocess.CompletedProcess`` with the exit status and what the command printed
    to stdout and stderr; an exception the command lets through is printed as a traceback with status 1, as an
    uncaught one would be. Tests of an entry point itself (console script, ``-m``, shims) start a process."""
    import contextlib
    import io
    import subprocess
    import traceback

    from accelerate.state import AcceleratorState

    from cloome_hf.cli import main

    argv = [str(a) for a in args]
    out, err = io.StringIO(), io.StringIO()
    saved_env, threads = dict(os.environ), torch.get_num_threads()
    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        os.environ.update(env or {})
        with contextlib.chdir(cwd or os.getcwd()), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                status = main(argv)
            except SystemExit as stop:  # argparse's --help, or sys.exit(message)
                if isinstance(stop.code, str):
                    print(stop.code, file=err)
                status = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
            except Exception:  # noqa: BLE001  a process would end here with its traceback
                traceback.print_exc(file=err)
                status = 1
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        os.environ.clear()
        os.environ.update(saved_env)
        torch.set_num_threads(threads)
    return subprocess.CompletedProcess(["cloome", *argv], status, out.getvalue(), err.getvalue())


@pytest.fixture(scope="session")
def finished_tiny_run(tmp_path_factory):
    """One finished tiny training run (model folder + checkpoints), shared by every test that only reads it:
    copy it (``shutil.copytree``) before writing into it."""
    from cloome_hf.train import main

    out = tmp_path_factory.mktemp("finished_tiny_run") / "run"
    main(["--output_dir", str(out), *TINY_TRAIN_ARGS])
    return out


@pytest.fixture
def write_tiff_plates():
    """Writes a user's TIFF folder: ``write_tiff_plates(folder, plates=("P1",), wells=("A01", "A02"), sites=2)``
    gives ``folder/PLATE/WELL_sSITE_CHANNEL.tif`` (16-bit, ``size`` px, channels named DNA, ER, RNA, AGP, Mito,
    each well a different brightness) and returns the well table rows ``[(plate, well, smiles), ...]``."""
    import numpy as np
    import tifffile

    smiles = ("CCO", "CC(=O)Oc1ccccc1C(=O)O", "Cn1cnc2c1c(=O)n(C)c(=O)n2C", "c1ccccc1O", "CC(C)Cc1ccc(cc1)C(C)C(=O)O",
              "CN1CCC[C@H]1c1cccnc1", "OC(=O)CCc1ccccc1", "Nc1ccccc1")

    def write(folder, plates=("P1",), wells=("A01", "A02"), sites=2, size=72, seed=0):
        rng = np.random.default_rng(seed)
        rows = []
        for plate in plates:
            (folder / plate).mkdir(parents=True, exist_ok=True)
            for j, well in enumerate(wells):
                rows.append((plate, well, smiles[j % len(smiles)]))
                for site in range(1, sites + 1):
                    for k, channel in enumerate(("DNA", "ER", "RNA", "AGP", "Mito")):
                        image = rng.gamma(2.0, 300.0 + 150 * j + 40 * k, (size, size)).astype(np.uint16) + 1
                        tifffile.imwrite(folder / plate / f"{well}_s{site}_{channel}.tif", image)
        return rows

    return write


# Tiny random transformers vision towers saved like a downloaded model: config, weights and image processor.
TINY_TOWER = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
              "image_size": 32, "patch_size": 8}


@pytest.fixture
def tiny_tower_folder(tmp_path):
    """``make(kind, processor=True)`` -> a folder holding a random 2-layer ``"dinov2"`` or ``"vit"`` model (hidden
    size 32, 32 px, patch 8) and, with ``processor``, its image processor (32 px crop, its library's mean / std)."""
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model, ViTConfig, ViTImageProcessor, ViTModel

    def make(kind: str = "dinov2", processor: bool = True):
        folder = tmp_path / f"tiny-{kind}"
        if kind == "dinov2":
            Dinov2Model(Dinov2Config(**TINY_TOWER)).save_pretrained(folder)
            image_processor = BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
        else:
            ViTModel(ViTConfig(**TINY_TOWER)).save_pretrained(folder)
            image_processor = ViTImageProcessor(size={"height": 32, "width": 32})
        if processor:
            image_processor.save_pretrained(folder)
        return str(folder)

    return make


# ----- serve (issue 26) -------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def tiny_served_store(finished_tiny_run, tmp_path_factory):
    """A ``cloome embed --thumbnails 48`` store (images + molecule library) of 24 synthetic sites in 2 plates,
    made with the finished tiny run's model, with the source dataset saved beside it so the page can also draw
    the sites. Every third site is a negative control; doses are 1 or 10 uM. Shards of 10 rows."""
    import pandas as pd

    from cloome_hf.cli import embed
    from cloome_hf.data.synthetic import make_synthetic_dataset

    root = tmp_path_factory.mktemp("served_store")
    ds = make_synthetic_dataset(num_molecules=8, sites_per_molecule=3, num_plates=2, image_size=64, seed=3)
    ds = ds.add_column("perturbation_type", ["negcon" if i % 3 == 0 else "trt" for i in range(len(ds))])
    ds = ds.add_column("concentration", [1.0 if i % 2 else 10.0 for i in range(len(ds))])
    ds.save_to_disk(str(root / "sites"))
    library = sorted(set(ds["smiles"]))
    names = dict(zip(ds["smiles"], ds["name"]))
    pd.DataFrame({"smiles": library, "name": [names[s] for s in library]}).to_csv(root / "library.csv", index=False)
    embed.main(["--model", str(finished_tiny_run), "--dataset", str(root / "sites"), "--molecules",
                str(root / "library.csv"), "--output_dir", str(root / "store"), "--batch_size", "8",
                "--shard_size", "10", "--thumbnails", "48"])
    return {"model": finished_tiny_run, "store": root / "store", "dataset": ds, "library": library, "root": root}
# ----- end serve ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------- mol3 (#25 molecule towers): fixtures begin
# A tiny chemical language model saved like a downloaded one: a character-level WordLevel tokenizer over SMILES
# characters (RoBERTa's special tokens) and a random 2-layer RoBERTa (hidden size 32, 34 tokens).
TINY_CHEM_LM = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
                "max_position_embeddings": 36}
TINY_GNN = {"encoder": "gnn", "hidden_size": 32, "num_hidden_layers": 2}


@pytest.fixture(scope="session")
def tiny_chem_lm_folder(tmp_path_factory):
    """A folder holding a random tiny RoBERTa and its character-level SMILES tokenizer (``model_max_length`` 34)."""
    from cloome_hf.testing import save_char_level_smiles_lm

    return save_char_level_smiles_lm(tmp_path_factory.mktemp("tiny-chem-lm"), model_max_length=34,
                                     characters="CNOSPFIBrclnos()[]=#@+-0123456789%/\\.H", seed=0, **TINY_CHEM_LM)
# ---------------------------------------------------------------- mol3 (#25 molecule towers): fixtures end


# ---------------------------------------------------------------- serve4 (#26 stores as Hub ids): fixtures begin
@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """A Hugging Face cache in ``tmp_path`` (``HF_HUB_CACHE`` for subprocesses, ``huggingface_hub.constants`` in
    this one) and ``put(repo_id, folder, refs=("main",))``: lay ``folder``'s files out as a downloaded dataset
    repo, the way ``snapshot_download`` leaves one (content-addressed ``blobs/``, ``snapshots/<commit>/`` of
    symlinks to them, ``refs/<ref>`` naming the commit), so the real ``snapshot_download`` finds it offline.
    ``put`` returns the snapshot folder."""
    import hashlib
    from pathlib import Path

    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    cache = tmp_path / "hf_cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))

    def put(repo_id: str, folder, refs=("main",)) -> Path:
        repo = cache / repo_folder_name(repo_id=repo_id, repo_type="dataset")
        commit = hashlib.sha1(f"{repo_id}:{folder}".encode()).hexdigest()
        snapshot = repo / "snapshots" / commit
        for file in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
            data = file.read_bytes()
            blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
            blob.parent.mkdir(parents=True, exist_ok=True)
            blob.write_bytes(data)
            link = snapshot / file.relative_to(folder)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(blob, link.parent))
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        for ref in refs:
            (repo / "refs" / ref).write_text(commit)
        return snapshot

    return put
# ---------------------------------------------------------------- serve4 (#26 stores as Hub ids): fixtures end
