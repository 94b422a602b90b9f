"""Throughput of the published CLOOME architecture: inference images/s and one training step.

    python benchmarks/bench_model.py [--device cuda] [--repeats 3] [--json out.json]

Inference: ``get_image_features`` on a batch of 8 full Bray 2017 sites (5 x 520 x 696), fp32 and bf16 autocast,
with and without ``channels_last``. Training: forward + InfoNCE loss + backward + AdamW step for a batch of 16
at 5 x 256 x 256. Ratios are against the fp32 contiguous row of the same task, measured in the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time

import torch

from cloome_hf import CloomeConfig, CloomeModel


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_call(fn, device: torch.device, repeats: int) -> float:
    fn()  # warm-up: allocator, kernels, autocast caches
    synchronize(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def autocast(device: torch.device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def bench_inference(model, device, repeats, batch_size=8, height=520, width=696):
    rows = []
    images = torch.randn(batch_size, 5, height, width, device=device)
    for channels_last in [False, True]:
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        model = model.to(memory_format=memory_format)
        x = images.contiguous(memory_format=memory_format)
        for bf16 in [False, True]:
            def step():
                with torch.inference_mode(), autocast(device, bf16):
                    model.get_image_features(x)

            seconds = time_call(step, device, repeats)
            rows.append({"task": "inference", "precision": "bf16" if bf16 else "fp32",
                         "channels_last": channels_last, "batch": batch_size, "images_per_s": batch_size / seconds})
    return rows


def bench_training_step(config, device, repeats, batch_size=16, size=256):
    model = CloomeModel(config).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    images = torch.randn(batch_size, 5, size, size, device=device)
    fingerprints = (torch.rand(batch_size, config.molecule_config.fingerprint_size, device=device) > 0.9).float()
    rows = []
    for bf16 in [False, True]:
        def step():
            with autocast(device, bf16):
                loss = model(pixel_values=images, fingerprints=fingerprints, return_loss=True).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            model.clamp_logit_scale()

        seconds = time_call(step, device, repeats)
        rows.append({"task": "train_step", "precision": "bf16" if bf16 else "fp32", "channels_last": False,
                     "batch": batch_size, "images_per_s": batch_size / seconds})
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions per row (best is kept)")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    config = CloomeConfig()  # the published ResNet-50 / 4-layer MLP
    model = CloomeModel(config).to(device).eval()
    rows = bench_inference(model, device, args.repeats) + bench_training_step(config, device, args.repeats)
    baselines = {r["task"]: r["images_per_s"] for r in reversed(rows) if r["precision"] == "fp32" and not r["channels_last"]}
    for row in rows:
        row["ratio_vs_fp32"] = row["images_per_s"] / baselines[row["task"]]
    print(f"device={device} torch={torch.__version__} threads={torch.get_num_threads()}")
    print(f"{'task':<11} {'precision':<9} {'channels_last':<13} {'batch':>5} {'images/s':>10} {'ratio':>7}")
    for row in rows:
        print(f"{row['task']:<11} {row['precision']:<9} {str(row['channels_last']):<13} {row['batch']:>5} "
              f"{row['images_per_s']:>10.2f} {row['ratio_vs_fp32']:>7.2f}")
    result = {"device": str(device), "torch": torch.__version__, "rows": rows}
    print(json.dumps(result))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)
    return result


if __name__ == "__main__":
    main()
