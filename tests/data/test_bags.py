"""Well-level bags: bags of 1 to 9 sites pooled by mean or attention, batched with one molecule per bag, trained
on pixels or on cached tower features alike."""

import json

import numpy as np
import pytest
import torch
from conftest import TINY_MOLECULE, TINY_VISION

from cloome_hf import CloomeConfig, CloomeModel, MoleculeFeaturizer
from cloome_hf.bag_pooling import BagPooling
from cloome_hf.data import build_dataloader
from cloome_hf.data.bags import BagBatchSampler, site_bags

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

SIZES = list(range(1, 10))  # bag k holds k sites


@pytest.mark.parametrize("mode", ["mean", "attention"])
def test_bags_of_one_to_nine_sites_pool_each_bag_alone(mode):
    torch.manual_seed(0)
    pooling = BagPooling(mode, 16)  # more dimensions than sites: a bag's weights are recoverable
    features = torch.randn(sum(SIZES), 16)
    sizes = torch.tensor(SIZES)
    pooled = pooling(features, sizes)
    assert pooled.shape == (9, 16)
    starts = np.cumsum([0] + SIZES[:-1])
    for bag, (start, size) in enumerate(zip(starts, SIZES)):
        sites = features[start:start + size]
        alone = pooling(sites, torch.tensor([size]))[0]
        torch.testing.assert_close(pooled[bag], alone)  # the other bags do not leak in
        torch.testing.assert_close(pooling(sites.flip(0), torch.tensor([size]))[0], alone)  # order-free
        if mode == "mean":
            torch.testing.assert_close(alone, sites.mean(0))
        else:  # a convex combination of the bag's sites, with weights that differ between sites
            weights = torch.linalg.lstsq(sites.T, alone[:, None]).solution.squeeze(-1)
            if size > 1:
                assert weights.sum().item() == pytest.approx(1.0, abs=1e-4) and weights.min() > 0
    assert torch.equal(pooled[0], features[0])  # a bag of one site is its site
    if mode == "attention":
        assert not torch.allclose(pooled[8], features[-9:].mean(0))
    with pytest.raises(ValueError, match="must be >= 1 each and sum to the 45 sites"):
        pooling(features, torch.tensor([44]))


def test_model_pools_bags_before_the_projection_and_refuses_bags_without_pooling():
    config = CloomeConfig(vision_config=dict(TINY_VISION, bag_pooling="mean"), molecule_config=dict(TINY_MOLECULE),
                          projection_dim=16)
    model = CloomeModel(config).eval()
    size = config.vision_config.image_size
    images = torch.rand(6, 5, *size)
    with torch.no_grad():
        sites = model.vision_model(images).pooler_output
        bags = model.get_image_features(images, bag_sizes=torch.tensor([1, 2, 3])).pooler_output
        single = model.get_image_features(images).pooler_output
    expected = model.visual_projection(torch.stack([sites[:1].mean(0), sites[1:3].mean(0), sites[3:].mean(0)]))
    torch.testing.assert_close(bags, expected)
    torch.testing.assert_close(single, model.visual_projection(sites))  # no bag_sizes: every site alone
    out = model(pixel_values=images, fingerprints=torch.rand(3, 64), bag_sizes=torch.tensor([1, 2, 3]),
                return_loss=True)
    assert out.logits_per_image.shape == (3, 3)
    plain = CloomeModel(CloomeConfig(vision_config=dict(TINY_VISION), molecule_config=dict(TINY_MOLECULE),
                                     projection_dim=16))
    with pytest.raises(ValueError, match="pools no bags.*bag_pooling='mean' or 'attention'"):
        plain.get_image_features(images, bag_sizes=torch.tensor([6]))


@pytest.fixture(scope="module")
def wells():
    """Nine molecules, one well each, the k-th molecule's well with k sites (bags of 1 to 9 sites)."""
    from cloome_hf.data.synthetic import make_synthetic_dataset

    ds = make_synthetic_dataset(num_molecules=9, sites_per_molecule=9, num_plates=1, image_size=16, seed=0)
    index, site = ds["molecule_index"], ds["site"]
    return ds.select([i for i in range(len(ds)) if site[i] <= index[i] + 1])


def test_well_bags_hold_exactly_their_wells_sites_with_one_molecule_per_bag(wells):
    meta = wells.select_columns(["sample_key", "plate", "well", "inchikey"]).to_pandas()
    loader = build_dataloader(wells, MoleculeFeaturizer(fingerprint_size=64), batch_size=3, train=True, seed=0,
                              bag_by="well", output="none")
    seen = []
    for epoch in range(2):
        loader.set_epoch(epoch)
        for batch in loader:
            sizes = batch["bag_sizes"].tolist()
            assert len(batch["fingerprints"]) == len(sizes) == len(set(batch["inchikey"])) == 3
            start = 0
            for size, inchikey in zip(sizes, batch["inchikey"]):
                keys = batch["sample_key"][start:start + size]
                rows = meta[meta.sample_key.isin(keys)]
                assert rows.well.nunique() == 1 and set(rows.inchikey) == {inchikey}
                assert sorted(keys) == sorted(meta[meta.well == rows.well.iloc[0]].sample_key)
                start += size
                seen.append(size)
    assert sorted(seen) == sorted(SIZES * 2)  # every bag once per epoch, whole


def test_molecule_dose_bags_never_put_one_molecule_twice_in_a_batch(wells):
    doses = [1.0 if s % 2 else 10.0 for s in wells["site"]]  # each molecule at two doses: two bags
    ds = wells.add_column("concentration", doses)
    bags, molecules = site_bags(ds, "molecule_dose")
    assert len(bags) == 17  # the molecule with one site has one dose
    sampler = BagBatchSampler(bags, molecules, batch_size=4, seed=0, drop_last=False, max_sites=3)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        for keys in sampler:
            bag_of = {}
            for row, _, position in keys:
                bag_of.setdefault(position, set()).add(molecules[next(b for b, rows in enumerate(bags)
                                                                      if row in rows)])
            assert all(len(m) == 1 for m in bag_of.values())
            batch_molecules = [next(iter(m)) for m in bag_of.values()]
            assert len(batch_molecules) == len(set(batch_molecules))
            assert max(np.bincount([p for _, _, p in keys])) <= 3  # max_sites
    with pytest.raises(ValueError, match="\\('SYN0001', 'A01'\\) \\(--bag_by well\\) holds sites of 9 molecule"):
        site_bags(wells.map(lambda r: {"well": "A01"}), "well")
    with pytest.raises(ValueError, match="needs the column\\(s\\) \\['concentration'\\]"):
        site_bags(wells, "molecule_dose")


def test_a_process_share_of_a_batch_of_bags_is_whole_bags_of_the_same_global_batch(wells):
    bags, molecules = site_bags(wells, "well")
    whole = BagBatchSampler(bags, molecules, batch_size=4, seed=3, max_sites=5)
    shares = [BagBatchSampler(bags, molecules, batch_size=4, seed=3, max_sites=5, num_slices=2, slice_index=i)
              for i in range(2)]
    for epoch in range(2):
        for sampler in (whole, *shares):
            sampler.set_epoch(epoch)
        batches = list(whole)
        assert len(batches) == len(shares[0]) == len(shares[1]) == 2
        for batch, first, second in zip(batches, *shares):
            assert [p for _, _, p in first][0] == [p for _, _, p in second][0] == 0  # bags numbered from 0
            assert max(p for _, _, p in first) == max(p for _, _, p in second) == 1  # two whole bags each
            # the same sites, seeds and drawn sites as the uncut batch, the second share's bags after the first's
            assert first + [(row, seed, p + 2) for row, seed, p in second] == batch
    with pytest.raises(ValueError, match="a batch of 3 cannot be cut into 2 equal slices; use a multiple of 2"):
        BagBatchSampler(bags, molecules, batch_size=3, num_slices=2, slice_index=0)


TRAIN_ARGS = ["--freeze_image_tower", "true", "--augment", "false", "--image_size", "32", "--molecule_hidden_size",
              "32", "--molecule_num_layers", "2", "--projection_dim", "16", "--fingerprint_size", "128",
              "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "16", "--max_steps", "3",
              "--logging_steps", "1", "--save_steps", "100", "--warmup_steps", "0", "--learning_rate", "1e-2",
              "--bag_by", "well", "--bag_pooling", "attention", "--validation_fraction", "0.3"]


def test_training_on_well_bags_of_cached_features_equals_running_the_frozen_tower(tiny_tower_folder, tmp_path,
                                                                                  one_thread, monkeypatch):
    from cloome_hf.cli import embed
    from cloome_hf.data.synthetic import make_synthetic_dataset
    from cloome_hf.train.loop import main as train

    ds = make_synthetic_dataset(num_molecules=16, sites_per_molecule=5, num_plates=2, image_size=40, seed=1)
    ds.save_to_disk(str(tmp_path / "sites"))
    common = ["--dataset", str(tmp_path / "sites"), "--backbone", tiny_tower_folder("dinov2"), *TRAIN_ARGS]
    pooled = []
    forward = BagPooling.forward
    monkeypatch.setattr(BagPooling, "forward", lambda self, x, sizes: pooled.append(sizes.tolist()) or forward(
        self, x, sizes))
    train(["--output_dir", str(tmp_path / "on-the-fly"), *common])
    store = tmp_path / "features"
    embed.main(["--model", str(tmp_path / "on-the-fly"), "--dataset", str(tmp_path / "sites"), "--output_dir",
                str(store), "--features", "backbone", "--batch_size", "16"])
    train(["--output_dir", str(tmp_path / "cached"), "--image_features", str(store), *common])

    def losses(name):
        with open(tmp_path / name / "train_log.jsonl") as f:
            return [r["loss"] for r in map(json.loads, f) if "loss" in r]

    assert len(pooled) == 6 and all(len(sizes) == 4 for sizes in pooled)  # 3 steps of 4 wells, each run
    assert pooled[:3] == pooled[3:] and max(max(sizes) for sizes in pooled) > 1  # the same bags, of several sites
    assert len(losses("cached")) == 3 and len(set(losses("cached"))) > 1
    torch.testing.assert_close(losses("cached"), losses("on-the-fly"))
    model = CloomeModel.from_pretrained(tmp_path / "cached")
    assert model.config.vision_config.bag_pooling == "attention"
    assert json.loads((tmp_path / "cached" / "training_config.json").read_text())["arguments"]["bag_by"] == "well"
