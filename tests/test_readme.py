"""README.md: the set-up commands are the ones CI runs, and the model examples run as written."""

import csv
import io
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import tifffile

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _section(name: str) -> str:
    return README.split(f"<!-- BEGIN {name} -->", 1)[1].split(f"<!-- END {name} -->", 1)[0]


def test_two_set_up_commands_and_ci_runs_the_test_command():
    setup = README.split("## Set up on a fresh machine", 1)[1].split("\n## ", 1)[0]
    commands = [block.split("```", 1)[0].strip() for block in setup.split("```bash\n")[1:]]
    assert commands == ['pip install . && cloome train --output_dir runs/demo',
                        'pip install -e ".[test]" && HF_HUB_OFFLINE=1 python -m pytest tests -q']
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1] == commands[1]


def test_model_section_examples_run(tmp_path, monkeypatch, one_thread):
    monkeypatch.chdir(tmp_path)
    first, migration, trainer = [b.split("```", 1)[0] for b in _section("model").split("```python\n")[1:]]
    namespace: dict = {}
    exec(compile(first, "README-model", "exec"), namespace)
    assert (tmp_path / "my-cloome" / "model.safetensors").is_file()
    namespace["pixel_values"] = namespace["images"]
    exec(compile(migration, "README-migration", "exec"), namespace)
    assert namespace["features"].shape == (4, 512)
    before = namespace["model"].state_dict()["visual_projection.weight"].clone()
    exec(compile(trainer, "README-trainer", "exec"), namespace)
    assert not namespace["model"].state_dict()["visual_projection.weight"].equal(before)  # it trained


def test_processing_example_runs_from_outside_the_clone(tmp_path, monkeypatch, one_thread):
    from cloome_hf import CloomeConfig, CloomeModel

    monkeypatch.chdir(tmp_path)
    block = _section("processing").split("```python\n", 1)[1].split("```", 1)[0]
    vision = {"layers": [1, 1, 1, 1], "base_width": 8, "head_pool_size": 2, "image_size": [520, 696]}
    namespace: dict = {"model": CloomeModel(CloomeConfig(vision_config=vision, projection_dim=16)).eval()}
    exec(compile(block, "README-processing", "exec"), namespace)
    batch = namespace["batch"]
    assert batch["pixel_values"].shape == (1, 5, 520, 696) and batch["fingerprints"].shape == (1, 1024)
    assert batch["fingerprints"].sum() > 0  # aspirin sets bits
    assert namespace["outputs"].image_embeds.shape == (1, 16)


# The model settings added to the README's `cloome train` line so that the recipe runs in seconds on a CPU.
TINY_OWN_DATA_TRAIN = ["--base_width", "8", "--molecule_hidden_size", "32", "--projection_dim", "16",
                       "--fingerprint_size", "128", "--per_device_train_batch_size", "4", "--vision_layers", "1", "1",
                       "1", "1", "--max_steps", "2", "--save_steps", "1", "--eval_steps", "100",
                       "--save_total_limit", "0", "--image_size", "64"]


def _own_data_index_and_commands():
    section = _section("own-data")
    table = section.split("```text\n", 1)[1].split("```", 1)[0]
    commands = section.split("```bash\n", 1)[1].split("```", 1)[0].strip().splitlines()
    return list(csv.DictReader(io.StringIO(table))), commands


def test_bring_your_own_data_recipe_runs_as_written_from_outside_the_clone(tmp_path):
    rows, commands = _own_data_index_and_commands()
    assert [c.split()[:2] for c in commands] == [["cloome", "prepare"], ["cloome", "train"], ["cloome", "evaluate"]]
    assert len(rows) == 4  # the README's example: a header and four sites
    # The README's four sites plus a second plate named the same way, so that there are molecules to hold out.
    smiles = ["CCO", "CC(=O)Oc1ccccc1C(=O)O", "Cn1cnc2c1c(=O)n(C)c(=O)n2C", "c1ccccc1O",
              "CC(C)Cc1ccc(cc1)C(C)C(=O)O", "CN1CCC[C@H]1c1cccnc1", "OC(=O)CCc1ccccc1", "Nc1ccccc1"]
    template = rows[0]
    for j, smi in enumerate(smiles):
        for site in (1, 2):
            well = f"B{j + 1:02d}"
            rows.append({k: v.replace("P1", "P2").replace("A01", well).replace("_s1_", f"_s{site}_")
                         for k, v in template.items()} | {"SAMPLE_KEY": f"P2-{well}-{site}", "SITE": str(site),
                                                          "SMILES": smi})
    work = tmp_path / "elsewhere"  # not the clone: nothing may be read from tests/ or the checkout's folders
    images = work / "images"
    rng = np.random.default_rng(0)
    for i, row in enumerate(rows):
        for k, column in enumerate(c for c in row if c.startswith("IMG_")):
            (images / row[column]).parent.mkdir(parents=True, exist_ok=True)
            tifffile.imwrite(images / row[column], rng.gamma(2.0, 300.0 + 20 * i + 40 * k, (72, 72)).astype(np.uint16) + 1)
    with open(work / "index.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    outputs = []
    for command in commands:
        argv = [sys.executable, "-m", "cloome_hf.cli", *shlex.split(command)[1:]]
        if argv[3] == "train":
            argv += TINY_OWN_DATA_TRAIN
        proc = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"{command} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        outputs.append(proc.stdout + proc.stderr)

    report = json.loads((work / "my_sites" / "prepare_report.json").read_text())
    assert report["num_written"] == len(rows) == 20
    assert (work / "runs" / "mine" / "model.safetensors").is_file()
    results = json.loads((work / "runs" / "mine" / "eval" / "results.json").read_text())
    # One retrieval pair per molecule: the README's CCO and aspirin reappear on plate P2, its CS(C)=O does not.
    assert results["tasks"]["retrieval"]["image_to_molecule"]["top1"]["n"] == len(smiles) + 1
    assert (work / "runs" / "mine" / "eval" / "report.md").is_file()
    assert "EVALUATED ON THE TRAINING DATA" in outputs[2]


def test_prepare_help_names_the_command_and_gives_the_readme_index_schema(tmp_path):
    rows, _ = _own_data_index_and_commands()
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "cloome_hf.cli", "prepare", "--help"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("usage: cloome prepare ")
    assert ",".join(rows[0]) in proc.stdout  # the README's index header is the one --help documents
