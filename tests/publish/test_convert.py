"""Conversion of the published CLOOME checkpoints: key mapping, failure modes, Hub upload and numerical parity.

The parity reference (tests/upstream_checkpoint.py) is written from the upstream tensors with functional calls
only, following the upstream architecture description, so it shares no code with CloomeModel.
"""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import pytest
import torch
from upstream_checkpoint import (
    make_upstream_state_dict,
    reference_image_features,
    reference_molecule_features,
    without_module_prefix,
)

from cloome_hf.publish.convert import (
    ConversionError,
    convert_original_checkpoint,
    convert_state_dict,
    processor_settings,
    upload_files,
)

TOL = 1e-4  # max |delta| <= TOL * max |y|


def _assert_close(actual: torch.Tensor, expected: torch.Tensor) -> float:
    assert actual.shape == expected.shape
    scale = expected.abs().max().item()
    err = (actual - expected).abs().max().item()
    assert scale > 0 and err <= TOL * scale, f"max|delta|={err:.3g} > {TOL} * max|y|={scale:.3g}"
    return err / scale


def _convert_to_model(sd, recipe=None):
    from cloome_hf import CloomeModel

    config, state = convert_state_dict(sd, recipe)
    model = CloomeModel(config)
    model.load_state_dict(state, strict=True)
    return model.eval()


def _save(obj, path: Path) -> Path:
    torch.save(obj, path)
    return path


# --------------------------------------------------------------------------------------------------------------
# Parity
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [(520, 696), (256, 320)])
def test_image_parity_reduced_layers(size):
    sd = make_upstream_state_dict(layers=(2, 1, 1, 1), seed=1)
    model = _convert_to_model(sd)
    x = torch.randn(1 if size == (520, 696) else 2, 5, *size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        _assert_close(model.get_image_features(pixel_values=x).pooler_output, reference_image_features(sd, x))


@pytest.mark.parametrize("fingerprint_size", [1024, 8192])
def test_molecule_parity_both_fingerprint_sizes(fingerprint_size):
    sd = make_upstream_state_dict(fingerprint_size=fingerprint_size, hidden_size=256, seed=3)
    model = _convert_to_model(sd)
    assert model.config.molecule_config.fingerprint_size == fingerprint_size
    fp = (torch.rand(6, fingerprint_size, generator=torch.Generator().manual_seed(4)) < 0.05).float()
    with torch.no_grad():
        _assert_close(model.get_molecule_features(fingerprints=fp).pooler_output, reference_molecule_features(sd, fp))


def test_parity_published_architecture_full_size(tmp_path):
    """The published [3, 4, 6, 3] ResNet-50 + 4x1024 MLP on a full 520 x 696 site, through the file path."""
    sd = make_upstream_state_dict(layers=(3, 4, 6, 3), fingerprint_size=8192, hidden_size=1024, seed=5)
    ckpt = _save({"epoch": 70, "name": "fixture", "state_dict": sd, "optimizer": {}, "scheduler": None},
                 tmp_path / "cloome-retrieval-zero-shot.pt")
    out = convert_original_checkpoint(ckpt, tmp_path / "converted", recipe="retrieval")

    from cloome_hf import CloomeModel

    model = CloomeModel.from_pretrained(out).eval()
    assert model.config.vision_config.layers == [3, 4, 6, 3]
    assert model.config.molecule_config.hidden_size == 1024
    assert model.config.molecule_config.num_hidden_layers == 4
    x = torch.randn(1, 5, 520, 696, generator=torch.Generator().manual_seed(6))
    fp = (torch.rand(3, 8192, generator=torch.Generator().manual_seed(7)) < 0.02).float()
    with torch.no_grad():
        _assert_close(model.get_image_features(pixel_values=x).pooler_output, reference_image_features(sd, x))
        _assert_close(model.get_molecule_features(fingerprints=fp).pooler_output, reference_molecule_features(sd, fp))
    assert math.isclose(model.logit_scale.item(), sd["module.logit_inv_tau"].item(), rel_tol=0, abs_tol=1e-6)


# --------------------------------------------------------------------------------------------------------------
# Inference of the architecture and key handling
# --------------------------------------------------------------------------------------------------------------
def test_infers_layer_counts_sizes_and_logit_scale():
    sd = make_upstream_state_dict(layers=(1, 2, 1, 3), fingerprint_size=1024, hidden_size=48, molecule_layers=3,
                                  projection_dim=32, prefix="")
    config, state = convert_state_dict(sd)
    assert config.vision_config.layers == [1, 2, 1, 3]
    assert config.vision_config.num_channels == 5
    assert config.molecule_config.fingerprint_size == 1024
    assert config.molecule_config.hidden_size == 48
    assert config.molecule_config.num_hidden_layers == 3
    assert config.projection_dim == 32
    assert config.logit_scale_init_value == pytest.approx(float(sd["logit_inv_tau"]))
    # Spot-check the renaming against the plan's parameter names.
    assert torch.equal(state["vision_model.layer2.0.downsample.conv.weight"], sd["visual.layer2.0.downsample.0.weight"])
    assert torch.equal(state["vision_model.layer4.2.bn3.running_var"], sd["visual.layer4.2.bn3.running_var"])
    assert torch.equal(state["visual_projection.weight"], sd["visual.fc.weight"])
    assert torch.equal(state["molecule_model.layers.2.norm.running_mean"], sd["transformer.layers.2.1.running_mean"])
    assert torch.equal(state["molecule_projection.bias"], sd["transformer.layers.3.0.bias"])
    assert len(state) == len(sd)


def test_module_prefixed_and_bare_give_identical_weights():
    prefixed = make_upstream_state_dict(seed=8)
    bare = without_module_prefix(prefixed)
    assert all(k.startswith("module.") for k in prefixed) and not any(k.startswith("module.") for k in bare)
    _, a = convert_state_dict(prefixed)
    _, b = convert_state_dict(bare)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    both = {**prefixed, "visual.fc.bias": bare["visual.fc.bias"]}
    with pytest.raises(ConversionError, match="visual.fc.bias"):
        convert_state_dict(both)


def test_half_precision_checkpoint_is_cast_to_float32():
    sd = {k: (v.half() if v.is_floating_point() else v) for k, v in make_upstream_state_dict(seed=9).items()}
    _, state = convert_state_dict(sd)
    assert state["vision_model.conv1.weight"].dtype == torch.float32
    assert state["vision_model.bn1.num_batches_tracked"].dtype == torch.int64


@pytest.mark.parametrize("wrap", [True, False], ids=["dict-with-state_dict", "bare-state-dict"])
def test_checkpoint_file_layouts(tmp_path, wrap):
    sd = make_upstream_state_dict(seed=10, prefix="module." if wrap else "")
    obj = {"epoch": 1, "name": "x", "state_dict": sd, "optimizer": {"state": {}}, "scheduler": None} if wrap else sd
    out = convert_original_checkpoint(_save(obj, tmp_path / "c.pt"), tmp_path / "out")
    from safetensors.torch import load_file

    weights = load_file(out / "model.safetensors")
    assert torch.equal(weights["vision_model.layer3.0.conv2.weight"], sd[("module." if wrap else "") + "visual.layer3.0.conv2.weight"])


def test_missing_key_fails_naming_it():
    sd = make_upstream_state_dict(seed=11)
    del sd["module.visual.layer3.0.bn2.running_var"]
    with pytest.raises(ConversionError, match=r"vision_model\.layer3\.0\.bn2\.running_var"):
        convert_state_dict(sd)


def test_extra_key_fails_naming_it():
    sd = make_upstream_state_dict(seed=12)
    sd["module.visual.attnpool.positional_embedding"] = torch.zeros(3)
    sd["module.logit_scale_hopfield"] = torch.zeros(())
    with pytest.raises(ConversionError) as info:
        convert_state_dict(sd)
    assert "visual.attnpool.positional_embedding" in str(info.value)
    assert "logit_scale_hopfield" in str(info.value)


def test_shape_mismatch_fails_naming_the_key():
    sd = make_upstream_state_dict(seed=13)
    sd["module.visual.layer2.0.conv2.weight"] = torch.zeros(128, 128, 1, 1)
    with pytest.raises(ConversionError, match=r"visual\.layer2\.0\.conv2\.weight"):
        convert_state_dict(sd)


class _NotATensor:  # module level so that pickle can reference it
    def __init__(self):
        self.payload = "arbitrary object"


def test_pickle_with_non_tensor_object_is_refused(tmp_path):
    sd = make_upstream_state_dict(seed=14)
    path = _save({"state_dict": sd, "trainer": _NotATensor()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="weights_only") as info:
        convert_original_checkpoint(path, tmp_path / "out")
    assert isinstance(info.value.__cause__, pickle.UnpicklingError)
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------------------------
# Processor per recipe, written folder, Hub upload
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "recipe, weights_fp, kind, crop",
    [
        ("retrieval", 8192, "morgan_rdkit_max", (520, 696)),
        ("zero-shot", 8192, "morgan_rdkit_max", (520, 520)),
        ("bioactivity", 1024, "morgan", (520, 696)),
        ("retrieval", 1024, "morgan_rdkit_max", (520, 696)),  # the size always follows the weights
        (None, 8192, "morgan_rdkit_max", (520, 696)),
        (None, 1024, "morgan", (520, 696)),
    ],
)
def test_processor_settings_per_recipe(recipe, weights_fp, kind, crop):
    s = processor_settings(recipe, weights_fp)
    assert s["featurizer"] == {"kind": kind, "fingerprint_size": weights_fp}
    ip = s["image_processor"]
    assert ip["channel_order"] == ["Mito", "ERSyto", "ERSytoBleed", "Ph_golgi", "Hoechst"]
    assert ip["intensity_clip_fraction"] == 2.8e-5 and ip["intensity_scale"] == 256.0
    m = [47.1314, 40.8138, 53.7692, 46.2656, 28.7243]  # x / m - 1
    assert ip["do_normalize"] and ip["image_mean"] == m and ip["image_std"] == m
    assert ip["do_center_crop"] and ip["crop_size"] == {"height": crop[0], "width": crop[1]}


@pytest.mark.parametrize("recipe, fingerprint_size", [("bioactivity", 1024), ("zero-shot", 8192)])
def test_converted_folder_processor_round_trip(tmp_path, recipe, fingerprint_size):
    from cloome_hf import CloomeModel
    from cloome_hf.processing_cloome import CloomeProcessor

    sd = make_upstream_state_dict(fingerprint_size=fingerprint_size, seed=15)
    out = convert_original_checkpoint(_save({"state_dict": sd}, tmp_path / "c.pt"), tmp_path / "out", recipe=recipe)
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "README.md"} <= names
    assert json.loads((out / "config.json").read_text())["model_type"] == "cloome"
    proc = CloomeProcessor.from_pretrained(out)
    fz, ip = proc.featurizer, proc.image_processor
    assert fz.fingerprint_size == fingerprint_size
    assert fz.kind == processor_settings(recipe, fingerprint_size)["featurizer"]["kind"]
    assert ip.intensity_clip_fraction == 2.8e-5 and ip.intensity_scale == 256.0
    expected_crop = {"height": 520, "width": 520 if recipe == "zero-shot" else 696}
    assert ip.do_center_crop and dict(ip.crop_size) == expected_crop
    assert CloomeModel.from_pretrained(out).config.vision_config.image_size == [520, expected_crop["width"]]
    card = (out / "README.md").read_text()
    for tag in ("cell-painting", "microscopy", "contrastive-learning", "drug-discovery", "feature-extraction"):
        assert f"- {tag}" in card
    features = proc(smiles=["CCO", "c1ccccc1"], return_tensors="pt")["fingerprints"]
    assert features.shape == (2, fingerprint_size)


def test_the_old_preset_keyword_warns_and_converts_as_recipe_does(tmp_path):
    from cloome_hf.processing_cloome import CloomeProcessor

    checkpoint = _save({"state_dict": make_upstream_state_dict(seed=19)}, tmp_path / "c.pt")
    new = convert_original_checkpoint(checkpoint, tmp_path / "new" / "m", recipe="zero-shot")
    with pytest.warns(FutureWarning, match=r"convert_original_checkpoint\(preset=\.\.\.\) is now .*\(recipe=\.\.\.\)"):
        old = convert_original_checkpoint(checkpoint, tmp_path / "old" / "m", preset="zero-shot")
    assert dict(CloomeProcessor.from_pretrained(old).image_processor.crop_size) == {"height": 520, "width": 520}
    assert sorted(p.name for p in old.iterdir()) == sorted(p.name for p in new.iterdir())
    for name in ("README.md", "config.json", "processor_config.json", "model.safetensors"):
        assert (old / name).read_bytes() == (new / name).read_bytes(), name
    with pytest.raises(ValueError, match=r"both recipe='zero-shot' and preset='bioactivity'"):
        convert_original_checkpoint(checkpoint, tmp_path / "both", recipe="zero-shot", preset="bioactivity")
    assert not (tmp_path / "both").exists()
    with pytest.warns(FutureWarning, match=r"convert_state_dict\(preset=\.\.\.\)"):
        config, _ = convert_state_dict(make_upstream_state_dict(seed=19), preset="retrieval")
    assert config.loss == convert_state_dict(make_upstream_state_dict(seed=19), recipe="retrieval")[0].loss != \
        convert_state_dict(make_upstream_state_dict(seed=19))[0].loss


def test_the_old_name_of_the_checkpoint_recipes_is_importable():
    from cloome_hf.publish import convert

    assert convert.PRESETS == convert.CHECKPOINT_RECIPES == ("bioactivity", "retrieval", "zero-shot")
    assert "PRESETS" in convert.__all__ and "CHECKPOINT_RECIPES" in convert.__all__


class RecordingHfApi:
    """Stands in for huggingface_hub.HfApi at the network boundary and records what would be committed."""

    calls: list = []

    def __init__(self, *args, **kwargs):
        pass

    def create_repo(self, repo_id, **kwargs):
        RecordingHfApi.calls.append(("create_repo", repo_id, kwargs))

    def create_commit(self, *, repo_id, operations, **kwargs):
        contents = {op.path_in_repo: Path(op.path_or_fileobj).read_bytes() for op in operations}
        RecordingHfApi.calls.append(("create_commit", repo_id, {**kwargs, "files": sorted(contents),
                                                                "contents": contents}))


def test_push_to_hub_commits_exact_files(tmp_path, monkeypatch):
    import huggingface_hub

    RecordingHfApi.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingHfApi)
    sd = make_upstream_state_dict(fingerprint_size=1024, seed=16)
    out = convert_original_checkpoint(_save({"state_dict": sd}, tmp_path / "cloome-bioactivity.pt"), tmp_path / "out",
                                      recipe="bioactivity", push_to_hub="someone/cloome-bioactivity-hf")
    (kind0, repo0, kw0), (kind1, repo1, kw1) = RecordingHfApi.calls
    assert (kind0, repo0, kw0["repo_type"], kw0["exist_ok"]) == ("create_repo", "someone/cloome-bioactivity-hf", "model", True)
    assert (kind1, repo1, kw1["repo_type"]) == ("create_commit", "someone/cloome-bioactivity-hf", "model")
    local = sorted(p.name for p in out.iterdir())
    assert kw1["files"] == local
    assert {"README.md", "config.json", "model.safetensors", "processor_config.json"} <= set(kw1["files"])
    assert kw1["contents"]["model.safetensors"] == (out / "model.safetensors").read_bytes()
    assert "someone/cloome-bioactivity-hf" in kw1["contents"]["README.md"].decode()


def test_upload_files_commits_only_the_given_files(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    (tmp_path / ".env").write_text("HF_TOKEN=hf_secret")
    RecordingHfApi.calls = []
    upload_files(tmp_path, ["a.txt"], "org/repo", "msg", api=RecordingHfApi())
    assert [c[0] for c in RecordingHfApi.calls] == ["create_repo", "create_commit"]
    assert RecordingHfApi.calls[1][2]["files"] == ["a.txt"] and RecordingHfApi.calls[1][2]["commit_message"] == "msg"


def test_command_help_and_run(tmp_path, capsys):
    from cloome_hf.cli.convert import main

    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0 and "--checkpoint_path" in capsys.readouterr().out
    sd = make_upstream_state_dict(seed=17)
    out = main(["--checkpoint_path", str(_save(sd, tmp_path / "c.pt")), "--output_dir", str(tmp_path / "o"),
                "--recipe", "bioactivity"])
    assert (Path(out) / "model.safetensors").is_file()


def test_converted_folder_is_what_the_model_folder_writer_writes(tmp_path):
    """convert writes through cloome_hf.publish.model_folder: the same model and card settings give the same files."""
    from cloome_hf.processing_cloome import load_model_and_processor
    from cloome_hf.publish.model_folder import write_model_folder

    sd = make_upstream_state_dict(fingerprint_size=1024, seed=18)
    out = tmp_path / "out"
    out.mkdir()
    (out / "training_config.json").write_text("{}")  # an earlier trained model's: not this conversion's
    convert_original_checkpoint(_save({"state_dict": sd}, tmp_path / "cloome-bioactivity.pt"), out, recipe="bioactivity")
    assert not (out / "training_config.json").exists()
    model, processor = load_model_and_processor(out)
    again = write_model_folder(tmp_path / "again", model, processor, model_id="out", source="converted",
                               recipe="bioactivity", checkpoint="cloome-bioactivity.pt")
    assert sorted(again) == sorted(p.name for p in out.iterdir())
    for name in ("README.md", "processor_config.json", "model.safetensors"):  # config.json gains a dtype on loading
        assert (tmp_path / "again" / name).read_bytes() == (out / name).read_bytes(), name
