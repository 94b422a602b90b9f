"""One processor-from-recipe (cloome_hf.recipes.recipe_processor): training with a published recipe and converting
that recipe's weights save the same processor."""

import pytest


@pytest.mark.parametrize("recipe, fingerprint_size", [("bioactivity", 1024), ("zero-shot", 8192)])
def test_train_and_convert_build_the_same_processor_for_a_recipe(recipe, fingerprint_size, tmp_path):
    from cloome_hf.publish.convert import build_processor as converted_processor
    from cloome_hf.recipes import get_recipe
    from cloome_hf.train.params import parse_args
    from cloome_hf.train.setup import build_processor as trained_processor

    height, width = get_recipe(recipe).inference_crop
    model_args, data_args, _, _ = parse_args(["--output_dir", str(tmp_path), "--recipe", recipe,
                                              "--image_size", str(height), str(width)])
    trained = trained_processor(model_args, data_args)
    converted = converted_processor(recipe, fingerprint_size)
    assert trained.image_processor.to_dict() == converted.image_processor.to_dict()
    assert trained.featurizer.to_dict() == converted.featurizer.to_dict()
    assert converted.image_processor.crop_size == {"height": height, "width": width}
    assert converted.featurizer.kind == get_recipe(recipe).model["fingerprint_kind"]
