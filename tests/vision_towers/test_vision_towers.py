"""Image towers: each kind loads the way users load it, round-trips offline, and keeps its input convention."""

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import TINY_MOLECULE, TINY_VISION
from transformers import AutoModel

from cloome_hf import CloomeConfig, CloomeModel
from cloome_hf.vision_towers import tower_image_processor

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def config_with(**vision):
    return CloomeConfig(vision_config=vision, molecule_config=dict(TINY_MOLECULE), projection_dim=16)


def image_features(model, images, **kwargs):
    with torch.no_grad():
        return model.eval().get_image_features(images, **kwargs).pooler_output


@pytest.mark.parametrize("kind", ["dinov2", "vit"])
@pytest.mark.parametrize("strategy", ["stem", "per_channel", "channel_tokens"])
def test_transformers_tower_keeps_its_weights_and_round_trips_without_its_folder(tiny_tower_folder, tmp_path, kind,
                                                                                 strategy):
    folder = tiny_tower_folder(kind)
    source = AutoModel.from_pretrained(folder).state_dict()
    config = config_with(backbone=folder, channel_strategy=strategy, image_size=[32, 32])
    processor = json.loads(open(f"{folder}/preprocessor_config.json").read())
    assert config.vision_config.tower_preprocessing["image_mean"] == pytest.approx(processor["image_mean"])
    assert config.vision_config.tower_preprocessing["input_size"] == [32, 32]
    model = CloomeModel(config)
    tower = model.vision_model.tower if strategy == "per_channel" else model.vision_model
    adapted = "embeddings.patch_embeddings.projection.weight"
    for key, value in tower.model.state_dict().items():
        if strategy == "stem" and key == adapted:  # 3 pretrained channels averaged onto 5, scaled by 3 / 5
            expected = source[key].mean(1, keepdim=True).expand(-1, 5, -1, -1) * (3 / 5)
            torch.testing.assert_close(value, expected)
        elif strategy == "channel_tokens" and key == adapted:  # one channel: the 3 pretrained ones summed
            torch.testing.assert_close(value, source[key].sum(1, keepdim=True))
        else:
            assert torch.equal(value, source[key]), key  # pretrained, not re-initialised by post_init
    images = torch.rand(2, 5, 32, 32)
    expected = image_features(model, images)
    model.save_pretrained(tmp_path / "cloome")
    shutil.rmtree(folder)  # the tower's own files are gone: the CloomeModel folder must be enough
    reloaded = CloomeModel.from_pretrained(tmp_path / "cloome")
    assert torch.equal(image_features(reloaded, images), expected)


def test_stem_average_answers_a_replicated_channel_as_the_pretrained_tower(tiny_tower_folder):
    folder = tiny_tower_folder("dinov2")
    pretrained = AutoModel.from_pretrained(folder).eval()
    model = CloomeModel(config_with(backbone=folder, image_size=[32, 32])).eval()
    gray = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        got = model.vision_model.model(pixel_values=gray.expand(-1, 5, -1, -1)).last_hidden_state
        expected = pretrained(pixel_values=gray.expand(-1, 3, -1, -1)).last_hidden_state
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


STRATEGIES = [
    dict(TINY_VISION),
    dict(TINY_VISION, channel_strategy="per_channel"),
    dict(TINY_VISION, backbone="test_resnet"),
    dict(TINY_VISION, backbone="test_resnet", channel_strategy="per_channel"),
    "dinov2-stem",
    "dinov2-per_channel",
    "dinov2-channel_tokens",
    "vit-channel_tokens",
]


@pytest.mark.parametrize("vision", STRATEGIES, ids=lambda v: v if isinstance(v, str) else
                         f"{v['backbone']}-{v.get('channel_strategy', 'stem')}")
def test_a_site_embeds_identically_whatever_its_channel_order(tiny_tower_folder, vision):
    if isinstance(vision, str):
        kind, strategy = vision.split("-")
        # stem_init "reinit": an averaged stem answers every channel alike, which would hide a wrong order
        vision = dict(backbone=tiny_tower_folder(kind), channel_strategy=strategy, image_size=[32, 32],
                      stem_init="reinit")
    config = config_with(**vision)
    model = CloomeModel(config)
    size = config.vision_config.image_size
    images = torch.rand(2, 5, *size)
    names = config.vision_config.channel_names
    order = [3, 0, 4, 1, 2]
    expected = image_features(model, images)
    shuffled = images[:, order]
    assert torch.equal(image_features(model, shuffled, channel_names=[names[i] for i in order]), expected)
    assert not torch.allclose(image_features(model, shuffled), expected)  # the order does matter without names
    jump_names = {"Hoechst": "DNA", "ERSyto": "ER", "ERSytoBleed": "RNA", "Ph_golgi": "AGP", "Mito": "Mito"}
    assert torch.equal(image_features(model, images, channel_names=[jump_names[n] for n in names]), expected)
    with pytest.raises(ValueError, match="lack \\['Mito'\\]"):
        image_features(model, images[:, 1:], channel_names=names[1:])


def test_tower_id_that_is_nothing_known_names_the_three_things_tried(tmp_path):
    missing = str(tmp_path / "no-such-tower")
    with pytest.raises(ValueError) as err:
        config_with(backbone=missing)
    message = str(err.value)
    assert missing in message and "timm model name" in message and "cloome_resnet50" in message
    assert "not a local folder" in message and "Hub model id" in message


def test_tower_without_a_known_input_convention_is_refused_by_name(tiny_tower_folder):
    folder = tiny_tower_folder("dinov2", processor=False)
    with pytest.raises(ValueError, match=f"input convention of tower '{folder}'.*preprocessor_config.json"):
        config_with(backbone=folder)
    given = {"rescale_factor": 1 / 255, "image_mean": None, "image_std": None, "input_size": [32, 32]}
    config = config_with(backbone=folder, tower_preprocessing=given, image_size=[32, 32])
    assert config.vision_config.tower_preprocessing["image_mean"] is None
    assert not CloomeModel(config).vision_model.normalize.active


def test_channel_tokens_are_refused_when_the_config_is_made_for_towers_without_patch_tokens(tmp_path):
    from transformers import ConvNextConfig, ConvNextModel

    folder = tmp_path / "tiny-convnext"
    ConvNextModel(ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2)).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "rescale_factor": 1 / 255, "do_normalize": False, "size": {"height": 32, "width": 32}}))
    with pytest.raises(ValueError, match="'channel_tokens' is not supported by the transformers tower .*'convnext'"):
        config_with(backbone=str(folder), channel_strategy="channel_tokens")
    with pytest.raises(ValueError, match="channel_strategy 'channel_tokens' is not supported by the cloome_resnet50"):
        config_with(**dict(TINY_VISION, channel_strategy="channel_tokens"))
    with pytest.raises(ValueError, match="channel_strategy 'channel_tokens' is not supported by the timm"):
        config_with(**dict(TINY_VISION, backbone="test_resnet", channel_strategy="channel_tokens"))


def test_channel_tokens_attend_over_every_channels_patches_tagged_by_channel_name(tiny_tower_folder):
    model = CloomeModel(config_with(backbone=tiny_tower_folder("dinov2"), channel_strategy="channel_tokens",
                                    image_size=[32, 32])).eval()
    images = torch.rand(2, 5, 32, 32)
    with torch.no_grad():
        out = model.vision_model(images)
    assert out.last_hidden_state.shape == (2, 1 + 5 * 16, 32)  # CLS + 5 channels x 4 x 4 patches of 8 px
    # the channel embedding is what tells the channels apart: equal embeddings make two channels interchangeable
    with torch.no_grad():
        model.vision_model.channel_embeddings[1] = model.vision_model.channel_embeddings[0]
        same = model.vision_model(images).pooler_output
        swapped = model.vision_model(images[:, [1, 0, 2, 3, 4]]).pooler_output
    torch.testing.assert_close(swapped, same, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(out.pooler_output, same)


def test_missing_channel_names_must_match_the_channel_count():
    with pytest.raises(ValueError, match="channel_names must name each of the num_channels=3"):
        config_with(**dict(TINY_VISION, num_channels=3, channel_names=["DNA", "RNA", "DNA"]))


def test_timm_tower_weights_from_a_local_safetensors_file(tmp_path):
    import timm
    from safetensors.torch import save_file

    source = timm.create_model("test_resnet", num_classes=0)
    save_file(source.state_dict(), tmp_path / "weights.safetensors")
    config = config_with(**dict(TINY_VISION, backbone="test_resnet", num_channels=3, tower_weights=str(
        tmp_path / "weights.safetensors")))
    assert config.vision_config.tower_preprocessing["image_mean"] == [0.5, 0.5, 0.5]  # test_resnet's pretrained_cfg
    model = CloomeModel(config)
    for key, value in model.vision_model.model.state_dict().items():
        assert torch.equal(value, source.state_dict()[key]), key
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expected = source.eval()((images - 0.5) / 0.5)
        got = model.eval().vision_model(images).pooler_output
    torch.testing.assert_close(got, expected)


def test_tower_image_processor_scales_and_crops_as_the_tower_says(tiny_tower_folder):
    folder = tiny_tower_folder("dinov2")
    vision = config_with(backbone=folder, image_size=[32, 32]).vision_config
    processor = tower_image_processor(vision)
    site = np.random.default_rng(0).integers(0, 256, size=(5, 40, 48), dtype=np.uint8)
    pixels = processor(site, return_tensors="pt")["pixel_values"]
    np.testing.assert_allclose(pixels[0].numpy(), site[:, 4:36, 8:40] / 255.0, rtol=1e-6)
    assert processor.tower_preprocessing["image_std"] == vision.tower_preprocessing["image_std"]
    assert processor.to_dict()["tower_preprocessing"]["backbone"] == folder


REMOTE_CODE = '''
import pathlib
pathlib.Path({marker!r}).write_text("the tower's code ran")

import torch
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPooling


class TinyRemoteConfig(PretrainedConfig):
    model_type = "tiny_remote_tower"

    def __init__(self, num_channels=3, hidden_size=8, **kwargs):
        super().__init__(**kwargs)
        self.num_channels = num_channels
        self.hidden_size = hidden_size


class TinyRemoteModel(PreTrainedModel):
    config_class = TinyRemoteConfig
    base_model_prefix = "tiny"

    def __init__(self, config):
        super().__init__(config)
        self.patches = torch.nn.Conv2d(config.num_channels, config.hidden_size, 4, 4)
        self.post_init()

    def forward(self, pixel_values, output_hidden_states=False, return_dict=True):
        tokens = self.patches(pixel_values).flatten(2).transpose(1, 2)
        tokens = torch.cat([tokens.mean(1, keepdim=True), tokens], dim=1)
        return BaseModelOutputWithPooling(last_hidden_state=tokens, pooler_output=tokens[:, 0])
'''


@pytest.fixture
def remote_tower(tmp_path):
    """A tower folder whose config maps AutoModel to its own ``tiny_tower.py``, which writes a marker file when it is
    imported (weights written without running that code)."""
    from safetensors.torch import save_file

    folder, marker = tmp_path / "remote-tower", tmp_path / "code-ran.txt"
    folder.mkdir()
    (folder / "tiny_tower.py").write_text(REMOTE_CODE.format(marker=str(marker)))
    (folder / "config.json").write_text(json.dumps({
        "model_type": "tiny_remote_tower", "num_channels": 3, "hidden_size": 8, "architectures": ["TinyRemoteModel"],
        "auto_map": {"AutoConfig": "tiny_tower.TinyRemoteConfig", "AutoModel": "tiny_tower.TinyRemoteModel"}}))
    (folder / "preprocessor_config.json").write_text(json.dumps({  # OpenPhenom's convention: uint8 / 255, no mean
        "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": False, "size": {"height": 16, "width": 16}}))
    weights = {"patches.weight": torch.randn(8, 3, 4, 4), "patches.bias": torch.randn(8)}
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    return str(folder), marker, weights


def test_remote_code_tower_is_refused_without_trust_and_none_of_its_code_runs(remote_tower, tmp_path):
    folder, marker, weights = remote_tower
    vision = dict(backbone=folder, channel_strategy="per_channel", image_size=[16, 16], channel_names=[
        "DNA", "ER", "RNA", "AGP", "Mito"])
    with pytest.raises(ValueError, match=f"tower '{folder}' is remote code.*trust_remote_code=True"):
        config_with(**vision)
    assert not marker.exists()
    config = config_with(**vision, trust_remote_code=True)
    assert config.vision_config.tower_preprocessing["image_mean"] is None
    model = CloomeModel(config)
    assert marker.exists()
    assert torch.equal(model.vision_model.tower.model.patches.weight, weights["patches.weight"])
    images = torch.rand(2, 5, 16, 16)
    expected = image_features(model, images)
    model.save_pretrained(tmp_path / "cloome")
    assert "trust_remote_code" not in (tmp_path / "cloome" / "config.json").read_text()
    marker.unlink()
    with pytest.raises(ValueError, match="is remote code"):
        CloomeModel.from_pretrained(tmp_path / "cloome")
    assert not marker.exists()
    reloaded = CloomeModel.from_pretrained(tmp_path / "cloome", trust_remote_code=True)
    assert torch.equal(image_features(reloaded, images), expected)
