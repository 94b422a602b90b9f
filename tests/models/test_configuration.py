"""CloomeConfig: defaults are the published model, JSON round-trip, impossible values rejected."""

import json
import math

import pytest

from cloome_hf import CloomeConfig, CloomeMoleculeConfig, CloomeVisionConfig


def test_defaults_are_the_published_retrieval_model():
    config = CloomeConfig()
    assert config.model_type == "cloome"
    assert config.vision_config.backbone == "cloome_resnet50"
    assert config.vision_config.layers == [3, 4, 6, 3]
    assert config.vision_config.num_channels == 5
    assert config.vision_config.image_size == [520, 696]
    assert config.vision_config.timm_pretrained is False
    assert config.molecule_config.fingerprint_size == 1024
    assert (config.molecule_config.hidden_size, config.molecule_config.num_hidden_layers) == (1024, 4)
    assert config.projection_dim == 512
    assert config.logit_scale_init_value == pytest.approx(math.log(14.3))
    assert config.loss == "infonce"


def test_json_round_trip(tmp_path):
    config = CloomeConfig(
        vision_config={"backbone": "resnet18", "layers": [2, 2, 2, 2], "image_size": 320},
        molecule_config={"fingerprint_size": 8192, "hidden_size": 512, "num_hidden_layers": 3},
        projection_dim=256,
        logit_scale_init_value=math.log(30),
        learnable_logit_scale=False,
        loss="infoloob",
        hopfield_beta=22.0,
    )
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "cloome"
    assert saved["vision_config"]["image_size"] == [320, 320]
    assert saved["molecule_config"]["fingerprint_size"] == 8192
    loaded = CloomeConfig.from_pretrained(tmp_path)
    assert isinstance(loaded.vision_config, CloomeVisionConfig)
    assert isinstance(loaded.molecule_config, CloomeMoleculeConfig)
    for key in ["projection_dim", "logit_scale_init_value", "learnable_logit_scale", "loss", "hopfield_beta"]:
        assert getattr(loaded, key) == getattr(config, key)
    assert loaded.vision_config.to_dict() == config.vision_config.to_dict()
    assert loaded.molecule_config.to_dict() == config.molecule_config.to_dict()


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"loss": "triplet"}, "'triplet'"),
        ({"projection_dim": 0}, "projection_dim"),
        ({"logit_scale_init_value": 5.0}, "ln 100"),
        ({"hopfield_beta": -1.0}, "hopfield_beta"),
        ({"vision_config": {"num_channels": 0}}, "num_channels"),
        ({"vision_config": {"layers": [3, 4, 6]}}, r"\[3, 4, 6\]"),
        ({"vision_config": {"image_size": [520, 0]}}, "image_size"),
        ({"vision_config": {"backbone": ""}}, "backbone"),
        ({"molecule_config": {"fingerprint_size": 1.5}}, "fingerprint_size"),
        ({"molecule_config": {"num_hidden_layers": -2}}, "num_hidden_layers"),
    ],
)
def test_impossible_values_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CloomeConfig(**kwargs)
