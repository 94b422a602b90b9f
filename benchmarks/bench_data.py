"""Input-pipeline throughput at the real site size (5 x 520 x 696 uint8): the training path vs. the upstream steps.

Three loaders, run side by side in one process (their epochs interleaved, so a load change hits them alike), with
0, 1 and 2 ``DataLoader`` worker processes (one thread each), batch ``--batch_size``, at two settings: a random
520 x 520 crop (``crop520``), and a random resized crop of the whole site to 320 x 320, area 0.9-1 (``rrc320``):

* ``upstream``: the upstream CLOOME ``CellPainting`` dataset's steps, re-implemented from their description: per
  sample ``np.load`` of the site's ``.npz`` (key ``sample``, H x W x 5 uint8), ``float32``, ``to_tensor``,
  torchvision ``RandomCrop(520)`` or ``RandomResizedCrop(320, scale=(0.9, 1), bicubic)``, ``Normalize``; then
  ``default_collate``. Images only (ours also looks up the fingerprints);
* ``ours_cpu``: the training path of ``cloome train``, :func:`cloome_hf.train.data.training_loader` (Parquet
  shards written by ``prepare_dataset``, as ``cloome prepare`` writes them -> ``load_cell_painting`` ->
  ``build_dataloader``: unique-molecule batches, per-site seeds, decoding into a reused buffer, the augmentation
  (flips and 90-degree turns on top of the crop) written into shared memory in the workers, into buffers they
  reuse once a batch is released, as the training step releases each batch after its optimiser step);
* ``ours_uint8``: the same with ``--augment_on_device``: the loader hands over uint8 sites and seeds; the
  augmentation then runs on the accelerator. Its CPU cost per site is the loader's plus the main process's share
  of the device path (``draw_params`` + ``batched_taps``, timed apart as ``device_path_main_process``).

Reported per loader: sites/s (best of ``--repeats`` epochs), sites per CPU second of the main process and its
workers (steadier on a shared machine; the JSON adds the main process's share of that CPU time), the ratios to
``upstream`` in the same run, the scaling from 1 to 2 workers, and the workers' resident memory after the warm-up
epoch and after the last one (``RssAnon``, their own memory; memory-mapped dataset pages show up in ``RssFile`` and
are the shared page cache). Persistent workers and a prefetch of 2 batches per worker for all three loaders.

Sites are the bundled real site (``cloome_hf.example_site()``, 8 bit through the processor), rolled, flipped and
speckled so that no two are equal. Both stores are read once before timing (warm page cache).

``THP_MEM_ALLOC_ENABLE=1`` is set before torch is imported (torch then backs large CPU tensors with transparent
huge pages: fewer page faults on fresh batch tensors; it does not apply to shared memory). Run::

    python benchmarks/bench_data.py --num_sites 128 --batch_size 16 --output bench_data.json
"""

from __future__ import annotations

import os

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # read when torch is imported

import argparse  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench_report import finish  # noqa: E402

#: The two headline settings, as ``cloome train`` arguments.
SETTINGS = {
    "crop520": dict(image_size=[520, 520], random_resized_crop_scale=[]),
    "rrc320": dict(image_size=[320, 320], random_resized_crop_scale=[0.9, 1.0]),
}
LOADERS = ("upstream", "ours_cpu", "ours_uint8")


def make_sites(folder: str, num_sites: int, seed: int = 0) -> str:
    """Write ``num_sites`` distinct real-size sites as upstream stores them (``npz/{SAMPLE_KEY}.npz``, key
    ``sample``, H x W x 5 uint8) plus a Bray-style index of real molecules (2 sites each); returns the index path."""
    from cloome_hf import example_site
    from cloome_hf.channels import CHANNELS
    from cloome_hf.data import bundled_molecules
    from cloome_hf.image_processing_cloome import CloomeImageProcessor

    site_dir = os.path.dirname(example_site()["Mito"])
    base = CloomeImageProcessor().load_uint8_site({c: os.path.join(site_dir, f"{c}.tif") for c in CHANNELS})
    rng = np.random.default_rng(seed)
    mols = bundled_molecules().iloc[: max(1, num_sites // 2)]
    os.makedirs(os.path.join(folder, "npz"), exist_ok=True)
    rows = []
    for i in range(num_sites):
        img = np.roll(base, (int(rng.integers(base.shape[1])), int(rng.integers(base.shape[2]))), axis=(1, 2))
        if rng.random() < 0.5:
            img = img[:, ::-1]
        img = img.copy()
        img.reshape(-1)[rng.integers(0, img.size, 2000)] = rng.integers(1, 255, 2000, dtype=np.uint8)
        key = f"BENCH{i // 384:03d}-{i % 384:03d}-1"
        mol = mols.iloc[i % len(mols)]
        np.savez(os.path.join(folder, "npz", f"{key}.npz"), sample=img.transpose(1, 2, 0),
                 channels=np.array({c: j for j, c in enumerate(CHANNELS)}, dtype=object))
        rows.append(dict(SAMPLE_KEY=key, PLATE_ID=key.split("-")[0], WELL_POSITION=key.split("-")[1], SITE=1,
                         SMILES=mol.smiles, INCHIKEY=mol.inchikey))
    pd.DataFrame(rows).to_csv(os.path.join(folder, "index.csv"), index=False)
    return os.path.join(folder, "index.csv")


# ------------------------------------------------------------------ the upstream baseline
class UpstreamCellPainting(torch.utils.data.Dataset):
    """One ``np.load`` per site, then float32, ``to_tensor``, the crop and ``Normalize``, per sample."""

    def __init__(self, index: str, root: str, setting: str):
        import torchvision.transforms as T

        from cloome_hf.channels import CLOOME_CHANNEL_MEAN

        self.files = [os.path.join(root, f"{k}.npz") for k in pd.read_csv(index).SAMPLE_KEY]
        size = SETTINGS[setting]["image_size"][0]
        if SETTINGS[setting]["random_resized_crop_scale"]:
            crop = T.RandomResizedCrop(size, scale=(0.9, 1.0), interpolation=T.InterpolationMode.BICUBIC)
        else:
            crop = T.RandomCrop(size)
        self.transform = T.Compose([crop, T.Normalize(CLOOME_CHANNEL_MEAN, CLOOME_CHANNEL_MEAN)])

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        from torchvision.transforms.functional import to_tensor

        with np.load(self.files[i]) as f:
            sample = f["sample"]
        return self.transform(to_tensor(sample.astype(np.float32)))


def upstream_loader(index: str, root: str, setting: str, batch_size: int, workers: int):
    return torch.utils.data.DataLoader(
        UpstreamCellPainting(index, root, setting), batch_size=batch_size, shuffle=True, drop_last=True,
        num_workers=workers, persistent_workers=workers > 0, prefetch_factor=2 if workers else None,
        generator=torch.Generator().manual_seed(0))


# ------------------------------------------------------------------ the training path
def training_path_loader(data, setting: str, batch_size: int, workers: int, augment_on_device: bool):
    """``training_loader`` exactly as ``cloome train`` builds it for these arguments."""
    from cloome_hf.image_processing_cloome import CloomeImageProcessor
    from cloome_hf.train.data import training_loader
    from cloome_hf.train.params import DataArguments

    args = DataArguments(**SETTINGS[setting], augment=True, dataloader_num_workers=workers,
                         augment_on_device=augment_on_device)
    return training_loader(data, args, CloomeImageProcessor(), batch_size, seed=0)


def device_path_main_process(setting: str, batches: list[int], height: int, width: int) -> float:
    """CPU seconds per site of the device path's host side (parameters and taps), in this process."""
    from cloome_hf.image_processing_cloome import CloomeImageProcessor
    from cloome_hf.train.data import training_transform
    from cloome_hf.train.params import DataArguments

    transform = training_transform(DataArguments(**SETTINGS[setting], augment=True),
                                   CloomeImageProcessor())
    start, seed = time.process_time(), 0
    for n in batches:
        transform.batched_taps(transform.draw_params(n, height, width, seeds=range(seed, seed + n)))
        seed += n
    return (time.process_time() - start) / sum(batches)


# ------------------------------------------------------------------ measuring
def _workers(loader) -> list[int]:
    iterator = getattr(loader, "_iterator", None)  # a persistent loader keeps its worker processes here
    return [w.pid for w in getattr(iterator, "_workers", [])]


def _cpu_seconds(pids: list[int]) -> float:
    import psutil

    total = 0.0
    for pid in pids:
        times = psutil.Process(pid).cpu_times()
        total += times.user + times.system
    return total


def _rss_mb(pid: int) -> dict[str, float]:
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.split(":", 1) for line in f if line.startswith("Rss"))
    return {k: round(int(v.split()[0]) / 1024, 1) for k, v in fields.items()}


def run_epoch(loader, epoch: int) -> tuple[int, float, float, float]:
    """(sites, wall seconds, CPU seconds of this process and the loader's workers, of this process alone) of one
    epoch."""
    from cloome_hf.data import release_batch

    loader.set_epoch(epoch) if hasattr(loader, "set_epoch") else None
    workers = _workers(loader)
    main_cpu, worker_cpu, start, sites = time.process_time(), _cpu_seconds(workers), time.perf_counter(), 0
    for batch in loader:
        sites += len(batch["pixel_values"] if isinstance(batch, dict) and "pixel_values" in batch
                     else batch["images"] if isinstance(batch, dict) else batch)
        release_batch(batch)  # as the training step does once it is done with a batch (upstream's: no-op)
    wall = time.perf_counter() - start
    main_cpu = time.process_time() - main_cpu
    workers = workers or _workers(loader)  # started by this epoch
    return sites, wall, main_cpu + _cpu_seconds(workers) - worker_cpu, main_cpu


def measure(loaders: dict, repeats: int) -> dict:
    """Warm-up epoch, then ``repeats`` interleaved epochs of every loader: best rates and worker memory."""
    out = {name: {"sites_per_s": 0.0, "sites_per_cpu_s": 0.0, "main_process_cpu_share": 0.0} for name in loaders}
    for name, loader in loaders.items():
        run_epoch(loader, 0)
        out[name]["worker_rss_mb_after_warmup"] = [_rss_mb(pid) for pid in _workers(loader)]
    for epoch in range(1, repeats + 1):
        for name, loader in loaders.items():
            sites, wall, cpu, main_cpu = run_epoch(loader, epoch)
            if sites / cpu > out[name]["sites_per_cpu_s"]:
                out[name]["sites_per_cpu_s"], out[name]["main_process_cpu_share"] = sites / cpu, main_cpu / cpu
            out[name]["sites_per_s"] = max(out[name]["sites_per_s"], sites / wall)
    for name, loader in loaders.items():
        out[name]["worker_rss_mb_at_end"] = [_rss_mb(pid) for pid in _workers(loader)]
        out[name]["sites_per_s"] = round(out[name]["sites_per_s"], 1)
        out[name]["sites_per_cpu_s"] = round(out[name]["sites_per_cpu_s"], 1)
        out[name]["main_process_cpu_share"] = round(out[name]["main_process_cpu_share"], 3)
    return out


def _anon_growth(result: dict) -> float:
    before, after = result["worker_rss_mb_after_warmup"], result["worker_rss_mb_at_end"]
    return max((b2["RssAnon"] - b1["RssAnon"] for b1, b2 in zip(before, after)), default=0.0)


def print_table(results: dict) -> None:
    rows = results["settings"]
    print(f"\nsites/s (per CPU-second in brackets); ratios to upstream in the same run; load average "
          f"{results['load_average_before']} -> {results['load_average_after']}", file=sys.stderr)
    print(f"{'setting':<8} {'workers':>7} | {'upstream':>16} | {'ours CPU path':>26} | {'ours uint8 loader':>26} | "
          f"{'device path CPU cost':>20} | {'worker RssAnon growth MB':>24}", file=sys.stderr)
    for setting, by_workers in rows.items():
        for workers, r in by_workers.items():
            up, cpu, u8 = (r[k] for k in LOADERS)
            growth = "/".join(f"{_anon_growth(r[k]):.0f}" for k in LOADERS) if workers != "0" else "-"
            print(f"{setting:<8} {workers:>7} | {up['sites_per_s']:>6.1f} ({up['sites_per_cpu_s']:>6.1f}) | "
                  f"{cpu['sites_per_s']:>6.1f} ({cpu['sites_per_cpu_s']:>6.1f}) {r['ratios']['ours_cpu']:>5.2f}x"
                  f" ({r['ratios_per_cpu_s']['ours_cpu']:>4.2f}x) | "
                  f"{u8['sites_per_s']:>6.1f} ({u8['sites_per_cpu_s']:>6.1f}) {r['ratios']['ours_uint8']:>5.1f}x"
                  f" ({r['ratios_per_cpu_s']['ours_uint8']:>4.1f}x) | "
                  f"{r['device_path_cpu_cost_x_below_upstream']:>18.1f}x | {growth:>24}", file=sys.stderr)
        scaling = results["worker_scaling_2_over_1"].get(setting)
        if scaling:
            print(f"{setting:<8} 2 workers / 1 worker: " + ", ".join(f"{k} {v:.2f}x" for k, v in scaling.items()),
                  file=sys.stderr)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num_sites", type=int, default=128)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="0 = read in the main process")
    p.add_argument("--repeats", type=int, default=3, help="timed epochs per loader (best is reported)")
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--output", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)

    from cloome_hf.data import FingerprintTable, load_cell_painting, open_source, prepare_dataset
    from cloome_hf.featurization_cloome import MoleculeFeaturizer
    from cloome_hf.train.data import TrainingData

    torch.set_num_threads(1)  # one thread in the main process; DataLoader workers run one thread each
    results = {"num_sites": args.num_sites, "batch_size": args.batch_size, "repeats": args.repeats,
               "cpu_count": os.cpu_count(), "THP_MEM_ALLOC_ENABLE": os.environ.get("THP_MEM_ALLOC_ENABLE", ""),
               "load_average_before": [round(v, 2) for v in os.getloadavg()], "settings": {},
               "worker_scaling_2_over_1": {}}
    with tempfile.TemporaryDirectory() as tmp:
        index = make_sites(tmp, args.num_sites)
        npz_root = os.path.join(tmp, "npz")
        start = time.perf_counter()
        prepare_dataset(open_source("bray_npz", index=index, root=npz_root), os.path.join(tmp, "parquet"),
                        shard_size=64, num_proc=min(2, os.cpu_count()), progress=False)
        results["prepare_s"] = round(time.perf_counter() - start, 1)
        ds = load_cell_painting(os.path.join(tmp, "parquet"), split="train", cache_dir=os.path.join(tmp, "cache"))
        results["site_shape"] = list(ds[0]["image_shape"])
        data = TrainingData(ds, ds, FingerprintTable.from_dataset(ds, MoleculeFeaturizer(fingerprint_size=1024)))
        height, width = results["site_shape"][1:]
        for setting in args.settings:
            results["settings"][setting] = {}
            batches = [args.batch_size] * (args.num_sites // args.batch_size)
            host_share = device_path_main_process(setting, batches, height, width)
            for workers in args.workers:
                loaders = {"upstream": upstream_loader(index, npz_root, setting, args.batch_size, workers),
                           "ours_cpu": training_path_loader(data, setting, args.batch_size, workers, False),
                           "ours_uint8": training_path_loader(data, setting, args.batch_size, workers, True)}
                r = measure(loaders, args.repeats)
                up = r["upstream"]
                r["ratios"] = {k: round(r[k]["sites_per_s"] / up["sites_per_s"], 2) for k in LOADERS[1:]}
                r["ratios_per_cpu_s"] = {k: round(r[k]["sites_per_cpu_s"] / up["sites_per_cpu_s"], 2)
                                         for k in LOADERS[1:]}
                r["device_path_main_process_cpu_ms_per_site"] = round(1000 * host_share, 3)
                r["device_path_cpu_cost_x_below_upstream"] = round(
                    (1 / up["sites_per_cpu_s"]) / (1 / r["ours_uint8"]["sites_per_cpu_s"] + host_share), 1)
                results["settings"][setting][str(workers)] = r
                del loaders  # shuts the persistent workers down
            by_workers = results["settings"][setting]
            if "1" in by_workers and "2" in by_workers:
                results["worker_scaling_2_over_1"][setting] = {
                    k: round(by_workers["2"][k]["sites_per_s"] / by_workers["1"][k]["sites_per_s"], 2)
                    for k in LOADERS}
    results["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    print_table(results)
    return finish(results, args.output)


if __name__ == "__main__":
    main()
