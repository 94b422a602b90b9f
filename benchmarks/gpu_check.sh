#!/usr/bin/env bash
# GPU throughput check of the published CLOOME architecture, one GPU, under 5 minutes, offline.
#
# Measures, in bf16 autocast with channels_last:
#   * training images/s (forward + CLOOB loss + backward + AdamW step) of CloomeModel(CloomeConfig()) at
#     520 x 520 (random crop of a 520 x 696 site) and 320 x 320 (random resized crop of the whole site), fed by
#       - in-memory batches already normalised on the GPU (the GPU's own ceiling),
#       - in-memory uint8 sites on the GPU, augmented there by CloomeTrainTransform (the device-augment cost),
#       - the real input pipeline, cloome train's training_loader (Parquet shards -> build_dataloader with N
#         persistent workers, pinned batches, non-blocking copies), once augmenting in the workers and once
#         (--augment_on_device) yielding uint8 sites + seeds augmented on the GPU -- so one sees whether the
#         loader starves it;
#   * inference images/s of get_image_features on whole 520 x 696 sites.
# Sites are generated on the fly from the bundled real site (rolled, flipped, speckled).
#
# Usage: bash benchmarks/gpu_check.sh [--workers 8] [--steps 20] [--batch_520 64] [--batch_320 128] [--smoke]
#   --smoke: a tiny model, tiny crops, two steps, on the CPU if there is no GPU (checks that the script runs).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# torch backs large CPU tensors with transparent huge pages (read when torch is imported; see cloome_hf.data.loader)
export THP_MEM_ALLOC_ENABLE="${THP_MEM_ALLOC_ENABLE:-1}"

python - "$@" <<'PY'
import argparse, json, os, sys, tempfile, time

import numpy as np
import torch

sys.path.insert(0, "benchmarks")
from cloome_hf import CloomeConfig, CloomeModel
from cloome_hf.image_processing_cloome import CloomeImageProcessor
from cloome_hf.train.data import training_transform
from cloome_hf.train.params import DataArguments

p = argparse.ArgumentParser()
p.add_argument("--workers", type=int, default=8)
p.add_argument("--steps", type=int, default=20, help="timed steps per measurement (after --warmup)")
p.add_argument("--warmup", type=int, default=5)
p.add_argument("--batch_520", type=int, default=64)
p.add_argument("--batch_320", type=int, default=128)
p.add_argument("--batch_inference", type=int, default=128)
p.add_argument("--num_sites", type=int, default=512, help="sites written for the pipeline measurement")
p.add_argument("--budget_s", type=float, default=270, help="skip what is left after this many seconds")
p.add_argument("--smoke", action="store_true")
args = p.parse_args(sys.argv[1:])
START = time.perf_counter()
cuda = torch.cuda.is_available()
if not cuda and not args.smoke:
    sys.exit("no CUDA device: run with --smoke for a CPU check of the script")
device = torch.device("cuda" if cuda else "cpu")
SITE = (520, 696)
if args.smoke:
    args.steps, args.warmup, args.batch_520, args.batch_320, args.batch_inference = 2, 1, 4, 4, 2
    args.num_sites, args.workers = 16, min(args.workers, 2)
    config = CloomeConfig(vision_config=dict(backbone="cloome_resnet50", num_channels=5, layers=[1, 1, 1, 1],
                                             base_width=8, head_pool_size=2, image_size=[64, 64]),
                          molecule_config=dict(fingerprint_size=1024, hidden_size=32, num_hidden_layers=2),
                          projection_dim=16)
    SETTINGS = {"520x520": dict(image_size=[64, 64], random_resized_crop_scale=[]),
                "320x320": dict(image_size=[64, 64], random_resized_crop_scale=[0.9, 1.0])}
else:
    config = CloomeConfig()
    # as cloome train's arguments: a random 520 x 520 crop; a random resized crop of the whole site to 320 x 320
    SETTINGS = {"520x520": dict(image_size=[520, 520], random_resized_crop_scale=[]),
                "320x320": dict(image_size=[320, 320], random_resized_crop_scale=[0.9, 1.0])}
BATCH = {"520x520": args.batch_520, "320x320": args.batch_320}
FP = config.molecule_config.fingerprint_size
if cuda:
    torch.backends.cudnn.benchmark = True
model = CloomeModel(config).to(device, memory_format=torch.channels_last)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=cuda)
results = {"device": torch.cuda.get_device_name() if cuda else "cpu", "smoke": args.smoke, "train_images_per_s": {},
           "inference_images_per_s": None, "skipped": []}


def over_budget(what):
    if time.perf_counter() - START > args.budget_s:
        results["skipped"].append(what)
        return True
    return False


def sync():
    if cuda:
        torch.cuda.synchronize()


def train_step(pixel_values, fingerprints):
    with torch.autocast(device.type, dtype=torch.bfloat16):
        loss = model(pixel_values=pixel_values.contiguous(memory_format=torch.channels_last),
                     fingerprints=fingerprints, return_loss=True).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    model.clamp_logit_scale()


def timed(batches, make_inputs, batch_size):
    """images/s of train steps over ``batches`` (an iterator); the first --warmup steps are not timed."""
    model.train()
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            sync()
            start = time.perf_counter()
        train_step(*make_inputs(next(batches), step))
    sync()
    return args.steps * batch_size / (time.perf_counter() - start)


def repeat(item):
    while True:
        yield item


def site_batch(n, generator):
    return torch.randint(0, 256, (n, 5, *SITE), dtype=torch.uint8, generator=generator)


# ------------------------------------------------------------------ in-memory feeds
g = torch.Generator().manual_seed(0)
for name, kwargs in SETTINGS.items():
    if over_budget(f"in-memory {name}"):
        break
    transform = training_transform(DataArguments(**kwargs, augment=True), CloomeImageProcessor()).to(device)
    b = BATCH[name]
    fingerprints = (torch.rand(b, FP, generator=g) < 0.05).float().to(device)
    ready = transform(site_batch(b, g), seeds=range(b)).to(device)  # normalised, already on the GPU
    results["train_images_per_s"][f"{name} in-memory normalised"] = timed(
        repeat(ready), lambda x, step: (x, fingerprints), b)
    sites = site_batch(b, g).to(device)
    results["train_images_per_s"][f"{name} in-memory uint8 + GPU augment"] = timed(
        repeat(sites), lambda x, step: (transform(x, seeds=range(step * b, (step + 1) * b), batched=True),
                                        fingerprints), b)
    del ready, sites

# ------------------------------------------------------------------ inference
if not over_budget("inference"):
    model.eval()
    sites = ((site_batch(args.batch_inference, g).float() - 40) / 40).to(device).contiguous(
        memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
        for step in range(args.warmup + args.steps):
            if step == args.warmup:
                sync()
                start = time.perf_counter()
            model.get_image_features(sites)
        sync()
    results["inference_images_per_s"] = args.steps * args.batch_inference / (time.perf_counter() - start)
    del sites


# ------------------------------------------------------------------ the real input pipeline
# cloome train's input path: training_loader (Parquet shards -> build_dataloader with persistent, prefetching
# workers, pinned batches), then, with --augment_on_device, the augmentation of loop.batch_pixel_values on the GPU.
def pipeline_batches(data, kwargs, batch_size, augment_on_device):
    """Endless batches from the training loader: augmented in the workers, or uint8 sites + seeds."""
    from cloome_hf.train.data import training_loader

    data_args = DataArguments(**kwargs, augment=True, dataloader_num_workers=args.workers,
                              augment_on_device=augment_on_device)
    loader = training_loader(data, data_args, CloomeImageProcessor(), batch_size, seed=0)
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def pipeline_inputs(device_transform):
    def make(batch, step):
        fingerprints = batch["fingerprints"].to(device, non_blocking=True)
        if device_transform is None:
            return batch["pixel_values"].to(device, non_blocking=True), fingerprints
        images = batch["images"].to(device, non_blocking=True)
        return device_transform(images, seeds=batch["seeds"], batched=True), fingerprints
    return make


if not over_budget("pipeline"):
    from bench_data import make_sites  # real-size sites from the bundled one, Bray .npz layout
    from cloome_hf.data import FingerprintTable, load_cell_painting, open_source, prepare_dataset
    from cloome_hf.featurization_cloome import MoleculeFeaturizer
    from cloome_hf.train.data import TrainingData

    with tempfile.TemporaryDirectory() as tmp:
        index = make_sites(tmp, args.num_sites)
        prepare_dataset(open_source("bray_npz", index=index, root=os.path.join(tmp, "npz")),
                        os.path.join(tmp, "parquet"), shard_size=128, num_proc=min(8, os.cpu_count()),
                        progress=False)
        ds = load_cell_painting(os.path.join(tmp, "parquet"), split="train", cache_dir=os.path.join(tmp, "cache"))
        data = TrainingData(ds, ds, FingerprintTable.from_dataset(ds, MoleculeFeaturizer(fingerprint_size=FP)))
        for name, kwargs in SETTINGS.items():
            for on_device, label in ((False, "CPU augment"), (True, "uint8 + GPU augment")):
                if over_budget(f"pipeline {name} {label}"):
                    continue
                device_transform = None
                if on_device:
                    device_transform = training_transform(DataArguments(**kwargs, augment=True),
                                                          CloomeImageProcessor()).to(device)
                batches = pipeline_batches(data, kwargs, BATCH[name], on_device)
                key = f"{name} pipeline {args.workers} workers, {label}"
                results["train_images_per_s"][key] = timed(batches, pipeline_inputs(device_transform), BATCH[name])
                batches.close()

results["elapsed_s"] = round(time.perf_counter() - START, 1)
if args.smoke:
    print("\nsmoke run: a tiny model on 64 x 64 crops (labels keep the real settings' names); the figures mean nothing")
print(f"\n{'training feed':<58} {'images/s':>9}")
for key, value in results["train_images_per_s"].items():
    print(f"{key:<58} {value:>9.1f}")
if results["inference_images_per_s"] is not None:
    print(f"{'inference get_image_features, whole 520x696 sites':<58} {results['inference_images_per_s']:>9.1f}")
for what in results["skipped"]:
    print(f"skipped (over --budget_s): {what}")
print(json.dumps(results, indent=1))
PY
