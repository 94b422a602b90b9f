"""#22 class 3, configs that cost unbounded time or memory: every size of a CLOOME config (and of the tower configs
it records) is bounded by what the architecture can mean, and an absurd one is refused with the field's name when
the config is made, when CloomeModel is built from a changed config, and on from_pretrained of a hostile
config.json: always before a single module is built (checked by making nn.Module.__init__ fail)."""

import contextlib
import json
import signal

import pytest
from torch import nn

from conftest import TINY_MOLECULE, TINY_VISION
from cloome_hf import CloomeConfig, CloomeModel
from cloome_hf.config_bounds import molecule_parameter_estimate
from cloome_hf.modeling_cloome import CloomeMoleculeEncoder
from cloome_hf.vision_tower_resnet import CloomeResNet, resnet_parameter_count


@contextlib.contextmanager
def nothing_built():
    """Fail if any torch module is built inside (the refusal must come first), and break a hang after a minute
    (a bound on a test that would otherwise never end, not a speed requirement)."""
    def refuse(*args, **kwargs):
        raise AssertionError("a torch module was built before the config was refused")

    def hang(*args):
        raise AssertionError("the config was not refused within a minute")

    original, previous = nn.Module.__init__, signal.signal(signal.SIGALRM, hang)
    nn.Module.__init__ = refuse
    signal.alarm(60)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        nn.Module.__init__ = original


def _config(vision=None, molecule=None, **top):
    return CloomeConfig(vision_config=dict(TINY_VISION, **(vision or {})),
                        molecule_config=dict(TINY_MOLECULE, **(molecule or {})), **{"projection_dim": 16, **top})


# (vision_config fields, the field the error must name)
VISION_VARIANTS = [
    ({"head_pool_size": 10**9}, "vision_config.head_pool_size"),
    ({"head_pool_size": 3}, "vision_config.head_pool_size"),  # a 64 px site leaves a 2x2 map: 3 cannot fit
    ({"head_pool_size": -7}, "vision_config.head_pool_size"),
    ({"head_pool_size": 2.0}, "vision_config.head_pool_size"),
    ({"layers": [1, 10**6, 1, 1]}, r"vision_config.layers\[1\]"),
    ({"layers": [True, 1, 1, 1]}, r"vision_config.layers\[0\]"),
    ({"layers": [1, 1, 1, 0]}, r"vision_config.layers\[3\]"),
    ({"layers": [1, 1, 1]}, "vision_config.layers"),
    ({"layers": 10**6}, "vision_config.layers"),
    ({"layers": "1111"}, "vision_config.layers"),
    ({"base_width": 10**9}, "vision_config.base_width"),
    ({"base_width": -8}, "vision_config.base_width"),
    ({"base_width": "8"}, "vision_config.base_width"),
    ({"base_width": 8.5}, "vision_config.base_width"),
    ({"image_size": [10**9, 64]}, r"vision_config.image_size\[0\]"),
    ({"image_size": 0}, r"vision_config.image_size\[0\]"),
    ({"image_size": True}, "vision_config.image_size"),
    ({"image_size": [64.0, 64]}, r"vision_config.image_size\[0\]"),
    ({"image_size": [64, 64, 64]}, "vision_config.image_size"),
    ({"num_channels": 10**8, "channel_names": None}, "vision_config.num_channels"),  # before 10**8 names are made
    ({"num_channels": True}, "vision_config.num_channels"),
    ({"channel_pooling_layers": 10**6}, "vision_config.channel_pooling_layers"),
    ({"channel_pooling_heads": 10**9}, "vision_config.channel_pooling_heads"),
    ({"num_labels": 10**9}, "vision_config.num_labels"),  # transformers would make 10**9 label names
    ({"id2label": {str(i): "x" for i in range(10**4)}}, "vision_config.id2label"),
    ({"layers": [64, 64, 64, 64], "base_width": 512, "image_size": [1024, 1024]}, "parameters"),
]

MOLECULE_VARIANTS = [
    ({"fingerprint_size": 10**12}, "molecule_config.fingerprint_size"),
    ({"fingerprint_size": 0}, "molecule_config.fingerprint_size"),
    ({"fingerprint_size": "1024"}, "molecule_config.fingerprint_size"),
    ({"hidden_size": -1}, "molecule_config.hidden_size"),
    ({"hidden_size": 32.0}, "molecule_config.hidden_size"),
    ({"hidden_size": 10**7}, "molecule_config.hidden_size"),
    ({"num_hidden_layers": 10**6}, "molecule_config.num_hidden_layers"),
    ({"num_hidden_layers": False}, "molecule_config.num_hidden_layers"),
    ({"concentration_encoding": "one_hot", "concentration_buckets": [float(i + 1) for i in range(10**5)]},
     "molecule_config.concentration_buckets"),
    ({"num_labels": 10**9}, "molecule_config.num_labels"),
    ({"hidden_size": 65536, "num_hidden_layers": 64}, "parameters"),  # each in bounds, together 275 G parameters
    ({"max_sequence_length": 10**9}, "molecule_config.max_sequence_length"),
    ({"max_sequence_length": 512.0}, "molecule_config.max_sequence_length"),
    # the graph tower: an edge network of 16 x 8192 x 8192 per layer is 1 G parameters a layer
    ({"encoder": "gnn", "gnn_layer": "nnconv", "hidden_size": 8192, "num_hidden_layers": 4}, "parameters"),
    ({"encoder": "gnn", "hidden_size": 10**6}, "molecule_config.hidden_size"),
    # the transformers tower's recorded config.json, read before any file is
    ({"encoder": "transformers", "transformers_model": "./nowhere", "tower_config": {"hidden_size": 10**9}},
     "molecule_config.tower_config.hidden_size"),
    ({"encoder": "transformers", "transformers_model": "./nowhere",
      "tower_config": {"hidden_size": 4096, "num_hidden_layers": 256, "intermediate_size": 65536}}, "parameters"),
    ({"encoder": "transformers", "transformers_model": "./nowhere", "tower_config": {"num_hidden_layers": 10**5}},
     "molecule_config.tower_config.num_hidden_layers"),
]

TOP_VARIANTS = [
    ({"projection_dim": 10**9}, "projection_dim"),
    ({"projection_dim": "512"}, "projection_dim"),
    ({"projection_dim": 0}, "projection_dim"),
    ({"projection_dim": True}, "projection_dim"),
    ({"num_labels": 10**9}, "num_labels"),
]


@pytest.mark.parametrize("fields, name", VISION_VARIANTS)
def test_class3_vision_size_is_refused_by_name_before_any_module(fields, name):
    with nothing_built(), pytest.raises(ValueError, match=name):
        _config(vision=fields)


@pytest.mark.parametrize("fields, name", MOLECULE_VARIANTS)
def test_class3_molecule_size_is_refused_by_name_before_any_module(fields, name):
    with nothing_built(), pytest.raises(ValueError, match=name):
        _config(molecule=fields)


@pytest.mark.parametrize("fields, name", TOP_VARIANTS)
def test_class3_top_level_size_is_refused_by_name_before_any_module(fields, name):
    with nothing_built(), pytest.raises(ValueError, match=name):
        _config(**fields)


def test_class3_the_bounds_are_the_architecture_s_not_a_blanket_refusal():
    """The largest window the 64 px map holds, and the published sizes, are accepted."""
    with nothing_built():
        assert _config(vision={"head_pool_size": 2}).vision_config.head_pool_size == 2
        published = CloomeConfig()  # ResNet-50 at 520 x 696, 1024-bit fingerprints, d = 512
        assert published.vision_config.head_pool_size == 7
        assert _config(vision={"image_size": [520, 696], "head_pool_size": 16}).vision_config.head_pool_size == 16
    with nothing_built(), pytest.raises(ValueError, match="16-pixel feature map"):
        _config(vision={"image_size": [520, 696], "head_pool_size": 17})


HOSTILE_CONFIG_JSON = [
    (("vision_config", "head_pool_size"), 10**9, "vision_config.head_pool_size"),
    (("vision_config", "layers"), [1, 10**6, 1, 1], r"vision_config.layers\[1\]"),
    (("vision_config", "image_size"), [-5, 64], r"vision_config.image_size\[0\]"),
    (("molecule_config", "fingerprint_size"), 10**12, "molecule_config.fingerprint_size"),
    (("molecule_config", "num_hidden_layers"), 1.5, "molecule_config.num_hidden_layers"),
    (("projection_dim",), 10**9, "projection_dim"),
    (("num_labels",), 10**9, "num_labels"),
]


@pytest.mark.parametrize("where, value, name", HOSTILE_CONFIG_JSON)
def test_class3_from_pretrained_of_a_hostile_config_json_is_refused_before_any_module(tmp_path, where, value,
                                                                                    name):
    _config().save_pretrained(tmp_path)
    path = tmp_path / "config.json"
    saved = json.loads(path.read_text())
    target = saved
    for key in where[:-1]:
        target = target[key]
    target[where[-1]] = value
    path.write_text(json.dumps(saved))
    with nothing_built(), pytest.raises(ValueError, match=name):
        CloomeModel.from_pretrained(tmp_path)


@pytest.mark.parametrize("tower, field, value", [
    ("vision_config", "layers", [1, 10**6, 1, 1]),
    ("vision_config", "head_pool_size", 10**9),
    ("molecule_config", "num_hidden_layers", 10**6),
])
def test_class3_a_config_changed_after_it_was_made_is_refused_when_the_model_is_built(tower, field, value):
    config = _config()
    setattr(getattr(config, tower), field, value)
    with nothing_built(), pytest.raises(ValueError, match=f"{tower}.{field}"):
        CloomeModel(config)


def _transformers_tower(**fields):
    tower = {"model_type": "vit", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
             "intermediate_size": 64, "image_size": 32, "patch_size": 8, "num_channels": 3,
             "_cloome_source": "some/vit"}
    return {"backbone": "some/vit", "tower_config": dict(tower, **fields), "image_size": [32, 32],
            "tower_preprocessing": {"rescale_factor": 1.0, "image_mean": None, "image_std": None,
                                    "input_size": [32, 32]}}


@pytest.mark.parametrize("fields, name", [
    ({"num_hidden_layers": 10**6}, "tower_config.num_hidden_layers"),
    ({"hidden_size": 10**9}, "tower_config.hidden_size"),
    ({"hidden_size": "768"}, "tower_config.hidden_size"),
    ({"intermediate_size": True}, "tower_config.intermediate_size"),
    ({"mlp_ratio": 1e9}, "tower_config.mlp_ratio"),
    ({"depths": [2, 10**6]}, r"tower_config.depths\[1\]"),
    ({"image_size": 8192, "patch_size": 1}, "patches per image"),  # 67 M tokens of attention
    ({"patch_size": 64}, "patches per image"),  # larger than the image: no patch at all
    ({"num_labels": 10**9}, "tower_config.num_labels"),
    ({"hidden_size": 16384, "num_hidden_layers": 256, "intermediate_size": 65536}, "parameters"),
])
def test_class3_a_recorded_transformers_tower_config_is_bounded(fields, name):
    with nothing_built(), pytest.raises(ValueError, match=name):
        _config(vision=_transformers_tower(**fields))


def test_class3_a_tower_input_size_is_bounded():
    vision = _transformers_tower()
    vision["tower_preprocessing"]["input_size"] = [10**9, 10**9]
    with nothing_built(), pytest.raises(ValueError, match=r"input_size.*1 to 8192 pixels"):
        _config(vision=vision)


def test_class3_the_parameter_counts_the_budget_uses_are_the_built_models():
    """The budget is computed, not built: its counts must be the real ones."""
    config = _config(vision={"layers": [2, 1, 3, 1]},
                     molecule={"concentration_encoding": "one_hot", "concentration_buckets": [0.1, 1.0]})
    vision, molecule = config.vision_config, config.molecule_config
    built = sum(p.numel() for p in CloomeResNet(vision).parameters())
    assert built == resnet_parameter_count(vision.layers, vision.base_width, vision.num_channels)
    assert sum(p.numel() for p in CloomeMoleculeEncoder(molecule).parameters()) == molecule_parameter_estimate(molecule)[0]


def _fingerprints():
    from cloome_hf import MoleculeFeaturizer

    return MoleculeFeaturizer(fingerprint_size=64)


def _graphs():
    from cloome_hf.featurization_graph import GraphFeaturizer

    return GraphFeaturizer()


@pytest.mark.parametrize("featurizer, fields, name", [
    (_fingerprints, {"fingerprint_size": 10**12}, "featurizer.fingerprint_size"),
    (_fingerprints, {"fingerprint_size": "1024"}, "featurizer.fingerprint_size"),
    (_fingerprints, {"fingerprint_size": 1024.0}, "featurizer.fingerprint_size"),
    (_fingerprints, {"radius": 10**9}, "featurizer.radius"),
    (_fingerprints, {"radius": -1}, "featurizer.radius"),
    (_fingerprints, {"max_path": 10**6}, "featurizer.max_path"),
    (_fingerprints, {"num_workers": 10**6}, "featurizer.num_workers"),
    (_fingerprints, {"num_workers": True}, "featurizer.num_workers"),
    # the graph tower's featuriser reads the same pool settings from the same file
    (_graphs, {"parallel_threshold": 10**12}, "featurizer.parallel_threshold"),
    (_graphs, {"parallel_threshold": -1}, "featurizer.parallel_threshold"),
    (_graphs, {"num_workers": 10**6}, "featurizer.num_workers"),
    (_graphs, {"num_workers": "4"}, "featurizer.num_workers"),
])
def test_class3_a_hostile_processor_config_featurizer_is_refused_by_name(tmp_path, featurizer, fields, name):
    from cloome_hf import CloomeProcessor
    from cloome_hf.image_processing_cloome import CloomeImageProcessor

    CloomeProcessor(CloomeImageProcessor(), featurizer()).save_pretrained(tmp_path)
    path = tmp_path / "processor_config.json"
    saved = json.loads(path.read_text())
    saved["featurizer"].update(fields)
    path.write_text(json.dumps(saved))
    with pytest.raises(ValueError, match=name):
        CloomeProcessor.from_pretrained(tmp_path)
