"""CloomeModel with each registered objective: config.loss, the sigmoid losses' logit_bias, the clamp per loss, and
the published architecture left as it was (issue 17)."""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_MOLECULE, TINY_VISION
from upstream_checkpoint import make_upstream_state_dict

from cloome_hf import CloomeConfig, CloomeModel
from cloome_hf.losses import available_losses, cloob_loss, cwcl_loss, infonce_loss, s2l_loss, siglip_loss


def tiny(loss, **kwargs):
    return CloomeConfig(vision_config=dict(TINY_VISION), molecule_config=dict(TINY_MOLECULE), projection_dim=16,
                        loss=loss, **kwargs)


def analogue_batch(n=6, seed=0):
    """Images and fingerprints in two families of near-identical molecules, so CWCL has partial positives."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, TINY_VISION["num_channels"], 64, 64, generator=g)
    families = (torch.rand(2, TINY_MOLECULE["fingerprint_size"], generator=g) < 0.4).float()
    fingerprints = families[torch.arange(n) % 2].clone()
    fingerprints[torch.arange(n), torch.arange(n)] = 1 - fingerprints[torch.arange(n), torch.arange(n)]
    return images, fingerprints


def direct_loss(name, model, out, fingerprints, phenomic=None):
    """The loss function of ``name`` called directly with the model's parameters (no registry in between)."""
    x, y, config = out.image_embeds, out.molecule_embeds, model.config
    scale = model.logit_scale.exp()
    if name == "infonce":
        return infonce_loss(x, y, scale)
    if name in ("cloob", "infoloob"):
        return cloob_loss(x, y, scale, config.hopfield_beta)
    if name == "siglip":
        return siglip_loss(x, y, scale, model.logit_bias)
    if name == "s2l":
        return s2l_loss(x, y, scale, model.logit_bias, phenomic_embeds=phenomic)
    return cwcl_loss(x, y, scale, fingerprints, config.cwcl_threshold)


@pytest.mark.parametrize("name", available_losses(include_aliases=True))
def test_forward_loss_is_the_configured_objective(name):
    model = CloomeModel(tiny(name, cwcl_threshold=0.6)).eval()
    images, fingerprints = analogue_batch()
    out = model(pixel_values=images, fingerprints=fingerprints, return_loss=True)
    expected = direct_loss(name, model, out, fingerprints)
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    if name == "cwcl":  # the batch's fingerprints reach the loss: the analogues are partial positives
        assert out.loss.item() != pytest.approx(infonce_loss(out.image_embeds, out.molecule_embeds,
                                                             model.logit_scale.exp()).item(), rel=1e-3)


def test_s2l_takes_the_given_phenomic_embeddings():
    model = CloomeModel(tiny("s2l")).eval()
    images, fingerprints = analogue_batch()
    phenomic = F.normalize(torch.randn(6, 3, generator=torch.Generator().manual_seed(1)), dim=-1)
    phenomic[1] = phenomic[0] + 0.01  # one close pair: a soft positive the model's own embeddings do not have
    out = model(pixel_values=images, fingerprints=fingerprints, phenomic_embeds=phenomic, return_loss=True)
    assert out.loss.item() == pytest.approx(direct_loss("s2l", model, out, fingerprints, phenomic).item(), rel=1e-6)
    own = model(pixel_values=images, fingerprints=fingerprints, return_loss=True).loss
    assert own.item() != pytest.approx(out.loss.item(), rel=1e-4)
    with pytest.raises(ValueError, match="phenomic_embeds"):
        CloomeModel(tiny("infonce"))(pixel_values=images, fingerprints=fingerprints, phenomic_embeds=phenomic,
                                     return_loss=True)


@pytest.mark.parametrize("name", ["siglip", "s2l"])
def test_sigmoid_losses_have_siglip_parameters(name, tmp_path):
    model = CloomeModel(tiny(name))
    params = dict(model.named_parameters())
    # transformers' SiglipModel names: logit_scale = t' (t = exp t'), logit_bias = b; SigLIP's init t' = ln 10, b = -10
    assert params["logit_scale"].item() == pytest.approx(math.log(10.0))
    assert params["logit_bias"].item() == pytest.approx(-10.0)
    assert params["logit_bias"].requires_grad
    images, fingerprints = analogue_batch(n=3)
    out = model.eval()(pixel_values=images, fingerprints=fingerprints)
    expected = 10.0 * out.image_embeds @ out.molecule_embeds.T - 10.0  # the sigmoid of it is a match probability
    torch.testing.assert_close(out.logits_per_image, expected)
    with torch.no_grad():
        model.logit_bias.fill_(-3.5)
    model.save_pretrained(tmp_path)
    assert CloomeModel.from_pretrained(tmp_path).logit_bias.item() == pytest.approx(-3.5)
    custom = CloomeModel(tiny(name, logit_scale_init_value=math.log(5.0), logit_bias_init_value=-2.0))
    assert (custom.logit_scale.item(), custom.logit_bias.item()) == pytest.approx((math.log(5.0), -2.0))


@pytest.mark.parametrize("name", ["infonce", "cloob", "cwcl"])
def test_softmax_losses_have_no_logit_bias(name):
    model = CloomeModel(tiny(name))
    assert "logit_bias" not in dict(model.named_parameters()) and model.logit_bias is None
    assert model.logit_scale.item() == pytest.approx(math.log(14.3))
    with pytest.raises(ValueError, match="has no logit bias"):
        tiny(name, logit_bias_init_value=-10.0)


@pytest.mark.parametrize("name,bounds", [("infonce", (0.0, math.log(100.0))), ("cloob", (0.0, math.log(100.0))),
                                         ("cwcl", (0.0, math.log(100.0))), ("siglip", None), ("s2l", None)])
def test_clamp_logit_scale_per_loss(name, bounds):
    model = CloomeModel(tiny(name))
    for value in (-1.0, 2.0, 5.5):
        with torch.no_grad():
            model.logit_scale.fill_(value)
        model.clamp_logit_scale()
        expected = value if bounds is None else min(max(value, bounds[0]), bounds[1])
        assert model.logit_scale.item() == pytest.approx(expected)


def test_config_validates_the_objective_settings():
    assert set(available_losses()) <= set(available_losses(include_aliases=True))
    with pytest.raises(ValueError, match="'clip'"):
        tiny("clip")
    with pytest.raises(ValueError, match="ln 100"):
        tiny("infonce", logit_scale_init_value=5.0)
    assert tiny("siglip", logit_scale_init_value=5.0).logit_scale_init_value == 5.0  # not clamped, so allowed
    with pytest.raises(ValueError, match="cwcl_threshold"):
        tiny("cwcl", cwcl_threshold=0.0)
    with pytest.raises(ValueError, match="logit_bias_init_value"):
        tiny("siglip", logit_bias_init_value=float("nan"))


@pytest.mark.parametrize("recipe", ["bioactivity", "retrieval"])
def test_published_layout_weights_load_into_a_config_without_the_new_options(recipe):
    from cloome_hf.publish.convert import convert_state_dict

    config, state = convert_state_dict(make_upstream_state_dict(seed=12), recipe)
    assert config.molecule_config.concentration_encoding is None
    model = CloomeModel(config)
    assert set(model.state_dict()) == set(state)  # no logit_bias, no dose inputs: the published parameters only
    model.load_state_dict(state, strict=True)
    assert model.molecule_model.layers[0].dense.in_features == config.molecule_config.fingerprint_size
    config.molecule_config.concentration_encoding = "linear"  # dose inputs widen the first molecule layer
    with pytest.raises(RuntimeError, match="size mismatch"):
        CloomeModel(CloomeConfig.from_dict(config.to_dict())).load_state_dict(state, strict=True)
