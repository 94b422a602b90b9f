"""CloomeModel: shapes, the published head, v5 outputs, save/load, Auto classes, errors, precision and memory options."""

import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModel
from transformers.modeling_outputs import BaseModelOutputWithPooling

from cloome_hf import CloomeConfig, CloomeModel, example_site
from cloome_hf.modeling_cloome import cloome_head_pool, resnet_min_input_size


def batch(config, n=4, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, config.vision_config.num_channels, size, size, generator=g)
    fingerprints = (torch.rand(n, config.molecule_config.fingerprint_size, generator=g) > 0.7).float()
    return images, fingerprints


def test_feature_shapes_and_normalised_outputs(tiny_config):
    model = CloomeModel(tiny_config).eval()
    images, fingerprints = batch(tiny_config, n=3)
    image_features = model.get_image_features(images).pooler_output
    molecule_features = model.get_molecule_features(fingerprints).pooler_output
    assert image_features.shape == (3, 16) and image_features.dtype == torch.float32
    assert molecule_features.shape == (3, 16)
    # Features are projected but not normalised; forward normalises them.
    assert not torch.allclose(image_features.norm(dim=-1), torch.ones(3))
    out = model(pixel_values=images, fingerprints=fingerprints[:2])
    torch.testing.assert_close(out.image_embeds, F.normalize(image_features, dim=-1))
    torch.testing.assert_close(out.molecule_embeds, F.normalize(molecule_features[:2], dim=-1))
    assert out.logits_per_image.shape == (3, 2)
    expected_logits = model.logit_scale.exp() * out.image_embeds @ out.molecule_embeds.T
    torch.testing.assert_close(out.logits_per_image, expected_logits)
    torch.testing.assert_close(out.logits_per_molecule, expected_logits.T)
    assert out.loss is None


def test_head_pool_is_centre_weighted_not_global_average():
    feature_map = torch.arange(2 * 3 * 9 * 9, dtype=torch.float64).reshape(2, 3, 9, 9).sin()
    window = 7
    # Explicit: average every 7x7 window (stride 1), then average the windows.
    windows = [
        feature_map[:, :, r : r + window, c : c + window].mean(dim=(2, 3))
        for r in range(9 - window + 1)
        for c in range(9 - window + 1)
    ]
    expected = torch.stack(windows).mean(0)
    torch.testing.assert_close(cloome_head_pool(feature_map, window), expected)
    assert not torch.allclose(cloome_head_pool(feature_map, window), feature_map.mean(dim=(2, 3)))
    # A 7x7 map is a single window: plain average.
    small = feature_map[:, :, :7, :7]
    torch.testing.assert_close(cloome_head_pool(small, window), small.mean(dim=(2, 3)))


def test_resnet_uses_the_head_on_its_last_feature_map(tiny_config):
    model = CloomeModel(tiny_config).eval()
    images, _ = batch(tiny_config, n=2, size=96)
    trunk = model.vision_model
    captured = {}
    trunk.layer4.register_forward_hook(lambda module, inputs, output: captured.setdefault("map", output))
    pooled = trunk(images).pooler_output
    assert captured["map"].shape[-2:] == (3, 3)
    torch.testing.assert_close(pooled, cloome_head_pool(captured["map"], 2))


def test_published_architecture_shapes():
    config = CloomeConfig()
    model = CloomeModel(config)
    names = dict(model.named_parameters())
    assert names["vision_model.conv1.weight"].shape == (64, 5, 7, 7)
    assert names["vision_model.layer1.0.downsample.conv.weight"].shape == (256, 64, 1, 1)
    assert names["vision_model.layer4.2.conv3.weight"].shape == (2048, 512, 1, 1)
    assert names["visual_projection.weight"].shape == (512, 2048)
    assert names["molecule_model.layers.0.dense.weight"].shape == (1024, 1024)
    assert names["molecule_projection.weight"].shape == (512, 1024)
    assert [len(getattr(model.vision_model, f"layer{i}")) for i in range(1, 5)] == [3, 4, 6, 3]
    # No strided convolution anywhere except the stem: average pools downsample.
    strided = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d) and m.stride != (1, 1)]
    assert strided == ["vision_model.conv1"]
    assert model.logit_scale.item() == pytest.approx(math.log(14.3))
    with torch.no_grad():
        features = model.eval().get_image_features(torch.randn(1, 5, 224, 224)).pooler_output
    assert features.shape == (1, 512)


def test_too_small_images_name_the_minimum(tiny_config):
    model = CloomeModel(tiny_config)
    minimum = resnet_min_input_size(2)
    with pytest.raises(ValueError, match=f"at least {minimum}x{minimum}"):
        model.get_image_features(torch.randn(2, 5, minimum - 8, 64))
    assert resnet_min_input_size(7) == 221


def test_wrong_shapes_give_clear_errors(tiny_config):
    model = CloomeModel(tiny_config)
    with pytest.raises(ValueError, match=r"\(batch, 5, height, width\), got \(2, 3, 64, 64\)"):
        model.get_image_features(torch.randn(2, 3, 64, 64))
    with pytest.raises(ValueError, match=r"\(batch, 64\), got \(2, 1024\)"):
        model.get_molecule_features(torch.rand(2, 1024))
    images, fingerprints = batch(tiny_config, n=1)
    with pytest.raises(ValueError, match="batch of 1"):
        model.train()(pixel_values=images, fingerprints=fingerprints, return_loss=True)
    with pytest.raises(ValueError, match="floating-point tensor, got torch.uint8"):
        model.get_image_features(torch.zeros(2, 5, 64, 64, dtype=torch.uint8))
    with pytest.raises(ValueError, match="3 images and 2 molecules"):
        images, fingerprints = batch(tiny_config, n=3)
        model(pixel_values=images, fingerprints=fingerprints[:2], return_loss=True)


def test_save_load_identical_and_automodel(tiny_config, tmp_path):
    model = CloomeModel(tiny_config)
    images, fingerprints = batch(tiny_config)
    model.train()(pixel_values=images, fingerprints=fingerprints)  # move BatchNorm running stats off init
    model.eval()
    with torch.no_grad():
        model.logit_scale.fill_(3.0)
        expected = model(pixel_values=images, fingerprints=fingerprints)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    for loaded in [CloomeModel.from_pretrained(tmp_path), AutoModel.from_pretrained(tmp_path)]:
        assert isinstance(loaded, CloomeModel)
        with torch.no_grad():
            got = loaded.eval()(pixel_values=images, fingerprints=fingerprints)
        torch.testing.assert_close(got.image_embeds, expected.image_embeds, rtol=0, atol=0)
        torch.testing.assert_close(got.molecule_embeds, expected.molecule_embeds, rtol=0, atol=0)
        torch.testing.assert_close(got.logits_per_image, expected.logits_per_image, rtol=0, atol=0)
    reloaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(reloaded, CloomeConfig)
    assert reloaded.vision_config.to_dict() == tiny_config.vision_config.to_dict()
    assert reloaded.molecule_config.to_dict() == tiny_config.molecule_config.to_dict()
    assert (reloaded.projection_dim, reloaded.loss) == (tiny_config.projection_dim, tiny_config.loss)


def test_saved_folder_loads_with_remote_code_without_the_package(tiny_config, tmp_path):
    model = CloomeModel(tiny_config).eval()
    model.save_pretrained(tmp_path)
    images, _ = batch(tiny_config, n=2)
    torch.save(images, tmp_path / "images.pt")
    with torch.no_grad():
        expected = model.get_image_features(images).pooler_output
    code = (
        "import sys; sys.modules['cloome_hf'] = None\n"  # make the installed package unimportable
        "import torch; from transformers import AutoModel\n"
        f"m = AutoModel.from_pretrained({str(tmp_path)!r}, trust_remote_code=True).eval()\n"
        "assert 'cloome_hf' not in type(m).__module__, type(m).__module__\n"
        f"x = torch.load({str(tmp_path / 'images.pt')!r}, weights_only=True)\n"
        f"torch.save(m.get_image_features(x).pooler_output.detach(), {str(tmp_path / 'out.pt')!r})\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    torch.testing.assert_close(torch.load(tmp_path / "out.pt", weights_only=True), expected)


def test_logit_scale_clamp_and_fixed_scale(tiny_config):
    model = CloomeModel(tiny_config)
    with torch.no_grad():
        model.logit_scale.fill_(7.0)
    model.clamp_logit_scale()
    assert model.logit_scale.item() == pytest.approx(math.log(100.0))
    with torch.no_grad():
        model.logit_scale.fill_(-1.0)
    model.clamp_logit_scale()
    assert model.logit_scale.item() == 0.0
    tiny_config.learnable_logit_scale = False
    assert not CloomeModel(tiny_config).logit_scale.requires_grad


def test_gradient_checkpointing_gives_the_same_gradients(tiny_config):
    images, fingerprints = batch(tiny_config)
    grads = []
    for checkpointing in [False, True]:
        torch.manual_seed(0)
        model = CloomeModel(tiny_config).train()
        if checkpointing:
            model.activation_checkpointing_enable()
            assert model.vision_model.layer1[0].gradient_checkpointing
        model(pixel_values=images, fingerprints=fingerprints, return_loss=True).loss.backward()
        grads.append(model.vision_model.conv1.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


def test_bf16_autocast_and_channels_last_agree_with_fp32(tiny_config):
    model = CloomeModel(tiny_config).eval()
    images, fingerprints = batch(tiny_config)
    with torch.no_grad():
        reference = model.get_image_features(images).pooler_output
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = model.get_image_features(images).pooler_output
            loss = model(pixel_values=images, fingerprints=fingerprints, return_loss=True).loss
        model_cl = model.to(memory_format=torch.channels_last)
        channels_last = model_cl.get_image_features(images.contiguous(memory_format=torch.channels_last)).pooler_output
    assert bf16.dtype == torch.bfloat16 and torch.isfinite(loss)
    scale = reference.abs().max()
    assert (bf16.float() - reference).abs().max() < 0.05 * scale
    torch.testing.assert_close(channels_last, reference, rtol=1e-4, atol=1e-5 * scale.item())


def test_timm_backbone(tiny_config):
    tiny_config.vision_config.backbone = "test_resnet"
    model = CloomeModel(tiny_config).eval()
    images, fingerprints = batch(tiny_config, n=2)
    assert model.vision_model.model.default_cfg["architecture"] == "test_resnet"
    first_conv = next(m for m in model.vision_model.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert first_conv.in_channels == 5
    out = model(pixel_values=images, fingerprints=fingerprints)
    assert out.image_embeds.shape == (2, 16)
    assert model.visual_projection.in_features == model.vision_model.num_features


def record_outputs(modules):
    """Forward hooks that keep every module's output, in call order."""
    seen = []
    handles = [m.register_forward_hook(lambda module, inputs, output: seen.append(output)) for m in modules]
    return seen, handles


def test_features_are_base_model_outputs_with_the_tower_states(tiny_config):
    model = CloomeModel(tiny_config).eval()
    images, fingerprints = batch(tiny_config, n=3)
    trunk, mlp = model.vision_model, model.molecule_model
    seen, handles = record_outputs([trunk.maxpool, trunk.layer1, trunk.layer2, trunk.layer3, trunk.layer4, *mlp.layers])
    with torch.no_grad():
        image = model.get_image_features(images, output_hidden_states=True)
        molecule = model.get_molecule_features(fingerprints, output_hidden_states=True)
    for handle in handles:
        handle.remove()
    assert isinstance(image, BaseModelOutputWithPooling) and isinstance(molecule, BaseModelOutputWithPooling)
    stem_and_stages, blocks = seen[:5], seen[5:]
    assert len(image.hidden_states) == 5 and len(molecule.hidden_states) == 1 + len(mlp.layers)
    for got, expected in zip(image.hidden_states, stem_and_stages):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    torch.testing.assert_close(image.last_hidden_state, stem_and_stages[-1], rtol=0, atol=0)
    pooled = F.avg_pool2d(stem_and_stages[-1], 2, stride=1).mean(dim=(2, 3))
    torch.testing.assert_close(image.pooler_output, pooled @ model.visual_projection.weight.T + model.visual_projection.bias)
    torch.testing.assert_close(molecule.hidden_states[0], fingerprints, rtol=0, atol=0)
    for got, expected in zip(molecule.hidden_states[1:], blocks):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    projection = model.molecule_projection
    torch.testing.assert_close(molecule.pooler_output, blocks[-1] @ projection.weight.T + projection.bias)
    # Without the flag, and in forward, the same towers come back (hidden states only on request).
    out = model(pixel_values=images, fingerprints=fingerprints, output_hidden_states=True)
    assert out.vision_model_output.hidden_states is not None and out.molecule_model_output.hidden_states is not None
    torch.testing.assert_close(out.image_embeds, F.normalize(image.pooler_output, dim=-1))
    assert model.get_image_features(images).hidden_states is None
    assert model(pixel_values=images).vision_model_output.hidden_states is None


def test_return_dict_false_gives_tuples_in_field_order(tiny_config):
    model = CloomeModel(tiny_config).eval()
    images, fingerprints = batch(tiny_config)
    with torch.no_grad():
        as_dict = model(pixel_values=images, fingerprints=fingerprints, return_loss=True)
        as_tuple = model(pixel_values=images, fingerprints=fingerprints, return_loss=True, return_dict=False)
    assert isinstance(as_tuple, tuple)
    names = ["loss", "logits_per_image", "logits_per_molecule", "image_embeds", "molecule_embeds"]
    for value, name in zip(as_tuple[:5], names):
        torch.testing.assert_close(value, getattr(as_dict, name), rtol=0, atol=0)
    vision_tuple, molecule_tuple = as_tuple[5:]
    assert isinstance(vision_tuple, tuple) and isinstance(molecule_tuple, tuple)
    torch.testing.assert_close(vision_tuple[0], as_dict.vision_model_output.last_hidden_state, rtol=0, atol=0)
    torch.testing.assert_close(vision_tuple[1], as_dict.vision_model_output.pooler_output, rtol=0, atol=0)
    # The config's return_dict counts too, and a call's return_dict overrides it.
    tiny_config.return_dict = False
    model_no_dict = CloomeModel(tiny_config).eval()
    features = model_no_dict.get_image_features(images)
    assert isinstance(features, tuple) and features[1].shape == (4, tiny_config.projection_dim)
    assert isinstance(model_no_dict(pixel_values=images), tuple)
    assert isinstance(model_no_dict(pixel_values=images, return_dict=True).image_embeds, torch.Tensor)


def test_unknown_keyword_arguments_are_refused(tiny_config):
    model = CloomeModel(tiny_config).eval()
    images, fingerprints = batch(tiny_config, n=2)
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) \['fingerprint'\]"):
        model(pixel_values=images, fingerprint=fingerprints)
    with pytest.raises(TypeError, match="'interpolate_pos_encoding'"):
        model.get_image_features(images, interpolate_pos_encoding=True)
    with pytest.raises(ValueError, match="no attention layers"):
        model(pixel_values=images, output_attentions=True)


def test_a_single_pair_has_an_infonce_loss_but_no_infoloob_loss(tiny_config):
    images, fingerprints = batch(tiny_config, n=1)
    model = CloomeModel(tiny_config).eval()
    out = model(pixel_values=images, fingerprints=fingerprints, return_loss=True)
    logit = out.logits_per_image.item()
    # Each direction's cross-entropy over the one candidate: -log(exp(l) / exp(l)).
    expected = 0.5 * 2 * -(logit - math.log(math.exp(logit)))
    assert out.loss.item() == pytest.approx(expected, abs=1e-6)
    tiny_config.loss = "infoloob"
    with pytest.raises(ValueError, match="at least 2 pairs"):
        CloomeModel(tiny_config).eval()(pixel_values=images, fingerprints=fingerprints, return_loss=True)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_from_pretrained_runs_on_processor_inputs(tiny_config, tmp_path, dtype):
    from cloome_hf import CloomeProcessor, MoleculeFeaturizer
    from cloome_hf.channels import CHANNELS
    from cloome_hf.image_processing_cloome import CloomeImageProcessor

    site = {c: example_site()[c] for c in CHANNELS}
    reference_model = CloomeModel(tiny_config).eval()
    reference_model.save_pretrained(tmp_path)
    processor = CloomeProcessor(CloomeImageProcessor(crop_size={"height": 64, "width": 64}),
                                MoleculeFeaturizer(fingerprint_size=64))
    inputs = processor(images=[site, site], smiles=["CC(=O)Oc1ccccc1C(=O)O", "CCO"], return_tensors="pt")
    assert inputs["pixel_values"].dtype == torch.float32
    model = CloomeModel.from_pretrained(tmp_path, dtype=dtype).eval()
    assert model.dtype == dtype
    with torch.no_grad():
        out = model(**inputs, return_loss=True)
        reference = reference_model(**inputs, return_loss=True)
    assert out.image_embeds.dtype == out.molecule_embeds.dtype == dtype
    tolerance = 0.05 if dtype == torch.bfloat16 else 0.01
    torch.testing.assert_close(out.image_embeds.float(), reference.image_embeds, rtol=0, atol=tolerance)
    torch.testing.assert_close(out.molecule_embeds.float(), reference.molecule_embeds, rtol=0, atol=tolerance)
    assert out.loss.item() == pytest.approx(reference.loss.item(), abs=20 * tolerance)


def test_timm_backbone_hidden_states(tiny_config, monkeypatch):
    tiny_config.vision_config.backbone = "test_resnet"
    model = CloomeModel(tiny_config).eval()
    images, _ = batch(tiny_config, n=2)
    with torch.no_grad():
        out = model.get_image_features(images, output_hidden_states=True)
        final, intermediates = model.vision_model.model.forward_intermediates(images)
        plain = model.get_image_features(images)
    assert len(out.hidden_states) == len(intermediates) == 5
    for got, expected in zip(out.hidden_states, intermediates):
        torch.testing.assert_close(got, expected)
    torch.testing.assert_close(out.pooler_output, model.visual_projection(model.vision_model.model(images)))
    torch.testing.assert_close(plain.pooler_output, out.pooler_output)
    torch.testing.assert_close(plain.last_hidden_state, final)
    monkeypatch.delattr(type(model.vision_model.model), "forward_intermediates")
    with pytest.raises(ValueError, match="'test_resnet' has no forward_intermediates"):
        model.get_image_features(images, output_hidden_states=True)
    assert model.get_image_features(images).pooler_output.shape == (2, tiny_config.projection_dim)
