"""Augmentation throughput per core at the real site size (5 x 520 x 696 uint8): upstream vs ``CloomeTrainTransform``.

Two settings: a random 520 x 520 crop, and a random resized crop of the whole site to 320 x 320 (area 0.9-1);
ours adds flips and 90-degree turns to both. Paths timed (sites/s, best of ``--repeats`` passes, one thread):

* ``upstream``: the upstream CLOOME ``CellPainting`` steps, re-implemented from their description, per sample:
  ``np.load`` of the site's ``.npz`` ``sample`` array (H x W x 5 uint8, page cache warm), ``float32``,
  ``to_tensor``, torchvision ``RandomCrop(520)`` or ``RandomResizedCrop(320, scale=(0.9, 1), bicubic)``,
  ``Normalize``; then ``torch.stack`` into a batch;
* ``upstream_in_memory``: the same without ``np.load`` (the augmentation alone, from in-memory arrays);
* ``ours_cpu``: ``transform(uint8 batch, seeds=...)`` on the CPU (the loader's work when it augments);
* ``ours_device_cpu_cost``: the CPU side of augmenting on the accelerator: drawing the parameters and building
  the taps (``draw_params`` + ``batched_taps``; the few kernel launches per ``batch_chunk`` images are left out);
  the loader itself then only stacks uint8 sites (``uint8_batch``, also timed). The two together are the CPU
  cost per site of the device path.

Page faults on the fresh batch tensors are a large share of both paths' time on virtual machines; torch backs
large CPU tensors with transparent huge pages when ``THP_MEM_ALLOC_ENABLE=1`` is in the environment before torch is
imported (recorded in the JSON), which helps both paths. Besides wall-clock rates the table gives sites per CPU
second of the process, steadier on a shared machine.

Sites are the bundled real site (``tests/data/example_site``, 8 bit through the processor), rolled / flipped /
speckled so that no two are equal. Run::

    python benchmarks/bench_augment.py --num_sites 64 --batch_size 16
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
SETTINGS = {
    "crop520": dict(crop_size=(520, 520), random_resized_crop_scale=None),
    "rrc320": dict(output_size=(320, 320), random_resized_crop_scale=(0.9, 1.0)),
}


def make_sites(num_sites: int, seed: int = 0) -> list[np.ndarray]:
    """``num_sites`` distinct (5, 520, 696) uint8 sites made from the bundled real one."""
    from cloome_hf.channels import CHANNELS
    from cloome_hf.image_processing_cloome import CloomeImageProcessor

    site_dir = os.path.join(HERE, "..", "tests", "data", "example_site")
    base = CloomeImageProcessor().load_uint8_site({c: os.path.join(site_dir, f"{c}.tif") for c in CHANNELS})
    rng = np.random.default_rng(seed)
    sites = []
    for _ in range(num_sites):
        site = np.roll(base, (int(rng.integers(base.shape[1])), int(rng.integers(base.shape[2]))), axis=(1, 2))
        site = np.ascontiguousarray(site[:, ::-1] if rng.random() < 0.5 else site)
        site.reshape(-1)[rng.integers(0, site.size, 2000)] = rng.integers(1, 255, 2000, dtype=np.uint8)
        sites.append(site)
    return sites


def upstream_transform(setting: str, mean, std):
    import torchvision.transforms as T

    if setting == "crop520":
        resize = T.RandomCrop(520)
    else:
        resize = T.RandomResizedCrop(320, scale=(0.9, 1.0), interpolation=T.InterpolationMode.BICUBIC)
    return T.Compose([resize, T.Normalize(mean, std)])


def upstream_batch(arrays_or_paths, transform) -> torch.Tensor:
    """Upstream per-sample steps: (np.load), float32, to_tensor, crop, normalise; then stack."""
    from torchvision.transforms.functional import to_tensor

    samples = []
    for item in arrays_or_paths:
        if isinstance(item, str):
            with np.load(item) as f:
                item = f["sample"]
        samples.append(transform(to_tensor(item.astype(np.float32))))
    return torch.stack(samples)


def best_rate(run_batch, batches, repeats: int) -> tuple[float, float]:
    """Best sites per wall-clock second and per CPU second of this process over ``repeats`` passes over
    ``batches`` (after one warm-up batch). The CPU-time rate is the steadier one on a shared machine."""
    run_batch(batches[0])
    wall = cpu = 0.0
    for _ in range(repeats):
        n, start, start_cpu = 0, time.perf_counter(), time.process_time()
        for batch in batches:
            n += len(run_batch(batch))
        wall = max(wall, n / (time.perf_counter() - start))
        cpu = max(cpu, n / (time.process_time() - start_cpu))
    return wall, cpu


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num_sites", type=int, default=64)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3, help="timed passes per path (best is reported)")
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--output", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)

    from cloome_hf.channels import CLOOME_CHANNEL_MEAN
    from cloome_hf.transforms import CloomeTrainTransform

    torch.set_num_threads(1)
    sites = make_sites(args.num_sites)
    hwc = [np.ascontiguousarray(s.transpose(1, 2, 0)) for s in sites]  # upstream stores H x W x 5
    results = {"num_sites": args.num_sites, "site_shape": list(sites[0].shape), "batch_size": args.batch_size,
               "threads": 1, "THP_MEM_ALLOC_ENABLE": os.environ.get("THP_MEM_ALLOC_ENABLE", ""),
               "sites_per_s": {}, "sites_per_cpu_s": {}}
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i, site in enumerate(hwc):
            paths.append(os.path.join(tmp, f"site{i}.npz"))
            np.savez(paths[-1], sample=site)
        for path in paths:  # warm the page cache
            with np.load(path) as f:
                f["sample"]
        chunks = [slice(i, i + args.batch_size) for i in range(0, args.num_sites, args.batch_size)]
        seeds = [list(range(c.start, min(c.stop, args.num_sites))) for c in chunks]
        size = sites[0].shape[1:]
        for setting in args.settings:
            transform = CloomeTrainTransform(**SETTINGS[setting])
            upstream = upstream_transform(setting, CLOOME_CHANNEL_MEAN, CLOOME_CHANNEL_MEAN)
            uint8_batches = [torch.from_numpy(np.stack(sites[c])) for c in chunks]
            rates = {
                "upstream": best_rate(lambda c: upstream_batch(paths[c], upstream), chunks, args.repeats),
                "upstream_in_memory": best_rate(lambda c: upstream_batch(hwc[c], upstream), chunks, args.repeats),
                "ours_cpu": best_rate(lambda i: transform(uint8_batches[i], seeds=seeds[i]),
                                      list(range(len(chunks))), args.repeats),
                "uint8_batch": best_rate(lambda c: torch.from_numpy(np.stack(sites[c])), chunks, args.repeats),
                "ours_device_cpu_cost": best_rate(
                    lambda i: transform.batched_taps(transform.draw_params(len(seeds[i]), *size, seeds=seeds[i]))[1],
                    list(range(len(chunks))), args.repeats),
            }
            for clock, index in (("sites_per_s", 0), ("sites_per_cpu_s", 1)):
                r = {k: v[index] for k, v in rates.items()}
                results[clock][setting] = {k: round(v, 1) for k, v in r.items()}
                results[clock][setting]["ratios"] = {
                    "ours_cpu / upstream": round(r["ours_cpu"] / r["upstream"], 2),
                    "ours_cpu / upstream_in_memory": round(r["ours_cpu"] / r["upstream_in_memory"], 2),
                    "device path CPU cost, x below upstream": round(
                        (1 / r["upstream"]) / (1 / r["uint8_batch"] + 1 / r["ours_device_cpu_cost"]), 1),
                }
    print(f"{'setting':<9} {'path':<42} {'sites/s':>9} {'sites/cpu-s':>12}", file=sys.stderr)
    for setting, rates in results["sites_per_s"].items():
        per_cpu = results["sites_per_cpu_s"][setting]
        for name, value in rates.items():
            if name != "ratios":
                print(f"{setting:<9} {name:<42} {value:>9.1f} {per_cpu[name]:>12.1f}", file=sys.stderr)
        for name, value in rates["ratios"].items():
            print(f"{setting:<9} {name:<42} {value:>8.2f}x {per_cpu['ratios'][name]:>11.2f}x", file=sys.stderr)
    print(json.dumps(results, indent=1))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
