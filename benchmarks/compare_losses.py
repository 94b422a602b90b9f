#!/usr/bin/env python
"""Equal-budget comparison of the contrastive objectives on synthetic Cell Painting data.

    python benchmarks/compare_losses.py --quick               # smoke run: small data, 30 steps (~4 min, 2 cores)
    python benchmarks/compare_losses.py                       # the default size: 150 steps (~18 min, 2 shared cores)
    python benchmarks/compare_losses.py --seeds 0 1 2 --output results.json

For every loss of :mod:`cloome_hf.losses` (``infonce``, ``cloob``, ``siglip``, ``s2l``, ``cwcl``) the demo model is
trained with ``cloome train`` (:func:`cloome_hf.train.loop.main`) on two synthetic datasets, rendered once and saved
with an explicit molecule split (every loss sees the same sites, split, steps and seeds):

* **embedded** - the embedded generator (:func:`~cloome_hf.data.synthetic.make_synthetic_dataset`): every
  molecule's phenotype is a smooth function of its structure.
* **plates** - screening plates (:func:`~cloome_hf.data.synthetic_plates.make_synthetic_plates`,
  ``phenotype="structure"``) with DMSO controls, plate and batch effects and *inactive* compounds (``z = 0``, they
  look like DMSO); active compounds show their structure's phenotype. Controls are left out, as ``cloome train``
  does by default.

Held-out molecules (``--validation_fraction`` of them, by molecule) are the test set. Reported, for the
final model of each run:

* **retrieval top-1/5/10, both directions**, over all held-out sites (:func:`cloome_hf.evaluation.retrieval_metrics`
  with ``groups`` = molecule: a site's own molecule's other sites are not competitors; ties are pessimistic), with
  95 % Clopper-Pearson intervals; "random" is the exact chance level
  (:func:`cloome_hf.evaluation.random_retrieval_baseline`).
* **top-1 % retrieval of active molecules** (plates only; MolPhenix's headline metric, Fradkin et al. 2024), defined
  here as: the query of a held-out molecule is the L2-normalised mean of the image embeddings of its held-out sites
  (its replicate wells); the candidates are the ``M`` held-out molecules, active and inactive; a query is a hit when
  its own molecule ranks within the top ``k = ceil(M / 100)`` candidates by cosine similarity (pessimistic ties,
  :func:`~cloome_hf.evaluation.retrieval_ranks`); the metric is the fraction of hits over the *active* held-out
  molecules (the generator's ground truth; MolPhenix decides activity with a statistical test against controls),
  with its Clopper-Pearson interval; chance is ``k / M``.

What is and is not tuned: every run uses the ``demo`` recipe as it stands (architecture, AdamW learning rate,
weight decay, warm-up, batch size, augmentation) with ``--max_steps`` and ``--seed`` shared by all losses. Per loss,
only the loss's own published settings differ: the softmax losses (infonce, cloob, cwcl) start at tau^-1 = 14.3
(CLOOME retrieval), clamped to [1, 100]; the sigmoid losses (siglip, s2l) at SigLIP's t = 10, b = -10, unclamped;
cloob uses the published Hopfield beta = 22; cwcl the Tanimoto threshold 0.7 (Morgan bits of the demo featuriser);
s2l CellCLIP's constants (c = 0.3, threshold 0.75, gamma 1.7, delta 0.75) on the trained model's own detached image
embeddings (no pretrained phenomics model exists for synthetic data). Nothing was tuned per loss.

The intervals cover the finite test set of one training run, not the spread between training runs (seeds): use
``--seeds`` to see that. Results go to stdout (a Markdown table) and ``--output`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

LOSSES = ("infonce", "cloob", "siglip", "s2l", "cwcl")
SIZES = {  # sites to render and steps to train; the same for every loss
    "quick": dict(embedded_molecules=160, plates_compounds=120, replicates=2, max_steps=30),
    "default": dict(embedded_molecules=600, plates_compounds=400, replicates=2, max_steps=150),
}


def build_datasets(folder: str, size: dict, validation_fraction: float, split_seed: int) -> dict:
    """Render both datasets once, split by molecule into train / validation, and save them for ``cloome train``."""
    import datasets

    from cloome_hf.data import contrastive_training_sites, split_by_molecule
    from cloome_hf.data.synthetic import make_synthetic_dataset
    from cloome_hf.data.synthetic_plates import make_synthetic_plates, plan_synthetic_plates

    plates = dict(num_compounds=size["plates_compounds"], inactive_fraction=0.5, replicates=size["replicates"],
                  controls_per_plate=16, num_plate_maps=2, image_size=64, phenotype="structure", seed=0)
    rendered = {
        "embedded": make_synthetic_dataset(num_molecules=size["embedded_molecules"], sites_per_molecule=2,
                                           image_size=64, seed=0),
        "plates": contrastive_training_sites(make_synthetic_plates(**plates)).dataset,  # controls left out
    }
    annotations = plan_synthetic_plates(**plates).annotations
    out = {}
    for name, ds in rendered.items():
        split = split_by_molecule(ds, {"train": 1 - validation_fraction, "validation": validation_fraction},
                                  seed=split_seed)
        path = os.path.join(folder, name)
        datasets.DatasetDict(split).save_to_disk(path)
        out[name] = {"path": path, "validation": split["validation"].select_columns(["sample_key", "inchikey"]),
                     "analogue_pairs": analogue_pairs(sorted(set(split["train"]["smiles"])))}
    out["plates"]["active"] = dict(zip(annotations.inchikey, annotations.active))
    return out


def analogue_pairs(smiles: list[str]) -> dict:
    """How often CWCL has partial positives: pairs of training molecules whose Tanimoto similarity (the demo
    recipe's fingerprints, Morgan radius 3, 1024 bits) reaches the default ``cwcl_threshold``."""
    import torch

    from cloome_hf.featurization_cloome import MoleculeFeaturizer
    from cloome_hf.losses import CWCL_THRESHOLD, tanimoto_similarity

    fingerprints = torch.from_numpy(MoleculeFeaturizer(kind="morgan", fingerprint_size=1024)(smiles))
    similarity = tanimoto_similarity(fingerprints, fingerprints)
    upper = torch.triu(torch.ones_like(similarity, dtype=torch.bool), diagonal=1)
    return {"pairs": int(upper.sum()), "analogues": int((similarity[upper] >= CWCL_THRESHOLD).sum()),
            "threshold": CWCL_THRESHOLD}


def train(loss: str, dataset: str, output_dir: str, max_steps: int, seed: int) -> dict:
    """One ``cloome train`` run (demo recipe); returns its final validation embeddings."""
    from cloome_hf.train.loop import main

    return main(["--output_dir", output_dir, "--overwrite_output_dir", "--dataset", dataset, "--loss", loss,
                 "--max_steps", str(max_steps), "--eval_steps", str(max_steps), "--save_steps", str(max_steps),
                 "--seed", str(seed), "--mixed_precision", "no", "--logging_steps", str(max(1, max_steps // 5))])


def active_top1pct(images: np.ndarray, molecules: np.ndarray, inchikeys: np.ndarray, active: dict) -> dict:
    """Top-1 % retrieval of active molecules (module docstring): molecule-level queries, active ones scored."""
    from cloome_hf.evaluation import metrics_from_ranks, retrieval_ranks

    keys, index = np.unique(inchikeys, return_inverse=True)
    images = images / np.linalg.norm(images, axis=1, keepdims=True)
    queries = np.stack([images[index == i].mean(0) for i in range(len(keys))])  # normalised by retrieval_ranks
    candidates = np.stack([molecules[np.flatnonzero(index == i)[0]] for i in range(len(keys))])
    ranks = retrieval_ranks(queries, candidates)  # row i: molecule i's rank for query i, among all M molecules
    is_active = np.array([bool(active[k]) for k in keys])
    result = metrics_from_ranks(ranks[is_active], len(keys), ks=(1,))
    return {"top1pct": result["top1pct_recall"], "cutoff": result["top1pct_cutoff"], "num_candidates": len(keys),
            "num_active": int(is_active.sum()), "random": result["random"]["top1pct_recall"]}


def evaluate(result: dict, data: dict) -> dict:
    from cloome_hf.evaluation import random_retrieval_baseline, retrieval_metrics

    images, molecules = result["validation_image_embeds"], result["validation_molecule_embeds"]
    inchikeys = np.asarray(data["validation"]["inchikey"])
    if len(images) != len(inchikeys):
        raise RuntimeError(f"cloome train validated {len(images)} sites, the saved split has {len(inchikeys)}")
    metrics = retrieval_metrics(images, molecules, groups=inchikeys, one_in_n=None)
    out = {"n_sites": len(inchikeys), "n_molecules": int(len(set(inchikeys))),
           "random": random_retrieval_baseline(inchikeys)}
    for direction in ("image_to_molecule", "molecule_to_image"):
        for k in (1, 5, 10):
            out[f"{direction}_top{k}"] = metrics[direction][f"top{k}"]
    if "active" in data:
        out["active"] = active_top1pct(images, molecules, inchikeys, data["active"])
    return out


def _cell(p: dict) -> str:
    return f"{100 * p['value']:.1f} [{100 * p['ci_low']:.1f}, {100 * p['ci_high']:.1f}]"


def markdown(results: list[dict]) -> str:
    """One table per dataset: rows = (loss, seed), columns = retrieval top-k (%, 95 % CI) and, for plates, top-1 %."""
    lines = []
    for dataset in dict.fromkeys(r["dataset"] for r in results):
        rows = [r for r in results if r["dataset"] == dataset]
        first = rows[0]["metrics"]
        head = ["loss", "seed"] + [f"{d} top{k}" for d in ("img->mol", "mol->img") for k in (1, 5, 10)]
        if "active" in first:
            head.append(f"active top-1% (k={first['active']['cutoff']} of {first['active']['num_candidates']}, "
                        f"n={first['active']['num_active']})")
        pairs = rows[0]["analogue_pairs"]
        lines += [f"\n**{dataset}**: {first['n_sites']} held-out sites of {first['n_molecules']} molecules "
                  f"(95 % Clopper-Pearson intervals, %); training molecule pairs with Tanimoto >= "
                  f"{pairs['threshold']} (cwcl's partial positives): {pairs['analogues']} of {pairs['pairs']}\n",
                  "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        random = first["random"]
        chance = ["random", ""] + [f"{100 * random[f'{d}_top{k}']:.1f}" for d in ("image_to_molecule",
                                                                                    "molecule_to_image")
                                   for k in (1, 5, 10)]
        if "active" in first:
            chance.append(f"{100 * first['active']['random']:.1f}")
        for r in rows:
            m = r["metrics"]
            cells = [r["loss"], str(r["seed"])] + [_cell(m[f"{d}_top{k}"]) for d in ("image_to_molecule",
                                                                                     "molecule_to_image")
                                                   for k in (1, 5, 10)]
            if "active" in m:
                cells.append(_cell(m["active"]["top1pct"]))
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("| " + " | ".join(chance) + " |")
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small data and few steps (a smoke run)")
    parser.add_argument("--losses", nargs="+", default=list(LOSSES), choices=LOSSES)
    parser.add_argument("--datasets", nargs="+", default=["embedded", "plates"], choices=["embedded", "plates"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="training seeds (each loss gets each)")
    parser.add_argument("--max_steps", type=int, default=None, help="override the size's training steps")
    parser.add_argument("--validation_fraction", type=float, default=0.2)
    parser.add_argument("--workdir", default=None, help="where datasets and runs go (default: a temporary folder)")
    parser.add_argument("--output", default=None, help="write the results as JSON here")
    return parser.parse_args(argv)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    size = dict(SIZES["quick" if args.quick else "default"])
    if args.max_steps is not None:
        size["max_steps"] = args.max_steps
    with tempfile.TemporaryDirectory(prefix="compare-losses-") as scratch:
        workdir = args.workdir or scratch
        os.makedirs(workdir, exist_ok=True)
        start = time.perf_counter()
        data = build_datasets(os.path.join(workdir, "data"), size, args.validation_fraction, split_seed=0)
        print(f"rendered the datasets in {time.perf_counter() - start:.0f} s", file=sys.stderr)
        results = []
        for dataset in args.datasets:
            for loss in args.losses:
                for seed in args.seeds:
                    start = time.perf_counter()
                    run = train(loss, data[dataset]["path"], os.path.join(workdir, "runs", dataset, f"{loss}-{seed}"),
                                size["max_steps"], seed)
                    results.append({"dataset": dataset, "loss": loss, "seed": seed, "max_steps": size["max_steps"],
                                    "seconds": time.perf_counter() - start,
                                    "analogue_pairs": data[dataset]["analogue_pairs"],
                                    "metrics": evaluate(run, data[dataset])})
    table = markdown(results)
    print(f"\n{size['max_steps']} steps per run (demo recipe), seeds {args.seeds}\n{table}")
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            json.dump({"size": size, "seeds": args.seeds, "results": results}, f, indent=1)
    return results


if __name__ == "__main__":
    main()
