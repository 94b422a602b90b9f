#!/usr/bin/env python
"""Equal-budget comparison of CLOOME's ResNet and the pretrained-tower recipes, with tiny random towers.

    python benchmarks/compare_towers.py --quick        # smoke run: small data, 30 steps
    python benchmarks/compare_towers.py                # 150 steps per run (the size of compare_losses.py)
    python benchmarks/compare_towers.py --summarize results.json   # the tables of a finished (or cut short) run

The README shows `--max_steps 60` (the default size did not fit on the shared 2-core machine).

Three recipes of :mod:`cloome_hf.recipes`, each trained with ``cloome train`` on the same two synthetic datasets
(rendered once, split by molecule, saved), for the same steps, batch size, optimiser and seed:

* ``cloome-resnet`` - the ``demo`` recipe: a small CLOOME ResNet trained from scratch (InfoNCE, augmentation);
* ``cellclip-style`` - a frozen DINOv2 tower (``per_channel``, trained cross-channel pooling), CWCL;
* ``molphenix-style`` - a frozen tower, well bags (mean pooling), S2L, one-hot dose encoding.

The towers are a random 4-layer DINOv2 (hidden size 96, patch 8) saved with ``save_pretrained`` and loaded by the
real tower code: no pretrained weights can be downloaded here, so a "frozen pretrained tower" is a frozen *random*
one. Each recipe keeps its model choices (tower, channel strategy, freezing, loss, bags, dose encoding); the
optimisation is the demo recipe's for all (batch 32, AdamW lr 2e-3, 20 warm-up steps), since the tower recipes'
own schedules (lr 1e-4, 1,000 warm-up steps) would not train in this budget.

Datasets: **embedded** (the embedded generator, 2 sites per molecule, one dose 1 uM for every site so that the
dose-encoding recipe runs; its wells hold one site) and **plates** (screening plates with inactive compounds, plate
and batch effects, 3 sites per well, doses 1 and 10 uM; controls left out). Metrics as in
``benchmarks/compare_losses.py`` (its functions): held-out retrieval top-1/5/10 both ways with 95 % Clopper-Pearson
intervals, and on plates MolPhenix's top-1 % retrieval of active molecules.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare_losses import analogue_pairs, evaluate, markdown  # noqa: E402

from cloome_hf.safe_io import atomic_write_json  # noqa: E402

RECIPES = ("cloome-resnet", "cellclip-style", "molphenix-style")
SIZES = {
    "quick": dict(embedded_molecules=160, plates_compounds=60, max_steps=30),
    "default": dict(embedded_molecules=600, plates_compounds=200, max_steps=150),
}
TOWER = {"hidden_size": 96, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 192,
         "image_size": 64, "patch_size": 8}
COMMON = ["--per_device_train_batch_size", "32", "--learning_rate", "2e-3", "--warmup_steps", "20",
          "--weight_decay", "0.1", "--restart_epochs", "0", "--image_size", "64", "--molecule_hidden_size", "256",
          "--molecule_num_layers", "2", "--projection_dim", "64", "--fingerprint_kind", "morgan",
          "--fingerprint_size", "1024", "--mixed_precision", "no"]


def make_tower(folder: str) -> str:
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    Dinov2Model(Dinov2Config(**TOWER)).save_pretrained(folder)
    BitImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}).save_pretrained(folder)
    return folder


def recipe_args(recipe: str, tower: str) -> list[str]:
    if recipe == "cloome-resnet":
        return ["--recipe", "demo"]
    args = ["--recipe", recipe, "--backbone", tower]
    if recipe == "molphenix-style":  # its stated OpenPhenom convention, at the tiny tower's input size
        args += ["--tower_preprocessing", json.dumps({"rescale_factor": 1 / 255, "image_mean": None,
                                                      "image_std": None, "input_size": [64, 64]})]
    return args


def build_datasets(folder: str, size: dict, validation_fraction: float) -> dict:
    import datasets

    from cloome_hf.data import contrastive_training_sites, split_by_molecule
    from cloome_hf.data.synthetic import make_synthetic_dataset
    from cloome_hf.data.synthetic_plates import make_synthetic_plates, plan_synthetic_plates

    plates = dict(num_compounds=size["plates_compounds"], inactive_fraction=0.5, replicates=2, sites_per_well=3,
                  controls_per_plate=16, num_plate_maps=2, image_size=64, phenotype="structure", seed=0,
                  doses=[1.0, 10.0])
    embedded = make_synthetic_dataset(num_molecules=size["embedded_molecules"], sites_per_molecule=2,
                                      image_size=64, seed=0)
    rendered = {"embedded": embedded.add_column("concentration", [1.0] * len(embedded)),
                "plates": contrastive_training_sites(make_synthetic_plates(**plates)).dataset}
    out = {}
    for name, ds in rendered.items():
        split = split_by_molecule(ds, {"train": 1 - validation_fraction, "validation": validation_fraction}, seed=0)
        path = os.path.join(folder, name)
        datasets.DatasetDict(split).save_to_disk(path)
        out[name] = {"path": path, "validation": split["validation"].select_columns(["sample_key", "inchikey"]),
                     "analogue_pairs": analogue_pairs(sorted(set(split["train"]["smiles"])))}
    annotations = plan_synthetic_plates(**plates).annotations
    out["plates"]["active"] = dict(zip(annotations.inchikey, annotations.active))
    return out


def train(recipe: str, tower: str, dataset: str, output_dir: str, max_steps: int, seed: int) -> dict:
    from cloome_hf.train.loop import main

    return main(["--output_dir", output_dir, "--overwrite_output_dir", "--dataset", dataset, *recipe_args(recipe, tower),
                 *COMMON, "--max_steps", str(max_steps), "--eval_steps", str(max_steps), "--save_steps",
                 str(max_steps), "--seed", str(seed), "--logging_steps", str(max(1, max_steps // 5))])


def summary(results: list[dict]) -> str:
    """The README's table: per dataset and recipe, top-1 both ways and the active top-1 % (95 % CIs), steps and
    seconds (wall clock of the whole ``cloome train`` run: data loading, training and the final validation)."""
    from compare_losses import _cell

    seeds = len({r["seed"] for r in results}) > 1
    lines = ["| data | recipe |" + (" seed |" if seeds else "") + " image -> molecule top-1 | molecule -> image "
             "top-1 | active top-1 % | steps | s |", "|---|---|" + ("---|" if seeds else "") + "---|---|---|---|---|"]
    for r in sorted(results, key=lambda r: (r["dataset"] != results[0]["dataset"], RECIPES.index(r["loss"]),
                                            r["seed"])):
        m = r["metrics"]
        active = _cell(m["active"]["top1pct"]) if "active" in m else "-"
        lines.append(f"| {r['dataset']} | {r['loss']} |" + (f" {r['seed']} |" if seeds else "")
                     + f" {_cell(m['image_to_molecule_top1'])} | {_cell(m['molecule_to_image_top1'])} | {active} | "
                     f"{r['max_steps']} | {r['seconds']:.0f} |")
    for dataset in dict.fromkeys(r["dataset"] for r in results):
        m = next(r["metrics"] for r in results if r["dataset"] == dataset)
        active = f"{100 * m['active']['random']:.1f}" if "active" in m else "-"
        lines.append(f"| {dataset} | random |" + (" |" if seeds else "")
                     + f" {100 * m['random']['image_to_molecule_top1']:.1f} | "
                     f"{100 * m['random']['molecule_to_image_top1']:.1f} | {active} | | |")
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=RECIPES)
    parser.add_argument("--datasets", nargs="+", default=["embedded", "plates"], choices=["embedded", "plates"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--max_steps", type=int, default=None)
    parser.add_argument("--validation_fraction", type=float, default=0.2)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--output", default=None, help="write the results as JSON here (after every run)")
    parser.add_argument("--summarize", nargs="+", default=None, metavar="JSON",
                        help="print the tables of results files this script wrote (e.g. one per seed), and train "
                             "nothing")
    args = parser.parse_args(argv)
    if args.summarize:
        from cloome_hf.safe_io import read_json

        results = [r for path in args.summarize for r in read_json(path, "compare_towers results")["results"]]
        print(f"{markdown(results)}\n\n{summary(results)}")
        return results
    size = dict(SIZES["quick" if args.quick else "default"])
    if args.max_steps is not None:
        size["max_steps"] = args.max_steps
    results = []
    with tempfile.TemporaryDirectory(prefix="compare-towers-") as scratch:
        workdir = args.workdir or scratch
        data = build_datasets(os.path.join(workdir, "data"), size, args.validation_fraction)
        tower = make_tower(os.path.join(workdir, "tiny-dinov2"))
        for dataset in args.datasets:
            for recipe in args.recipes:
                for seed in args.seeds:
                    start = time.perf_counter()
                    run = train(recipe, tower, data[dataset]["path"],
                                os.path.join(workdir, "runs", dataset, f"{recipe}-{seed}"), size["max_steps"], seed)
                    results.append({"dataset": dataset, "loss": recipe, "seed": seed, "max_steps": size["max_steps"],
                                    "seconds": time.perf_counter() - start,
                                    "analogue_pairs": data[dataset]["analogue_pairs"],
                                    "metrics": evaluate(run, data[dataset])})
                    if args.output:  # after every run, so that a long comparison cut short keeps what it measured
                        atomic_write_json(args.output, {"size": size, "seeds": args.seeds, "results": results})
    print(f"\n{size['max_steps']} steps per run, seeds {args.seeds} (the 'loss' column is the recipe)\n"
          f"{markdown(results)}")
    print(f"\n{summary(results)}")
    print("\nseconds per run: " + ", ".join(f"{r['dataset']}/{r['loss']} {r['seconds']:.0f}" for r in results))
    return results


if __name__ == "__main__":
    main()
