"""Training recipe pieces: optimiser groups, schedule, recipes, config files, sampler, non-finite stop."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_ARGS, load_train_script, read_log

ROOT = Path(__file__).resolve().parents[2]


def reference_lr(t, base, warmup, total, period):
    """Independent closed form: lr of the optimiser step taken after t scheduler steps."""
    if t < warmup:
        return base * t / warmup
    if t >= total:
        return 0.0
    return base * 0.5 * (1 + math.cos(math.pi * (((t - warmup) % period) / period)))


def test_weight_decay_only_on_matrices(tiny_config):
    from cloome_hf import CloomeModel
    from cloome_hf.train.optim import build_optimizer

    model = CloomeModel(tiny_config)
    opt = build_optimizer(model, learning_rate=0.1, weight_decay=0.5)
    decay_of = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    names = dict(model.named_parameters())
    assert decay_of[id(names["logit_scale"])] == 0.0
    assert decay_of[id(names["visual_projection.bias"])] == 0.0
    assert decay_of[id(names["vision_model.bn1.weight"])] == 0.0
    assert decay_of[id(names["molecule_model.layers.0.norm.weight"])] == 0.0
    assert decay_of[id(names["vision_model.conv1.weight"])] == 0.5
    assert decay_of[id(names["molecule_projection.weight"])] == 0.5
    assert set(decay_of) == {id(p) for p in model.parameters()}
    # Decoupled decay, seen in the update itself: with zero gradients AdamW only shrinks decayed weights.
    before = {n: p.detach().clone() for n, p in names.items()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    torch.testing.assert_close(names["vision_model.conv1.weight"], before["vision_model.conv1.weight"] * (1 - 0.1 * 0.5))
    torch.testing.assert_close(names["logit_scale"], before["logit_scale"])
    torch.testing.assert_close(names["visual_projection.bias"], before["visual_projection.bias"])


@pytest.mark.parametrize("restart_epochs", [0, 2])
def test_lr_schedule_matches_closed_form(restart_epochs):
    from cloome_hf.train.optim import build_optimizer, build_scheduler

    model = torch.nn.Linear(3, 2)
    base, warmup, per_epoch, total = 0.01, 5, 4, 30
    opt = build_optimizer(model, base, 0.1)
    sched = build_scheduler(opt, total, warmup, per_epoch, restart_epochs)
    period = restart_epochs * per_epoch if restart_epochs else total - warmup
    seen = []
    for t in range(total):
        seen.append(opt.param_groups[0]["lr"])
        assert opt.param_groups[1]["lr"] == seen[-1]  # both groups follow the schedule
        opt.step()
        sched.step()
    expected = [reference_lr(t, base, warmup, total, period) for t in range(total)]
    np.testing.assert_allclose(seen, expected, rtol=1e-12, atol=1e-15)
    assert seen[warmup] == pytest.approx(base)
    if restart_epochs:  # a hard restart: back to the peak right after each cycle of 2 epochs
        assert seen[warmup + period] == pytest.approx(base) and seen[warmup + period - 1] < 0.05 * base


def test_sampler_is_deterministic_disjoint_and_molecule_unique():
    from cloome_hf.data import UniqueMoleculeBatchSampler

    molecules = np.repeat(np.arange(30), 4)
    sampler = UniqueMoleculeBatchSampler(molecules, 16, seed=3, augmentation_seeds=True)
    epoch0 = [list(b) for b in sampler]
    sampler.set_epoch(1)
    epoch1 = [list(b) for b in sampler]
    again = UniqueMoleculeBatchSampler(molecules, 16, seed=3, augmentation_seeds=True)
    assert [list(b) for b in again] == epoch0 and epoch0 != epoch1
    rows = [r for b in epoch0 for r, _ in b]
    assert len(rows) == len(set(rows)) and len(epoch0) == len(molecules) // 16
    for batch in epoch0 + epoch1:
        assert len({molecules[r] for r, _ in batch}) == 16  # no false negatives in a batch
    seeds0 = {r: s for b in epoch0 for r, s in b}
    seeds1 = {r: s for b in epoch1 for r, s in b}
    assert seeds0 != {r: seeds1.get(r) for r in seeds0}  # a site's augmentation seed changes with the epoch
    with pytest.raises(ValueError, match="distinct molecules"):
        UniqueMoleculeBatchSampler([0, 0, 1, 1, 2, 2, 2, 2], 4, seed=0)


def test_help_lists_every_argument_with_defaults(capsys):
    script = load_train_script()
    with pytest.raises(SystemExit):
        script.main(["--help"])
    text = capsys.readouterr().out
    for arg in ("--dataset", "--output_dir", "--recipe", "--loss", "--per_device_train_batch_size", "--learning_rate",
                "--weight_decay", "--num_train_epochs", "--max_steps", "--warmup_steps", "--image_size",
                "--mixed_precision", "--gradient_checkpointing", "--seed", "--eval_steps", "--save_steps",
                "--resume_from_checkpoint", "--report_to", "--config", "--sync_batchnorm", "--torch_compile"):
        assert arg in text, arg
    flat = " ".join(text.split())  # argparse wraps help lines
    assert "from --recipe" in flat and "(default: synthetic)" in flat, flat


def test_config_file_then_cli_override(tmp_path):
    import yaml

    script = load_train_script()
    cfg = tmp_path / "train.yaml"
    cfg.write_text(yaml.safe_dump({"output_dir": "runs/x", "preset": "retrieval", "learning_rate": 1e-4,
                                   "max_steps": 7}))
    model_args, data_args, train_args, used = script.parse_args(["--config", str(cfg), "--max_steps", "9"])
    assert train_args.learning_rate == 1e-4 and train_args.max_steps == 9 and train_args.output_dir == "runs/x"
    # unset values come from the paper's retrieval recipe
    assert model_args.loss == "infonce" and model_args.init_inverse_temperature == 14.3
    assert model_args.fingerprint_kind == "morgan_rdkit_max" and model_args.fingerprint_size == 8192
    assert data_args.image_size == [520, 520] and train_args.warmup_steps == 20000 and train_args.restart_epochs == 7
    assert train_args.weight_decay == 0.1 and train_args.per_device_train_batch_size == 256
    assert "learning_rate" not in used and used["loss"] == "infonce"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"output_dir": "x", "learning_rat": 1.0}))
    with pytest.raises(ValueError, match="learning_rat"):
        script.parse_args(["--config", str(bad)])


def test_bioactivity_recipe_reaches_model_optimizer_and_schedule(tmp_path, one_thread):
    script = load_train_script()
    out = tmp_path / "bio"
    script.main(["--output_dir", str(out), "--recipe", "bioactivity", *TINY_ARGS, "--vision_layers", "1", "1", "1", "1",
                 "--head_pool_size", "2", "--molecule_num_layers", "2", "--image_size", "64", "--max_steps", "4",
                 "--logging_steps", "1", "--save_steps", "4"])
    config = json.loads((out / "config.json").read_text())
    assert config["loss"] == "infoloob" and config["hopfield_beta"] == 22.0
    assert config["logit_scale_init_value"] == pytest.approx(math.log(30.0))
    processor = json.loads((out / "processor_config.json").read_text())
    assert processor["featurizer"]["kind"] == "morgan"
    lrs = [r["lr"] for r in read_log(out) if "lr" in r]
    # 20,000 warm-up steps at peak 5e-4: the t-th step uses 5e-4 * t / 20000
    np.testing.assert_allclose(lrs, [reference_lr(t, 5e-4, 20000, 4, 4) for t in range(4)], rtol=1e-9)
    optimizer = torch.load(out / "checkpoints" / "checkpoint-4" / "optimizer.pt", weights_only=True)
    assert [g["weight_decay"] for g in optimizer["param_groups"]] == [0.1, 0.0]
    assert [g["betas"] for g in optimizer["param_groups"]][0] == (0.9, 0.999)


def test_non_finite_loss_saves_last_good_state_and_names_step(tmp_path, one_thread):
    from cloome_hf.train import TrainingStopped

    script = load_train_script()
    out = tmp_path / "nan"
    # An absurd learning rate blows the weights up after the first update.
    with pytest.raises(TrainingStopped, match=r"non-finite \w+ at step (\d+)") as err:
        script.main(["--output_dir", str(out), *TINY_ARGS, "--learning_rate", "1e30", "--warmup_steps", "0",
                     "--max_steps", "6", "--save_steps", "100"])
    bad_step = int(err.value.args[0].split("at step ")[1].split(";")[0])
    assert bad_step >= 2
    good = out / "checkpoints" / f"checkpoint-{bad_step - 1}"
    assert str(good) in str(err.value)
    from safetensors.torch import load_file

    weights = load_file(good / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values())


E2E_ARGS = ["--synthetic_molecules", "480", "--base_width", "8", "--molecule_hidden_size", "128", "--projection_dim",
            "32", "--num_train_epochs", "6", "--per_device_eval_batch_size", "64"]


@pytest.fixture(scope="module")
def trained_demo(tmp_path_factory):
    """The embedded default (synthetic data, demo recipe), shrunk to ~1 CPU-minute."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("demo")
    try:
        result = load_train_script().main(["--output_dir", str(out), *E2E_ARGS])
    finally:
        torch.set_num_threads(threads)
    return out, result


def test_embedded_default_training_learns(trained_demo):
    out, result = trained_demo
    metrics, random = result["metrics"], result["random_baseline"]
    for direction in ("image_to_molecule", "molecule_to_image"):
        top1 = metrics[f"eval/{direction}_top1"]
        assert top1 >= 5 * random[f"{direction}_top1"], (direction, top1, random[f"{direction}_top1"])
    losses = [r["loss"] for r in read_log(out) if "loss" in r]
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3])
    saved = json.loads((out / "all_results.json").read_text())
    assert saved["eval/image_to_molecule_top1"] == metrics["eval/image_to_molecule_top1"]
    card = (out / "README.md").read_text()
    assert "image_to_molecule_top1" in card and "learning_rate" in card
    assert (out / "best" / "model.safetensors").exists() and (out / "best" / "processor_config.json").exists()


def test_from_pretrained_output_reproduces_validation_embeddings(trained_demo):
    from cloome_hf import CloomeModel
    from cloome_hf.data.schema import decode_row
    from cloome_hf.processing_cloome import CloomeProcessor

    out, result = trained_demo
    script = load_train_script()
    model_args, data_args, train_args, _ = script.parse_args(["--output_dir", str(out), *E2E_ARGS])
    from cloome_hf.featurization_cloome import MoleculeFeaturizer
    from cloome_hf.train.data import load_training_data

    val = load_training_data(data_args, MoleculeFeaturizer(), print).validation
    model = CloomeModel.from_pretrained(out).eval()
    processor = CloomeProcessor.from_pretrained(out)
    sites = np.stack([decode_row(val[i]) for i in range(len(val))])
    inputs = processor(images=sites, smiles=list(val["smiles"]), return_tensors="pt")
    normalize = torch.nn.functional.normalize
    with torch.no_grad():
        images = normalize(model.get_image_features(inputs["pixel_values"]).pooler_output, dim=-1).numpy()
        molecules = normalize(model.get_molecule_features(inputs["fingerprints"]).pooler_output, dim=-1).numpy()
    np.testing.assert_allclose(images, result["validation_image_embeds"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(molecules, result["validation_molecule_embeds"], rtol=1e-4, atol=1e-5)


def test_random_baseline_matches_closed_form_for_replicates():
    from cloome_hf.evaluation.retrieval import retrieval_accuracy
    from cloome_hf.evaluation.stats import random_retrieval_baseline

    groups = np.repeat(np.arange(50), 2)  # 50 molecules x 2 sites
    base = random_retrieval_baseline(groups)
    # image -> molecule: the true molecule's rank among 50 (2 rows each); top-k needs <= (k-1)//2 molecules above
    for k in (1, 5, 10):
        assert base[f"image_to_molecule_top{k}"] == pytest.approx(((k - 1) // 2 + 1) / 50, abs=0.004)
        assert base[f"molecule_to_image_top{k}"] == pytest.approx(k / 99)  # 98 competitors + the match
    # and it is the level random embeddings reach under the metric used in training
    rng = np.random.default_rng(1)
    trials = [retrieval_accuracy(rng.standard_normal((100, 8)), rng.standard_normal((50, 8))[groups], groups=groups)
              for _ in range(200)]
    for key in ("image_to_molecule_top5", "molecule_to_image_top10"):
        assert np.mean([t[key] for t in trials]) == pytest.approx(base[key], abs=0.01)


def test_torch_compile_trains_like_eager_and_saves_plain_weights(tmp_path, one_thread):
    from safetensors.torch import load_file

    losses, keys = {}, {}
    for name, extra in [("eager", []), ("compiled", ["--torch_compile"])]:
        out = tmp_path / name
        load_train_script().main(["--output_dir", str(out), *TINY_ARGS, "--vision_layers", "1", "1", "1", "1",
                                  "--max_steps", "3", "--logging_steps", "1", "--save_steps", "3", *extra])
        losses[name] = [r["loss"] for r in read_log(out) if "loss" in r]
        keys[name] = sorted(load_file(out / "model.safetensors"))
    assert len(losses["eager"]) == 3
    np.testing.assert_allclose(losses["compiled"], losses["eager"], rtol=1e-3)
    assert keys["compiled"] == keys["eager"]  # no "_orig_mod." prefixes from the compiled wrapper
