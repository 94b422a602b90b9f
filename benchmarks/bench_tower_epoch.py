"""One training epoch on cached tower features against one epoch end to end, with the same frozen tower (CPU).

Run: ``python benchmarks/bench_tower_epoch.py [--sites 2000] [--threads 1]``. A small random DINOv2 (saved with
``save_pretrained``, loaded through the real tower code) is the frozen tower of the ``cellclip-style`` recipe
(``per_channel``: each of the 5 channels through the tower, a trained pooling across them). Both runs are ``cloome
train`` runs set up by :func:`cloome_hf.train.setup.setup_run` on the same synthetic sites, batches and seed; only
``--image_features`` differs. Timed: the loop over one epoch's batches with :func:`cloome_hf.train.loop.train_step`
(loader, step, update; no validation or checkpoint), the best of ``--repeats`` epochs, and the one-off ``cloome
embed --features backbone`` that writes the cache. Prints both epochs, their ratio and the number of epochs after
which the cache has paid for itself.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

TOWER = {"hidden_size": 96, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 192,
         "image_size": 64, "patch_size": 8}


def make_tower(folder: str) -> str:
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    Dinov2Model(Dinov2Config(**TOWER)).save_pretrained(folder)
    BitImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}).save_pretrained(folder)
    return folder


def train_args(dataset: str, tower: str, output: str, epochs_steps: int, extra=()) -> list[str]:
    return ["--recipe", "cellclip-style", "--dataset", dataset, "--backbone", tower, "--output_dir", output,
            "--image_size", "64", "--molecule_hidden_size", "256", "--molecule_num_layers", "2", "--projection_dim",
            "64", "--per_device_train_batch_size", "64", "--max_steps", str(epochs_steps), "--save_steps", "100000",
            "--eval_steps", "100000", "--logging_steps", "100000", "--warmup_steps", "0", "--mixed_precision", "no",
            "--validation_fraction", "0.1", "--overwrite_output_dir", *extra]


def time_epochs(argv: list[str], repeats: int) -> tuple[float, int]:
    """The best time of ``repeats`` full epochs of ``train_step``, and the steps per epoch."""
    from tqdm.auto import tqdm

    from cloome_hf.train.loop import train_step
    from cloome_hf.train.params import parse_args
    from cloome_hf.train.setup import setup_run

    run = setup_run(*parse_args(argv))
    run.progress = tqdm(disable=True)
    run.model.train()
    best = float("inf")
    try:
        for epoch in range(repeats):
            run.state.epoch, run.state.batch_in_epoch = epoch, 0
            start = time.perf_counter()
            for batch in run.epoch_batches():
                train_step(run, batch)
            best = min(best, time.perf_counter() - start)
    finally:
        if run.lock is not None:
            run.lock.release()
    return best, run.steps_per_epoch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from cloome_hf.cli import embed
    from cloome_hf.data.synthetic import make_synthetic_dataset
    from cloome_hf.train.loop import main as train

    work = args.workdir or tempfile.mkdtemp(prefix="cloome-tower-epoch-")
    dataset = os.path.join(work, "sites")
    make_synthetic_dataset(num_molecules=args.sites // 2, sites_per_molecule=2, image_size=96,
                           seed=0).save_to_disk(dataset)
    tower = make_tower(os.path.join(work, "tower"))
    train(train_args(dataset, tower, os.path.join(work, "model"), 1))  # a model folder for `cloome embed`
    store = os.path.join(work, "features")
    start = time.perf_counter()
    embed.main(["--model", os.path.join(work, "model"), "--dataset", dataset, "--output_dir", store, "--features",
                "backbone", "--batch_size", "64"])
    cache_s = time.perf_counter() - start
    full_s, steps = time_epochs(train_args(dataset, tower, os.path.join(work, "e2e"), 10**6), args.repeats)
    cached_s, _ = time_epochs(train_args(dataset, tower, os.path.join(work, "cached"), 10**6,
                                         ["--image_features", store]), args.repeats)
    print(f"\n{args.sites} synthetic sites (96 px, 64 px centre crop), DINOv2 {TOWER['num_hidden_layers']} layers x "
          f"{TOWER['hidden_size']} frozen, per_channel; {steps} steps of 64; {args.threads} thread(s)\n")
    print("| | seconds | ratio |\n|---|---|---|")
    print(f"| one epoch end to end (frozen tower run on every batch) | {full_s:.2f} | 1 |")
    print(f"| one epoch on cached features (`--image_features`) | {cached_s:.2f} | {full_s / cached_s:.1f}x faster |")
    print(f"| one-off cache (`cloome embed --features backbone`, all sites) | {cache_s:.2f} | "
          f"pays off after {cache_s / max(full_s - cached_s, 1e-9):.1f} epochs |")


if __name__ == "__main__":
    main()
