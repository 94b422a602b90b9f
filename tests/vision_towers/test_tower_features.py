"""Frozen towers and training on their cached features: the same training as running the tower on the fly."""

import json
import os

import pytest
import torch
from conftest import TINY_MOLECULE

from cloome_hf import CloomeConfig, CloomeModel
from cloome_hf.vision_towers.freezing import freeze_image_tower, tower_blocks

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def tower_model(folder, **vision):
    vision = dict(backbone=folder, image_size=[32, 32], **vision)
    return CloomeModel(CloomeConfig(vision_config=vision, molecule_config=dict(TINY_MOLECULE), projection_dim=16))


def test_frozen_tower_stays_in_eval_mode_and_only_its_last_blocks_train(tiny_tower_folder):
    model = tower_model(tiny_tower_folder("dinov2"), channel_strategy="per_channel")
    trainable = freeze_image_tower(model, unfreeze_last=1)
    tower = model.vision_model.tower
    last = tower_blocks(tower)[-1]
    assert trainable and all(name.startswith("model.encoder.layer.1.") for name in trainable)
    assert all(p.requires_grad for p in last.parameters())
    assert not any(p.requires_grad for p in tower_blocks(tower)[0].parameters())
    assert all(p.requires_grad for p in model.vision_model.channel_pooling.parameters())  # the pooling trains
    model.train()
    assert not tower.model.embeddings.training and last.training and model.vision_model.channel_pooling.training
    with pytest.raises(ValueError, match="has only 2 blocks"):
        freeze_image_tower(model, unfreeze_last=3)


TRAIN_ARGS = ["--channel_strategy", "per_channel", "--freeze_image_tower", "true", "--augment", "false", "--image_size",
              "32", "--molecule_hidden_size", "32", "--molecule_num_layers", "2", "--projection_dim", "16",
              "--fingerprint_size", "128", "--per_device_train_batch_size", "8", "--per_device_eval_batch_size",
              "16", "--max_steps", "4", "--logging_steps", "1", "--save_steps", "100", "--warmup_steps", "0",
              "--learning_rate", "1e-2"]


@pytest.fixture
def sites(tmp_path):
    from cloome_hf.data.synthetic import make_synthetic_dataset

    ds = make_synthetic_dataset(num_molecules=12, sites_per_molecule=2, num_plates=1, image_size=48, seed=0)
    ds.save_to_disk(str(tmp_path / "sites"))
    return str(tmp_path / "sites")


def losses(folder):
    with open(folder / "train_log.jsonl") as f:
        return [r["loss"] for r in map(json.loads, f) if "loss" in r]


def test_training_on_cached_features_equals_running_the_frozen_tower(tiny_tower_folder, sites, tmp_path,
                                                                     one_thread, monkeypatch, hub_cache):
    from cloome_hf.cli import embed
    from cloome_hf.train.loop import main as train
    from cloome_hf.vision_towers.features import CachedTowerFeatures

    tower = tiny_tower_folder("dinov2")
    common = ["--dataset", sites, "--backbone", tower, *TRAIN_ARGS]
    train(["--output_dir", str(tmp_path / "on-the-fly"), *common])
    store = tmp_path / "features"
    embed.main(["--model", str(tmp_path / "on-the-fly"), "--dataset", sites, "--output_dir", str(store),
                "--features", "backbone", "--batch_size", "5", "--shard_size", "10"])
    info = json.loads((store / "embedding_info.json").read_text())
    assert info["tower"]["feature_shape"] == [5, 32]  # per_channel: C x D per site
    reads = []
    lookup = CachedTowerFeatures.features
    monkeypatch.setattr(CachedTowerFeatures, "features", lambda self, keys: reads.append(keys) or lookup(self, keys))
    train(["--output_dir", str(tmp_path / "cached"), "--image_features", str(store), *common])
    assert len(reads) == 4  # every step read the cache (not the tower)
    expected, got = losses(tmp_path / "on-the-fly"), losses(tmp_path / "cached")
    assert len(got) == 4 and len(set(got)) > 1
    torch.testing.assert_close(got, expected)
    trained = [CloomeModel.from_pretrained(tmp_path / name).state_dict() for name in ("on-the-fly", "cached")]
    for key, value in trained[0].items():
        torch.testing.assert_close(trained[1][key], value, msg=key)

    # The store as a Hub dataset id (found in the cache) gives the same features, its Arrow copies beside the snapshot
    import datasets

    from cloome_hf.processing_cloome import load_model_and_processor

    snapshot = hub_cache("cloome-test/tower-features", store)
    model, processor = load_model_and_processor(str(tmp_path / "cached"))
    local = CachedTowerFeatures(store, model, processor.image_processor, cache_dir=tmp_path / "arrow")
    hub = CachedTowerFeatures("cloome-test/tower-features", model, processor.image_processor)
    keys = datasets.load_from_disk(sites)["sample_key"][::3]
    torch.testing.assert_close(hub.features(keys), local.features(keys))
    assert hub.store == str(snapshot)
    assert hub.table.arrow_files and all(not f.startswith(str(snapshot)) for f in hub.table.arrow_files)
    assert all(os.path.islink(f) for f in snapshot.rglob("*") if f.is_file())  # the download left as written


def test_feature_store_of_another_tower_is_refused_by_name(tiny_tower_folder, sites, tmp_path):
    from cloome_hf.cli import embed
    from cloome_hf.featurization_cloome import MoleculeFeaturizer
    from cloome_hf.processing_cloome import CloomeProcessor
    from cloome_hf.vision_towers import tower_image_processor
    from cloome_hf.vision_towers.features import CachedTowerFeatures

    vit, dino = tower_model(tiny_tower_folder("vit")), tower_model(tiny_tower_folder("dinov2"))
    vit.save_pretrained(tmp_path / "vit-model")

    CloomeProcessor(image_processor=tower_image_processor(vit.config.vision_config),
                    featurizer=MoleculeFeaturizer(fingerprint_size=64)).save_pretrained(tmp_path / "vit-model")
    store = tmp_path / "vit-features"
    embed.main(["--model", str(tmp_path / "vit-model"), "--dataset", sites, "--output_dir", str(store),
                "--features", "backbone"])
    cache = CachedTowerFeatures(store, vit, tower_image_processor(vit.config.vision_config))
    assert cache.table.arrow_files and all(f.endswith(".arrow") for f in cache.table.arrow_files)
    assert cache.features([cache.table.sorted_keys[0].decode()]).shape == (1, 32)
    with pytest.raises(ValueError, match="another tower or preprocessing \\(backbone, .*tower_weights differ"):
        CachedTowerFeatures(store, dino, tower_image_processor(dino.config.vision_config))
    other_crop = tower_image_processor(vit.config.vision_config, crop_size={"height": 24, "width": 24})
    with pytest.raises(ValueError, match="\\(processor differ"):
        CachedTowerFeatures(store, vit, other_crop)
    with pytest.raises(ValueError, match="no features for sample_key\\(s\\) \\['missing-site'\\]"):
        cache.features(["missing-site"])


def test_guard_copies_only_what_a_step_changes_and_still_undoes_a_bad_step(tiny_tower_folder):
    from cloome_hf.train.guard import NonFiniteGuard

    model = tower_model(tiny_tower_folder("dinov2"), channel_strategy="per_channel")
    freeze_image_tower(model)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    guard = NonFiniteGuard(model, optimizer, "cpu")
    trainable = [p for p in model.parameters() if p.requires_grad]
    params, _ = guard.snapshot_state()
    assert len(params) == len(trainable) < len(list(model.parameters()))  # the frozen tower is not copied
    before = [p.detach().clone() for p in model.parameters()]
    buffers = guard.snapshot_buffers()
    out = model(pixel_values=torch.rand(4, 5, 32, 32), fingerprints=torch.rand(4, 64), return_loss=True)
    out.loss.backward()
    guard.record(out.loss * float("nan"), None)  # a non-finite step: it must be undone
    state = guard.snapshot_state()
    optimizer.step()
    guard.undo_if_skipped(buffers, state)
    assert guard.read() == ("loss", 1)
    for old, new in zip(before, model.parameters()):
        assert torch.equal(old, new)
