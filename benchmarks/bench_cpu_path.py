"""Where the float32 CPU path's time goes, per site, at the 520 random crop (one process, one thread).

The training path's batch (``build_dataloader`` with 0 workers, as :mod:`bench_data` builds it) is timed stage by
stage, each stage run on its own over the same batches, best of ``--repeats``; the upstream steps (see
:mod:`bench_data`) likewise, in the same run:

* ours: ``read`` (the Arrow slice of the batch's rows), ``decode`` (the sites as read-only views of the batch's
  Arrow buffers; before, copied into a uint8 batch), ``blank check`` (no all-zero channel: a probe of every 16th
  row, a whole channel only where the probe is zero; ``before``: every channel's maximum), ``draw`` (per-site
  crop and orientation from the seeds), ``orient`` (the uint8 box copied turned, for the 4 of 8 orientations that
  transpose it), ``normalise`` (the compiled kernel of :mod:`cloome_hf.transforms_cpu`: each pixel converted,
  read flipped in place, ``(x - mean) / std``, written once into the float32 output; ``numpy passes``: the same
  pixels through numpy's ufuncs, the path without numba), ``fingerprints`` (table lookup); ``whole batch`` (the
  collation of the same batches, which includes everything, each batch released afterwards as the training step
  does, so the next one reuses its memory), ``whole batch, fresh memory`` (the batches kept, so each is written
  into fresh memory) and ``whole batch, numpy passes`` (released, without the kernel);
* upstream: ``np.load`` of the ``.npz``, ``float32``, ``to_tensor``, ``RandomCrop``, ``Normalize``, collate;
* ``memory floor``: writing 5 x 520 x 520 float32 once (``np.copyto`` from the uint8 box): the bytes every
  float32 path must write.

Stages are timed in process CPU time by default (``--clock wall`` for wall time): on a shared machine the other
jobs' time slices then do not count (their use of the memory bandwidth still does). Run::

    python benchmarks/bench_cpu_path.py --num_sites 64 --batch_size 16
"""

from __future__ import annotations

import os

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # what every cloome command sets (cloome_hf/runtime.py)

import argparse  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_data import UpstreamCellPainting, make_sites, training_path_loader  # noqa: E402
from bench_report import finish  # noqa: E402


#: the clock stages are timed with: process CPU time by default (on a shared machine other jobs' time slices do
#: not count; their use of the memory bandwidth still does), wall time with ``--clock wall``
CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}
clock = CLOCKS["cpu"]


def best_ms_per_site(fn, sites: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = clock()
        fn()
        best = min(best, clock() - start)
    return 1000 * best / sites


def ours_stages(loader, repeats: int) -> dict[str, float]:
    import cloome_hf.transforms_cpu as transforms_cpu
    from cloome_hf.data import release_batch
    from cloome_hf.data.loader import _check_blank
    from cloome_hf.transforms_cpu import normalise_box, turned_copy

    collator, data = loader.collate_fn, loader.dataset
    batches = [list(b) for b in loader.batch_sampler]
    sites = sum(len(b) for b in batches)
    tables = [data.__getitems__(b) for b in batches]
    in_place = collator._sites_in_place()
    decoded = [collator._decode(t, [], in_place)[0] for t in tables]  # the sites as the transform reads them
    transform = collator.transform
    shape = tuple(decoded[0][0].shape)
    params = [transform.draw_params(len(d), *shape[-2:], seeds=t[1]) for d, t in zip(decoded, tables)]
    out = torch.empty((len(batches[0]), 5, *transform.output_shape(*shape[-2:])))
    mean, std = transform._mean_np, transform._std_np

    mean, std = mean.reshape(-1), std.reshape(-1)
    assert transforms_cpu.kernel(), "numba is not installed: the kernel rows would time numpy's passes"

    def boxes(i):
        p, src = params[i], decoded[i]
        for j in range(len(p)):
            yield j, np.asarray(src[j]), p

    def orient():  # the turned boxes' uint8 copies (flips are read in place)
        for i in range(len(batches)):
            for j, site, p in boxes(i):
                if p.transpose[j]:
                    turned_copy(site[:, p.top[j]:p.top[j] + p.height[j], p.left[j]:p.left[j] + p.width[j]],
                                p.flip_rows[j], p.flip_cols[j])

    def normalise():
        target = out.numpy()
        for i in range(len(batches)):
            for j, site, p in boxes(i):
                normalise_box(site, p.top[j], p.left[j], (p.height[j], p.width[j]), p.transpose[j],
                              p.flip_rows[j], p.flip_cols[j], mean, std, target[j])

    def without_kernel(fn):
        def run():
            compiled, transforms_cpu._KERNEL = transforms_cpu._KERNEL, False
            try:
                fn()
            finally:
                transforms_cpu._KERNEL = compiled
        return run

    def floor():
        target = out.numpy()
        for i in range(len(batches)):
            for j, site, p in boxes(i):
                box = site[:, p.top[j]:p.top[j] + p.height[j], p.left[j]:p.left[j] + p.width[j]]
                np.copyto(target[j], box, casting="unsafe")

    def collate_released():  # as the training step does: each batch given back once it is done with
        for t in tables:
            release_batch(collator(t))

    def collate_kept():  # each batch in fresh memory (a consumer that never releases)
        kept = [collator(t) for t in tables]
        del kept

    keys = [t[0].column("sample_key").to_pylist() for t in tables]
    channels = collator.channel_permutation if in_place else None

    def blank_check():  # as _decode runs it: a probe of every 16th row, a whole channel only where that is zero
        for d, k in zip(decoded, keys):
            _check_blank(d if in_place else d.numpy(), k, channels)

    def blank_check_before():  # the check before: the maximum of every channel of every whole site
        for d in decoded:
            if in_place:
                np.stack([np.asarray(site).reshape(site.shape[0], -1).max(-1) for site in d])
            else:
                d.numpy().reshape(d.shape[0], d.shape[1], -1).max(-1)

    stages = {
        "read": lambda: [data.__getitems__(b) for b in batches],
        "decode": lambda: [collator._decode(t, [], in_place) for t in tables],
        "blank check": blank_check,
        "blank check, before (whole-site maxima)": blank_check_before,
        "draw": lambda: [transform.draw_params(len(d), *shape[-2:], seeds=t[1]) for d, t in zip(decoded, tables)],
        "orient": orient,
        "normalise (incl. orient)": normalise,
        "normalise, numpy passes (incl. orient)": without_kernel(normalise),
        "fingerprints": lambda: [collator.fingerprints.lookup(t[0].column("inchikey").to_pylist()) for t in tables],
        "whole batch (collate)": collate_released,
        "whole batch, fresh memory (collate)": collate_kept,
        "whole batch, numpy passes (collate)": without_kernel(collate_released),
        "memory floor (write float32 once)": floor,
    }
    result = {name: best_ms_per_site(fn, sites, repeats) for name, fn in stages.items()}
    result["decode"] -= result["blank check"]  # _decode includes the check
    result["normalise"] = result.pop("normalise (incl. orient)") - result["orient"]
    result["normalise, numpy passes"] = result.pop("normalise, numpy passes (incl. orient)") - result["orient"]
    result["whole batch (read + collate)"] = result.pop("whole batch (collate)") + result["read"]
    result["whole batch, fresh memory"] = result.pop("whole batch, fresh memory (collate)") + result["read"]
    result["whole batch, numpy passes"] = result.pop("whole batch, numpy passes (collate)") + result["read"]
    result["sites read in place"] = in_place
    return result


def normalise_variants(repeats: int, sites: int = 16) -> dict[str, float]:
    """Ways of normalising one 5 x 520 x 520 uint8 box (of a 520 x 696 site) into float32, ms per site; the
    ``orient`` rows include the exact normalisation of the oriented box (numpy's two passes), the ``compiled
    kernel`` rows are the path taken. The ``one rounding more`` rows are within float32 rounding of the exact
    ``(x - mean) / std``, the others exact."""
    from cloome_hf.channels import CLOOME_CHANNEL_MEAN
    from cloome_hf.transforms_cpu import normalise_box

    rng = np.random.default_rng(0)
    src = rng.integers(1, 255, (sites, 5, 520, 696), dtype=np.uint8)
    mean = np.asarray(CLOOME_CHANNEL_MEAN, np.float32).reshape(-1, 1, 1)
    std, out, scratch = mean.copy(), np.empty((sites, 5, 520, 520), np.float32), np.empty((5, 520, 520), np.uint8)
    inv, off = (1 / std).astype(np.float32), (-mean / std).astype(np.float32)
    mean_t, std_t, inv_t, off_t = (torch.from_numpy(a) for a in (mean, std, inv, off))
    lut = ((np.arange(256, dtype=np.float32)[None] - mean.reshape(-1, 1)) / std.reshape(-1, 1)).astype(np.float32)

    def each(fn):
        return lambda: [fn(src[i, :, :, 80:600], out[i]) for i in range(sites)]

    def exact(box, o):
        np.subtract(box, mean, out=o)
        np.divide(o, std, out=o)

    def chunked(box, o):
        for r in range(0, 520, 64):
            exact(box[:, r:r + 64], o[:, r:r + 64])

    def copied(box, o):
        np.copyto(scratch, box)
        exact(scratch, o)

    rows = np.empty_like(scratch)

    def rows_then_transposed(box, o):  # what _oriented_source does for a turned box
        np.copyto(rows, box)
        copied(rows.swapaxes(1, 2), o)

    variants = {
        "two passes (x - mean, / std)": exact,
        "two passes in 64-row chunks": chunked,
        "mul + add (one rounding more)": lambda b, o: (np.multiply(b, inv, out=o), np.add(o, off, out=o)),
        "torch.sub(uint8, mean, out) + div_": lambda b, o: torch.sub(torch.from_numpy(b), mean_t,
                                                                       out=torch.from_numpy(o)).div_(std_t),
        "torch.addcmul (one rounding more)": lambda b, o: torch.addcmul(off_t, torch.from_numpy(b), inv_t,
                                                                        out=torch.from_numpy(o)),
        "256-entry table per channel": lambda b, o: [np.take(lut[c], b[c], out=o[c]) for c in range(5)],
        "orient: transpose, copied first": lambda b, o: copied(b.swapaxes(1, 2), o),
        "orient: transpose, rows copied, then transposed": rows_then_transposed,
        "orient: transpose, read in place": lambda b, o: exact(b.swapaxes(1, 2), o),
        "orient: transpose, torch copy": lambda b, o: exact(
            torch.from_numpy(b).transpose(1, 2).contiguous().numpy(), o),
        "orient: column flip, copied first": lambda b, o: copied(b[:, :, ::-1], o),
        "orient: column flip, torch.flip": lambda b, o: exact(torch.from_numpy(b).flip(2).numpy(), o),
        "orient: row flip, read in place": lambda b, o: exact(b[:, ::-1], o),
        "orient: row flip, copied first": lambda b, o: copied(b[:, ::-1], o),
    }
    result = {name: round(best_ms_per_site(each(fn), sites, repeats), 3) for name, fn in variants.items()}
    # the kernel reads the whole site at the box's offset (so that its rows are contiguous to the compiler)
    flat_mean, flat_std = mean.reshape(-1), std.reshape(-1)
    kernel_rows = {"compiled kernel (taken): plain": (False, False, False),
                   "compiled kernel (taken): column flip": (False, False, True),
                   "compiled kernel (taken): row and column flips": (False, True, True),
                   "compiled kernel (taken): transpose (turned copy, then the kernel)": (True, False, False)}
    for name, orientation in kernel_rows.items():
        run = lambda o=orientation: [normalise_box(src[i], 0, 80, (520, 520), *o, flat_mean, flat_std, out[i])
                                     for i in range(sites)]
        result[name] = round(best_ms_per_site(run, sites, repeats), 3)
    return result


def upstream_stages(dataset: UpstreamCellPainting, repeats: int, batch_size: int) -> dict[str, float]:
    from torchvision.transforms.functional import to_tensor

    crop, normalize = dataset.transform.transforms
    files = dataset.files
    loaded = []
    for path in files:
        with np.load(path) as f:
            loaded.append(f["sample"])
    floats = [s.astype(np.float32) for s in loaded]
    tensors = [to_tensor(s) for s in floats]
    cropped = [crop(t) for t in tensors]

    def load():
        for path in files:
            with np.load(path) as f:
                f["sample"]

    stages = {
        "np.load": load,
        "float32": lambda: [s.astype(np.float32) for s in loaded],
        "to_tensor": lambda: [to_tensor(s) for s in floats],
        "RandomCrop": lambda: [crop(t) for t in tensors],
        "Normalize": lambda: [normalize(t.clone()) for t in cropped],
        "collate": lambda: [torch.utils.data.default_collate(cropped[i:i + batch_size])
                            for i in range(0, len(cropped), batch_size)],
        "whole dataset item + collate": lambda: [torch.utils.data.default_collate(
            [dataset[j] for j in range(i, min(i + batch_size, len(files)))])
            for i in range(0, len(files), batch_size)],
    }
    result = {name: best_ms_per_site(fn, len(files), repeats) for name, fn in stages.items()}
    result["Normalize"] -= best_ms_per_site(lambda: [t.clone() for t in cropped], len(files), repeats)
    return result


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num_sites", type=int, default=64)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--clock", choices=sorted(CLOCKS), default="cpu",
                   help="process CPU time (default; robust on a shared machine) or wall time")
    p.add_argument("--variants", action="store_true",
                   help="also time other ways of normalising and orienting a box (the ones not taken)")
    p.add_argument("--output", default=None)
    args = p.parse_args(argv)
    global clock
    clock = CLOCKS[args.clock]

    from cloome_hf.data import FingerprintTable, load_cell_painting, open_source, prepare_dataset
    from cloome_hf.featurization_cloome import MoleculeFeaturizer
    from cloome_hf.train.data import TrainingData

    torch.set_num_threads(1)
    results = {"num_sites": args.num_sites, "batch_size": args.batch_size, "repeats": args.repeats,
               "clock": args.clock,
               "load_average_before": [round(v, 2) for v in os.getloadavg()]}
    with tempfile.TemporaryDirectory() as tmp:
        index = make_sites(tmp, args.num_sites)
        prepare_dataset(open_source("bray_npz", index=index, root=os.path.join(tmp, "npz")),
                        os.path.join(tmp, "parquet"), shard_size=64, num_proc=1, progress=False)
        ds = load_cell_painting(os.path.join(tmp, "parquet"), split="train", cache_dir=os.path.join(tmp, "cache"))
        data = TrainingData(ds, ds, FingerprintTable.from_dataset(ds, MoleculeFeaturizer(fingerprint_size=1024)))
        ours = ours_stages(training_path_loader(data, "crop520", args.batch_size, 0, False), args.repeats)
        upstream = upstream_stages(UpstreamCellPainting(index, os.path.join(tmp, "npz"), "crop520"),
                                   args.repeats, args.batch_size)
    results["sites_read_in_place"] = ours.pop("sites read in place")
    results["ours_ms_per_site"] = {k: round(v, 3) for k, v in ours.items()}
    results["upstream_ms_per_site"] = {k: round(v, 3) for k, v in upstream.items()}
    up_total = upstream["whole dataset item + collate"]
    results["ratio_whole_path_vs_upstream"] = round(up_total / ours["whole batch (read + collate)"], 2)
    results["ratio_numpy_passes_vs_upstream"] = round(up_total / ours["whole batch, numpy passes"], 2)
    results["ratio_memory_floor_vs_upstream"] = round(up_total / ours["memory floor (write float32 once)"], 2)
    if args.variants:
        results["normalise_variants_ms_per_site"] = normalise_variants(args.repeats)
    results["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    for side in ("ours_ms_per_site", "upstream_ms_per_site", "normalise_variants_ms_per_site")[:2 + args.variants]:
        print(f"\n{side}:", file=sys.stderr)
        for k, v in results[side].items():
            print(f"  {k:<36} {v:>7.3f} ms  ({v / up_total:.1%} of upstream's whole path)", file=sys.stderr)
    print(f"\nwhole path: {results['ratio_whole_path_vs_upstream']}x upstream (numpy passes: "
          f"{results['ratio_numpy_passes_vs_upstream']}x); memory floor "
          f"{results['ratio_memory_floor_vs_upstream']}x", file=sys.stderr)
    return finish(results, args.output)


if __name__ == "__main__":
    main()
