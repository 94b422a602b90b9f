#!/usr/bin/env python
"""Molecule towers (#25) against the fingerprint MLP: featurisation, forward pass, training input path, and an
equal-budget comparison on synthetic data.

    python benchmarks/bench_molecule_towers.py                       # speed: featurise, forward, input path
    python benchmarks/bench_molecule_towers.py --compare --max_steps 150   # + held-out retrieval per tower
    python benchmarks/bench_molecule_towers.py --skip_speed --compare --max_steps 150 --compare_molecules 400 \
        --seeds 0 1 2 3 4 --output towers.json     # the README's comparison, figures written as JSON

Every figure is measured in this run, the fingerprint MLP's (``mlp``) in the same process, and reported as a ratio
to it. Towers (random weights; speed does not depend on them):

* ``mlp``: Morgan r=3, 1024 bits -> the published MLP (4 x 1024);
* ``gnn``: the RDKit graph of the default schema -> the molphenix-style tower (GINE, 5 x 512, mean readout);
* ``transformers``: a character-level SMILES tokenizer built here (no network) -> a random RoBERTa of
  ChemBERTa-zinc-base-v1's size (6 layers, hidden 768, 12 heads; ``--lm_layers`` / ``--lm_hidden`` to change).

**Featurisation**: SMILES/s of ``featurizer(smiles)`` (unique bundled molecules, parsed once each; no pool below
``parallel_threshold``) and of the whole ``processor(smiles=...)`` (rows + collate). **Forward**: molecules/s of
``get_molecule_features`` in eval mode, no gradients, batches of ``--batch_size``. **Training input path**:
batches/s of the training ``DataLoader`` (decode + augmentation of synthetic sites + the molecules' inputs looked up
from the table of the unique molecules, featurised once) with each tower's table: the graph collation must stay
within 10 % of the fingerprint lookup. **Comparison** (``--compare``): ``cloome train`` (demo recipe) with each
molecule tower at the same steps, seeds and data; held-out retrieval top-1 per seed with 95 % Clopper-Pearson
intervals, its mean over seeds with a 95 % t interval, and each tower minus the MLP paired by seed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_report import finish  # noqa: E402

TOWERS = ("mlp", "gnn", "transformers")


def char_lm_folder(folder: str, layers: int, hidden: int) -> str:
    """A character-level SMILES tokenizer and a random RoBERTa saved like a downloaded model."""
    from cloome_hf.testing import save_char_level_smiles_lm

    return save_char_level_smiles_lm(folder, hidden_size=hidden, num_hidden_layers=layers,
                                     num_attention_heads=max(1, hidden // 64), intermediate_size=4 * hidden,
                                     max_position_embeddings=514)


def molecule_configs(lm_folder: str) -> dict[str, dict]:
    return {"mlp": dict(fingerprint_size=1024, hidden_size=1024, num_hidden_layers=4),
            "gnn": dict(encoder="gnn", gnn_layer="gine", gnn_readout="mean", hidden_size=512, num_hidden_layers=5),
            "transformers": dict(encoder="transformers", transformers_model=lm_folder, truncation=True)}


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def speed(args, lm_folder: str) -> dict[str, dict[str, float]]:
    from cloome_hf import CloomeConfig, CloomeModel, CloomeProcessor
    from cloome_hf.data.synthetic import bundled_molecules

    smiles = bundled_molecules()["smiles"].tolist()[:args.num_smiles]
    out = {}
    for tower, molecule in molecule_configs(lm_folder).items():
        config = CloomeConfig(vision_config=dict(layers=[1, 1, 1, 1], base_width=8, head_pool_size=2,
                                                 image_size=[64, 64]), molecule_config=molecule)
        processor = CloomeProcessor.for_model(config)
        featurizer = processor.featurizer
        featurizer.parallel_threshold = 10**9  # one core: the per-molecule cost, not the pool
        rows_s = _best(lambda: featurizer(smiles), args.repeats)
        processor_s = _best(lambda: processor(smiles=smiles, return_tensors="pt"), args.repeats)
        model = CloomeModel(config).eval()
        batches = [processor(smiles=smiles[i:i + args.batch_size], return_tensors="pt")
                   for i in range(0, len(smiles), args.batch_size)]

        def forward():
            with torch.no_grad():
                for batch in batches:
                    model.get_molecule_features(**batch)

        forward()  # warm-up
        out[tower] = {"featurise_per_s": len(smiles) / rows_s, "processor_per_s": len(smiles) / processor_s,
                      "forward_per_s": len(smiles) / _best(forward, args.repeats)}
        print(f"{tower}: " + ", ".join(f"{k} {v:,.0f}" for k, v in out[tower].items()), flush=True)
    return out


def input_path(args) -> dict[str, float]:
    """Batches/s of the training loader over synthetic sites with the fingerprint and the graph table."""
    from cloome_hf.data import FingerprintTable, build_dataloader
    from cloome_hf.data.synthetic import make_synthetic_dataset
    from cloome_hf.featurization_cloome import MoleculeFeaturizer
    from cloome_hf.featurization_graph import GraphFeaturizer

    ds = make_synthetic_dataset(num_molecules=args.input_molecules, sites_per_molecule=2, image_size=64, seed=0)
    out = {}
    for tower, featurizer in (("mlp", MoleculeFeaturizer()), ("gnn", GraphFeaturizer())):
        table = FingerprintTable.from_dataset(ds, featurizer)
        loader = build_dataloader(ds, table, batch_size=args.batch_size, train=True, seed=0)

        def one_epoch():
            for _ in loader:
                pass

        one_epoch()
        out[tower] = len(loader) / _best(one_epoch, args.repeats)
        start = time.perf_counter()
        for _ in range(20):
            table.model_inputs(table.keys[:args.batch_size])
        out[f"{tower}_lookup_ms"] = 1000 * (time.perf_counter() - start) / 20
        print(f"input path {tower}: {out[tower]:.1f} batches/s; molecule inputs of a batch "
              f"{out[f'{tower}_lookup_ms']:.2f} ms", flush=True)
    return out


def compare(args, tmp: str) -> list[dict]:
    """Equal-budget training per tower and seed on the embedded synthetic data (demo recipe, same steps, data and
    split for every run). The seed sets the training (initialisation, shuffling, augmentation) and, for the
    ``transformers`` tower, the random weights of its small RoBERTa (built here per seed, as the other towers are
    initialised per seed)."""
    import datasets

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from compare_losses import _cell, evaluate

    from cloome_hf.data import split_by_molecule
    from cloome_hf.data.synthetic import make_synthetic_dataset
    from cloome_hf.train.loop import main

    work = args.workdir or tempfile.mkdtemp(prefix="bench_molecule_towers_")
    ds = make_synthetic_dataset(num_molecules=args.compare_molecules, sites_per_molecule=2, image_size=64, seed=0)
    split = split_by_molecule(ds, {"train": 0.8, "validation": 0.2}, seed=0)
    path = os.path.join(work, "data")
    datasets.DatasetDict(split).save_to_disk(path)
    data = {"validation": split["validation"].select_columns(["sample_key", "inchikey"])}
    results = []
    for seed in args.seeds:
        torch.manual_seed(seed)
        lm_folder = char_lm_folder(os.path.join(tmp, f"small_lm_{seed}"), args.compare_lm_layers, 64)
        tower_args = {"mlp": [], "gnn": ["--molecule_encoder", "gnn", "--molecule_hidden_size", "256"],
                      "transformers": ["--molecule_encoder", "transformers", "--molecule_model", lm_folder,
                                       "--truncation", "true"]}
        for tower in args.towers:
            steps, start = str(args.max_steps), time.perf_counter()
            result = main(["--output_dir", os.path.join(work, f"{tower}-{seed}"), "--overwrite_output_dir",
                           "--dataset", path, "--max_steps", steps, "--eval_steps", steps, "--save_steps", steps,
                           "--seed", str(seed), "--mixed_precision", "no", *tower_args[tower]])
            metrics = evaluate(result, data)
            results.append({"tower": tower, "seed": seed, "max_steps": args.max_steps,
                            "seconds": time.perf_counter() - start, "metrics": metrics})
            print(f"{tower} seed {seed}: image->molecule top-1 {_cell(metrics['image_to_molecule_top1'])}, "
                  f"molecule->image top-1 {_cell(metrics['molecule_to_image_top1'])} (random "
                  f"{100 * metrics['random']['image_to_molecule_top1']:.1f} / "
                  f"{100 * metrics['random']['molecule_to_image_top1']:.1f}; {metrics['n_sites']} sites, "
                  f"{metrics['n_molecules']} molecules)", flush=True)
    return results


DIRECTIONS = ("image_to_molecule", "molecule_to_image")


def _mean_with_t_interval(values: list[float], low: float = 0.0, high: float = 1.0) -> dict:
    from scipy import stats

    mean = sum(values) / len(values)
    half = float(stats.t.ppf(0.975, len(values) - 1) * stats.sem(values)) if len(values) > 1 else float("nan")
    return {"per_seed": values, "mean": mean, "ci_low": max(low, mean - half), "ci_high": min(high, mean + half)}


def seed_summary(results: list[dict]) -> dict[str, dict]:
    """Per tower and direction: the top-1 of each seed, their mean, and a 95 % t interval of the mean over seeds,
    clipped to [0, 1] (the spread from training seeds only: every seed is scored on the same held-out sites); and,
    seed by seed, the tower's top-1 minus the fingerprint MLP's (``minus_mlp``, paired by seed)."""
    by_tower = {}
    for r in results:
        by_tower.setdefault(r["tower"], {})[r["seed"]] = r["metrics"]
    summary = {}
    for tower, metrics in by_tower.items():
        summary[tower] = {"seeds": list(metrics)}
        for direction in DIRECTIONS:
            summary[tower][direction] = _mean_with_t_interval([m[f"{direction}_top1"]["value"] for m in
                                                               metrics.values()])
            paired = [m[f"{direction}_top1"]["value"] - by_tower["mlp"][seed][f"{direction}_top1"]["value"]
                      for seed, m in metrics.items() if seed in by_tower.get("mlp", {})]
            if tower != "mlp" and paired:
                summary[tower][direction]["minus_mlp"] = _mean_with_t_interval(paired, low=-1.0)
    return summary


def compare_markdown(results: list[dict], summary: dict) -> str:
    """The README table: mean top-1 over seeds [95 % t interval], then each seed's top-1 [Clopper-Pearson]."""
    def mean_cell(s):
        if len(s["per_seed"]) < 2:
            return f"{100 * s['mean']:.1f}"
        return f"{100 * s['mean']:.1f} [{100 * s['ci_low']:.1f}, {100 * s['ci_high']:.1f}]"

    def seed_cells(tower, direction):
        return "; ".join(f"{100 * p['value']:.1f} [{100 * p['ci_low']:.1f}, {100 * p['ci_high']:.1f}]" for p in
                         (r["metrics"][f"{direction}_top1"] for r in results if r["tower"] == tower))

    head = ("| molecule tower | image → molecule top-1, mean [t CI] | per seed [CP CI] "
            "| molecule → image top-1, mean [t CI] | per seed [CP CI] |")
    lines = [head, "|---|---|---|---|---|"]
    for tower, s in summary.items():
        lines.append(f"| `{tower}` | " + " | ".join(f"{mean_cell(s[d])} | {seed_cells(tower, d)}"
                                                     for d in DIRECTIONS) + " |")
    random = results[0]["metrics"]["random"]
    lines.append(f"| random | {100 * random['image_to_molecule_top1']:.1f} | | "
                 f"{100 * random['molecule_to_image_top1']:.1f} | |")
    for tower, s in summary.items():
        if "minus_mlp" in s[DIRECTIONS[0]]:
            lines.append(f"\n`{tower}` minus `mlp`, paired by seed (points): " + "; ".join(
                f"{d.replace('_', ' ')} {mean_cell(s[d]['minus_mlp'])} (per seed "
                f"{', '.join(f'{100 * v:+.1f}' for v in s[d]['minus_mlp']['per_seed'])})" for d in DIRECTIONS))
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_smiles", type=int, default=1297, help="bundled molecules to featurise / embed")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs")
    parser.add_argument("--lm_layers", type=int, default=6)
    parser.add_argument("--lm_hidden", type=int, default=768)
    parser.add_argument("--input_molecules", type=int, default=200, help="synthetic molecules of the input path")
    parser.add_argument("--skip_speed", action="store_true")
    parser.add_argument("--compare", action="store_true", help="also the equal-budget training comparison")
    parser.add_argument("--towers", nargs="+", default=list(TOWERS), choices=TOWERS)
    parser.add_argument("--compare_molecules", type=int, default=160)
    parser.add_argument("--max_steps", type=int, default=30)
    parser.add_argument("--compare_lm_layers", type=int, default=2, help="the compared LM's layers (hidden 64)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="training seeds of the comparison")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--output", default=None, help="write the measured figures here as JSON")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steady on a shared machine)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    report = {"argv": sys.argv[1:] if argv is None else list(argv)}
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_speed:
            lm = char_lm_folder(os.path.join(tmp, "lm"), args.lm_layers, args.lm_hidden)
            tower = speed(args, lm)
            path = input_path(args)
            report.update(speed=tower, input_path=path)
            print("\n| tower | featurise SMILES/s | processor SMILES/s | forward molecules/s |\n|---|---|---|---|")
            for name, row in tower.items():
                ratios = [f"{row[k]:,.0f} ({row[k] / tower['mlp'][k]:.2f}x)" for k in
                          ("featurise_per_s", "processor_per_s", "forward_per_s")]
                print(f"| {name} | " + " | ".join(ratios) + " |")
            print(f"\ntraining input path, gnn / fingerprint batches/s: {path['gnn'] / path['mlp']:.3f} "
                  f"(goal >= 0.90); molecule inputs of a batch: {path['gnn_lookup_ms']:.2f} ms vs "
                  f"{path['mlp_lookup_ms']:.2f} ms")
        if args.compare:
            results = compare(args, tmp)
            summary = seed_summary(results)
            report.update(compare=results, compare_summary=summary)
            print(f"\n{args.max_steps} steps per run, seeds {args.seeds}\n" + compare_markdown(results, summary))
    finish(report, args.output, echo=False)


if __name__ == "__main__":
    main()
