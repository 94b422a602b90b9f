"""Torch side: unique-molecule batches, sharding / set_epoch (also through accelerate), the right fingerprint
for each site, pixel_values, workers and streaming."""

import warnings
from collections import Counter

import datasets
import numpy as np
import pytest
import torch

from cloome_hf.data import (
    CellPaintingCollator,
    FingerprintTable,
    UniqueMoleculeBatchSampler,
    build_dataloader,
    decode_row,
    make_synthetic_dataset,
    unique_molecule_batches,
)
from cloome_hf.featurization_cloome import MoleculeFeaturizer
from cloome_hf.transforms import CloomeTrainTransform

MEANS = torch.tensor([47.1314, 40.8138, 53.7692, 46.2656, 28.7243]).view(5, 1, 1)


@pytest.fixture(scope="module")
def syn():
    return make_synthetic_dataset(num_molecules=24, sites_per_molecule=3, num_plates=2, image_size=32, seed=0)


def _skewed_keys():
    # one molecule with 30 sites (a control), others with 1-4 sites
    rng = np.random.default_rng(0)
    keys = ["DMSO"] * 30 + [f"m{i}" for i in range(60) for _ in range(int(rng.integers(1, 5)))]
    return [keys[i] for i in rng.permutation(len(keys))]


def test_unique_molecule_batches_never_repeat_a_molecule():
    keys = _skewed_keys()
    for drop_last in (True, False):
        batches = unique_molecule_batches(keys, 16, np.random.default_rng(1), drop_last)
        assert all(len({keys[i] for i in b}) == len(b) for b in batches)
        used = [i for b in batches for i in b]
        assert len(used) == len(set(used))  # each site at most once per epoch
        if not drop_last:
            assert sorted(used) == list(range(len(keys)))
        else:
            assert all(len(b) == 16 for b in batches) and len(used) >= len(keys) - 16 * 4
    assert unique_molecule_batches(["a", "b", "a"], 2, None, False) == [[0, 1], [2]]


def test_batch_larger_than_the_molecule_count_is_refused_not_silently_empty():
    keys = ["a", "b", "c"] * 4  # 3 molecules, 12 sites
    with pytest.raises(ValueError, match="distinct molecules: the data has 3 molecules in 12 sites"):
        unique_molecule_batches(keys, 4, np.random.default_rng(0), drop_last=True)
    assert len(unique_molecule_batches(keys, 3, np.random.default_rng(0), drop_last=True)) == 4


def test_sampler_epochs_and_process_shards():
    keys = _skewed_keys()
    s = UniqueMoleculeBatchSampler(keys, 8, seed=5)
    e0 = list(s)
    assert list(s) == e0 and len(s) == len(e0)
    s.set_epoch(1)
    assert list(s) != e0
    shards = [list(UniqueMoleculeBatchSampler(keys, 8, seed=5, num_replicas=3, rank=r)) for r in range(3)]
    assert len({len(x) for x in shards}) == 1  # equal batch counts: no process waits forever
    flat = [i for x in shards for b in x for i in b]
    assert len(flat) == len(set(flat))  # processes see different sites
    with pytest.raises(ValueError, match="rank 3"):
        UniqueMoleculeBatchSampler(keys, 8, num_replicas=3, rank=3)


def test_accelerate_shards_batches_and_reaches_set_epoch(syn):
    from accelerate.data_loader import prepare_data_loader

    loader = build_dataloader(syn, None, batch_size=4, train=True, seed=0)
    shards = [prepare_data_loader(loader, device=torch.device("cpu"), num_processes=2, process_index=r,
                                  put_on_device=False) for r in range(2)]
    seen = []
    for shard in shards:
        for batch in shard:
            assert len(set(batch["inchikey"])) == len(batch["inchikey"])
            seen.append(tuple(batch["sample_key"]))
    assert len(seen) == len(set(seen)) and len(seen) == 2 * len(shards[0])  # processes get different batches
    epoch0 = [b for b in seen[: len(shards[0])]]
    epoch1 = [tuple(b["sample_key"]) for b in shards[0]]  # accelerate advances the epoch on each pass
    assert epoch1 != epoch0
    shards[0].set_epoch(0)
    assert [tuple(b["sample_key"]) for b in shards[0]] == epoch0


def test_batches_join_the_right_fingerprint_and_pixels(syn):
    fz = MoleculeFeaturizer(fingerprint_size=128)
    table = FingerprintTable.from_dataset(syn, fz)
    assert len(table) == 24  # once per unique molecule, not per site
    by_key = {r["sample_key"]: r for r in syn}
    loader = build_dataloader(syn, table, batch_size=6, train=False)
    n = 0
    for batch in loader:
        smiles = [by_key[k]["smiles"] for k in batch["sample_key"]]
        np.testing.assert_array_equal(batch["fingerprints"].numpy(), fz(smiles))  # direct featurisation
        expected = torch.stack([torch.from_numpy(decode_row(by_key[k]).astype(np.float32)) / MEANS - 1
                                for k in batch["sample_key"]])
        torch.testing.assert_close(batch["pixel_values"], expected)
        assert batch["pixel_values"].dtype == torch.float32 and torch.isfinite(batch["pixel_values"]).all()
        n += len(batch["sample_key"])
    assert n == len(syn)  # evaluation: every site, in order
    # a featuriser instead of a table: same fingerprints
    batch = next(iter(build_dataloader(syn, fz, batch_size=6, train=False)))
    np.testing.assert_array_equal(batch["fingerprints"].numpy(), table.lookup(batch["inchikey"]))


def test_training_loader_with_workers_augments_and_covers_each_site_once(syn):
    transform = CloomeTrainTransform(crop_size=(24, 24), random_resized_crop_scale=(0.8, 1.0))
    loader = build_dataloader(syn, MoleculeFeaturizer(fingerprint_size=64), batch_size=8, train=True,
                              transform=transform, num_workers=2, seed=0, drop_last=False)
    keys = []
    for batch in loader:
        assert batch["pixel_values"].shape[1:] == (5, 24, 24)
        assert len(set(batch["inchikey"])) == len(batch["inchikey"])
        keys += batch["sample_key"]
    assert sorted(keys) == sorted(syn["sample_key"])


def test_streaming_loader_unique_molecules(syn, tmp_path, monkeypatch):
    # datasets sleeps 5 s after a threaded Parquet stream ends (an Arrow shutdown workaround); not needed here
    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0)
    syn.to_parquet(str(tmp_path / "s.parquet"))
    stream = datasets.load_dataset("parquet", data_files=str(tmp_path / "s.parquet"), split="train",
                                   streaming=True)
    loader = build_dataloader(stream, MoleculeFeaturizer(fingerprint_size=64), batch_size=8, train=True,
                              shuffle_buffer=20, drop_last=False)
    keys = []
    for batch in loader:
        assert len(set(batch["inchikey"])) == len(batch["inchikey"])
        assert batch["fingerprints"].shape == (len(batch["inchikey"]), 64)
        keys += batch["sample_key"]
    assert Counter(keys) == Counter(syn["sample_key"])
    loader.set_epoch(1)
    assert [k for b in loader for k in b["sample_key"]] != keys


def test_invalid_molecules_and_blank_images_never_reach_a_batch(syn):
    bad_key = syn[0]["inchikey"]
    broken = syn.map(lambda r: {"smiles": "C1CC(" if r["inchikey"] == bad_key else r["smiles"]})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loader = build_dataloader(broken, MoleculeFeaturizer(fingerprint_size=64), batch_size=8, train=False)
    assert any("invalid SMILES" in str(w.message) for w in caught)
    keys = [k for b in loader for k in b["inchikey"]]
    assert bad_key not in keys and len(keys) == len(syn) - 3
    row = dict(syn[1])
    image = bytearray(row["image"])
    image[: 32 * 32] = bytes(32 * 32)  # channel 0 all zero
    collate = CellPaintingCollator(None)
    with pytest.raises(ValueError, match=rf"sample '{row['sample_key']}': channel 0 is all zero"):
        collate([dict(row, image=bytes(image))])
    with pytest.raises(ValueError, match="no fingerprint for molecule 'XYZ'"):
        FingerprintTable.from_dataset(syn, MoleculeFeaturizer(fingerprint_size=8)).lookup(["XYZ"])


def test_training_loader_holds_one_fingerprint_row_per_molecule_not_per_site():
    """20,000 sites of 10 molecules with 8,192-long fingerprints: a per-site fingerprint array would be 655 MB;
    the loader keeps one row per molecule and looks fingerprints up per batch."""
    import tracemalloc

    keys = [f"mol{i % 10}" for i in range(20_000)]
    smiles = ["C" * (i % 10 + 1) + "O" for i in range(20_000)]
    image, shape = np.zeros((5, 4, 4), np.uint8) + 1, [5, 4, 4]
    ds = datasets.Dataset.from_dict({"sample_key": [f"s{i}" for i in range(20_000)], "plate": ["p"] * 20_000,
                                     "well": ["A01"] * 20_000, "site": [1] * 20_000, "smiles": smiles,
                                     "inchikey": keys, "image": [image.tobytes()] * 20_000,
                                     "image_shape": [shape] * 20_000})
    featurizer = MoleculeFeaturizer(kind="morgan_count", fingerprint_size=8192)
    tracemalloc.start()
    loader = build_dataloader(ds, featurizer, batch_size=10, train=True, seed=0)
    batch = next(iter(loader))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(loader.collate_fn.fingerprints) == 10 and loader.collate_fn.fingerprints.fingerprints.shape == (10, 8192)
    assert batch["fingerprints"].shape == (10, 8192)
    assert peak < 60e6, f"building the loader allocated {peak / 1e6:.0f} MB"


def test_worker_loaders_are_persistent_prefetching_and_pinned_only_on_cuda(syn, tmp_path):
    from cloome_hf.data.loader import PREFETCH_BATCHES

    loader = build_dataloader(syn, None, batch_size=4, num_workers=2)
    assert loader.persistent_workers and loader.prefetch_factor == PREFETCH_BATCHES
    assert loader.pin_memory == torch.cuda.is_available()
    assert not build_dataloader(syn, None, batch_size=4).persistent_workers  # no workers to keep
    assert not build_dataloader(syn, None, batch_size=4, num_workers=2, persistent_workers=False).persistent_workers
    syn.to_parquet(str(tmp_path / "s.parquet"))
    stream = datasets.load_dataset("parquet", data_files=str(tmp_path / "s.parquet"), split="train", streaming=True)
    # a persistent worker would keep the shuffle of the epoch it started in
    assert not build_dataloader(stream, None, batch_size=4, num_workers=2, train=False).persistent_workers


def test_worker_batches_are_written_straight_into_shared_memory(syn, monkeypatch):
    """Inside a worker the augmented pixels (and uint8 sites) are made in shared memory, so handing them to the
    main process copies nothing; in the main process they are ordinary memory."""
    from cloome_hf.data import loader as loader_module

    transform = CloomeTrainTransform(crop_size=(24, 24), random_resized_crop_scale=None)
    rows = [dict(syn[i]) for i in range(4)]
    for in_worker in (False, True):
        monkeypatch.setattr(loader_module, "_in_worker", lambda: in_worker)
        augmented = CellPaintingCollator(None, transform)(rows)["pixel_values"]
        sites = CellPaintingCollator(None, transform, output="uint8")(rows)["images"]
        assert augmented.shape == (4, 5, 24, 24) and sites.dtype == torch.uint8
        assert augmented.is_shared() == sites.is_shared() == in_worker


def test_training_batches_do_not_depend_on_workers_or_where_they_are_augmented(syn):
    """The same (seed, epoch) gives the same sites with the same pixels with 0 or 2 workers, and the uint8 batches
    augmented by the batched (accelerator) path of the transform on the CPU device match the loader's."""
    transform = CloomeTrainTransform(output_size=(24, 24), random_resized_crop_scale=(0.5, 1.0))
    fz = MoleculeFeaturizer(fingerprint_size=64)

    def pixels_by_site(loader, output, epoch_index):
        loader.set_epoch(epoch_index)  # persistent workers: the epoch reaches the sampler in the main process
        batches = list(loader)
        if output == "uint8":
            return {k: p for b in batches for k, p in zip(b["sample_key"],
                                                           transform(b["images"], seeds=b["seeds"], batched=True))}
        return {k: p for b in batches for k, p in zip(b["sample_key"], b["pixel_values"])}

    loaders = {(workers, output): build_dataloader(syn, fz, batch_size=8, train=True, transform=transform,
                                                   num_workers=workers, seed=3, output=output)
               for workers, output in ((0, "pixel_values"), (2, "pixel_values"), (2, "uint8"))}
    mains = []
    for epoch_index in (0, 1):
        seen = {key: pixels_by_site(loader, key[1], epoch_index) for key, loader in loaders.items()}
        mains.append(seen.pop((0, "pixel_values")))
        assert len(mains[-1]) == len(syn)  # 72 sites, 9 full batches of 8
        for other in seen.values():
            assert list(other) == list(mains[-1])  # the same sites in the same order
            torch.testing.assert_close(torch.stack(list(other.values())), torch.stack(list(mains[-1].values())),
                                       rtol=0, atol=1e-5)
    assert list(mains[0]) != list(mains[1])  # a new epoch: a new order ...
    assert not torch.equal(mains[0]["SYN0001-A01-1"], mains[1]["SYN0001-A01-1"])  # ... and new augmentations


@pytest.mark.parametrize("transform", [
    CloomeTrainTransform(crop_size=(24, 24), random_resized_crop_scale=None),  # exact crops, all 8 orientations
    CloomeTrainTransform(output_size=(20, 20), random_resized_crop_scale=(0.5, 1.0)),  # resampled
])
def test_float_batches_read_in_place_equal_the_transform_of_the_uint8_batch(syn, transform):
    """The float32 path reads each site's box straight from the batch's buffers (no uint8 batch): bit for bit the
    transform of the uint8 batch the collator hands out for the accelerator, also with the channels reordered;
    a blank channel is named in the model's channel order."""
    from cloome_hf.data import CellPaintingTorchDataset

    rows = CellPaintingTorchDataset(syn).__getitems__([(i, 100 + i) for i in range(16)])
    for permutation in (None, [4, 2, 0, 1, 3]):
        pixels = CellPaintingCollator(None, transform, channel_permutation=permutation)(rows)["pixel_values"]
        uint8 = CellPaintingCollator(None, transform, channel_permutation=permutation, output="uint8")(rows)
        torch.testing.assert_close(pixels, transform(uint8["images"], seeds=uint8["seeds"]), rtol=0, atol=0)
    row = dict(syn[1])
    image = bytearray(row["image"])
    image[2 * 32 * 32: 3 * 32 * 32] = bytes(32 * 32)  # stored channel 2, the model's channel 1
    collate = CellPaintingCollator(None, transform, channel_permutation=[4, 2, 0, 1, 3])
    with pytest.raises(ValueError, match=rf"sample '{row['sample_key']}': channel 1 is all zero"):
        collate([dict(row, image=bytes(image))])
