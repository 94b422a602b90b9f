"""The pretrained-tower recipes build the model they describe, on the real loading code (tiny local towers)."""

import pytest

from cloome_hf.recipes import get_recipe
from cloome_hf.train.params import parse_args
from cloome_hf.train.setup import build_model

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

EXPECTED = {  # recipe: (Hub id it documents, channel strategy, frozen, loss, dose encoding)
    "cellclip-style": ("facebook/dinov2-giant", "per_channel", True, "cwcl", None),
    "molphenix-style": ("recursionpharma/OpenPhenom", "per_channel", True, "s2l", "one_hot"),
    "vit-finetune": ("google/vit-base-patch16-224-in21k", "stem", False, "infonce", None),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_tower_recipe_builds_what_its_card_says(name, tiny_tower_folder, tmp_path):
    hub_id, strategy, frozen, loss, dose = EXPECTED[name]
    recipe = get_recipe(name)
    assert recipe.model["backbone"] == hub_id and hub_id in recipe.description
    assert "Reproduces" in recipe.description and "Does not reproduce" in recipe.description
    folder = tiny_tower_folder("dinov2")  # stands in for the Hub tower, which cannot be downloaded here
    model_args, data_args, train_args, used = parse_args(["--recipe", name, "--output_dir", str(tmp_path / "out"),
                                                          "--backbone", folder])
    assert model_args.freeze_image_tower is frozen
    config = build_model(model_args, data_args).config
    assert config.vision_config.backbone == folder and config.vision_config.channel_strategy == strategy
    assert config.loss == loss and config.molecule_config.concentration_encoding == dose
    if name == "molphenix-style":  # the recipe states OpenPhenom's convention: uint8 / 255, no mean / std, 256 px
        assert config.vision_config.tower_preprocessing["image_mean"] is None
        assert config.vision_config.tower_preprocessing["input_size"] == [256, 256]
    if name == "molphenix-style":  # MolPhenix's molecule side is a graph network: the gnn tower (#25)
        assert config.molecule_config.encoder == "gnn" and config.molecule_config.gnn_layer == "gine"
