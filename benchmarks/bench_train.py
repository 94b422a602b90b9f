#!/usr/bin/env python
"""Training throughput on CPU: images/s of CLOOME steps at batch 32, 5 x 256 x 256, fp32 vs bf16, 1 vs 2 processes.

    python benchmarks/bench_train.py                    # small ResNet (1 block per stage, width 16)
    python benchmarks/bench_train.py --published        # the published ResNet-50 (slow on CPU)

Each configuration runs the same step as ``scripts/train.py`` (forward, global-batch InfoNCE, backward, AdamW,
logit-scale clamp) through ``accelerate``, on random uint8-range inputs (data loading excluded), with a
global batch of 32: one process, or two processes (``accelerate launch --multi_gpu --num_processes 2``, gloo)
of 16 each. Reported: images/s after warm-up, and the scaling efficiency of two processes against one process with the
same threads per process (half the cores each), ``ips(2 procs x c/2 threads) / (2 x ips(1 proc x c/2 threads))``;
1 process on all c cores is shown for comparison.
Results go to stdout and ``--output`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

BATCH, CHANNELS, SIZE = 32, 5, 256


def _model_config(published: bool):
    from cloome_hf import CloomeConfig

    vision = {"layers": [3, 4, 6, 3], "base_width": 64} if published else {"layers": [1, 1, 1, 1], "base_width": 16}
    return CloomeConfig(
        vision_config=dict(vision, image_size=[SIZE, SIZE], head_pool_size=7),
        molecule_config={"fingerprint_size": 1024, "hidden_size": 1024, "num_hidden_layers": 4},
        projection_dim=512,
    )


def worker(args) -> None:
    """One measurement (run alone or as each process of an accelerate launch); rank 0 writes the JSON."""
    import torch
    from accelerate import Accelerator

    from cloome_hf import CloomeModel
    from cloome_hf.train.optim import build_optimizer

    torch.set_num_threads(args.threads)
    cpu = int(os.environ.get("WORLD_SIZE", "1")) > 1
    accelerator = Accelerator(cpu=cpu, mixed_precision=args.precision)
    per_process = BATCH // accelerator.num_processes
    torch.manual_seed(0)
    model = CloomeModel(_model_config(args.published))
    optimizer = build_optimizer(model, 1e-4, 0.1)
    model, optimizer = accelerator.prepare(model, optimizer)
    generator = torch.Generator().manual_seed(accelerator.process_index)
    pixels = torch.randn(per_process, CHANNELS, SIZE, SIZE, generator=generator)
    fingerprints = (torch.rand(per_process, 1024, generator=generator) < 0.05).float()
    times = []
    for _ in range(args.warmup + args.steps):
        start = time.perf_counter()
        with accelerator.autocast():
            loss = model(pixel_values=pixels, fingerprints=fingerprints, return_loss=True).loss
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        accelerator.unwrap_model(model).clamp_logit_scale()
        accelerator.wait_for_everyone()
        times.append(time.perf_counter() - start)
    measured = times[args.warmup :]
    if accelerator.is_main_process:
        with open(args.result, "w") as f:
            json.dump({"images_per_second": BATCH * len(measured) / sum(measured),
                       "seconds_per_step": sum(measured) / len(measured)}, f)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(processes: int, threads: int, precision: str, args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        result = os.path.join(tmp, "result.json")
        worker_args = ["--worker", "--threads", str(threads), "--precision", precision, "--steps", str(args.steps),
                       "--warmup", str(args.warmup), "--result", result] + (["--published"] if args.published else [])
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), OMP_WAIT_POLICY="PASSIVE")  # as scripts/train.py
        if processes == 1:
            cmd = [sys.executable, __file__, *worker_args]
        else:
            cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                   str(processes), "--num_machines", "1", "--mixed_precision", precision, "--dynamo_backend", "no",
                   "--main_process_port", str(_free_port()), __file__, *worker_args]
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        with open(result) as f:
            return json.load(f)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--published", action="store_true", help="the published ResNet-50 instead of the small one")
    parser.add_argument("--steps", type=int, default=4, help="measured steps per configuration")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured steps first")
    parser.add_argument("--output", default=None, help="write the results as JSON here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="no", help=argparse.SUPPRESS)
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return {}
    cores = os.cpu_count() or 1
    rows = []
    for precision in ("no", "bf16"):
        half = max(cores // 2, 1)
        single_half = measure(1, half, precision, args)
        single_all = measure(1, cores, precision, args) if cores > half else single_half
        double = measure(2, half, precision, args)
        efficiency = double["images_per_second"] / (2 * single_half["images_per_second"])
        rows.append({"precision": "fp32" if precision == "no" else "bf16",
                     f"1 process x {half} thread(s)": single_half["images_per_second"],
                     f"1 process x {cores} threads": single_all["images_per_second"],
                     f"2 processes x {half} thread(s)": double["images_per_second"],
                     "scaling efficiency": efficiency})
    model = "published ResNet-50" if args.published else "small ResNet (1 block/stage, width 16)"
    print(f"CLOOME training throughput, {model}, global batch {BATCH}, {CHANNELS}x{SIZE}x{SIZE}, {cores} CPU cores")
    for row in rows:
        print("  " + ", ".join(f"{k}: {v:.3g}" if isinstance(v, float) else f"{k}: {v}" for k, v in row.items()))
    report = {"model": model, "batch": BATCH, "image": [CHANNELS, SIZE, SIZE], "cpu_cores": cores, "results": rows}
    if args.output:
        with open(args.output, "w") as f:
            json.dump(report, f, indent=2)
    return report


if __name__ == "__main__":
    main()
