"""Molecule towers (#25): one processor for every tower, saved and loaded with the model, offline."""

import json
import os
import shutil

import numpy as np
import pytest
import torch

from cloome_hf import CloomeConfig, CloomeModel, CloomeProcessor
from cloome_hf.featurization_graph import GraphFeaturizer, graph_schema
from cloome_hf.processing_cloome import load_model_and_processor
from conftest import TINY_GNN, TINY_MOLECULE, TINY_VISION

MOLECULES = ["CCO", "c1ccccc1O", "CC(=O)Oc1ccccc1C(=O)O", "C#N"]
TOWERS = {"mlp": ("fingerprints",), "gnn": ("x", "edge_index", "edge_attr", "batch"),
          "transformers": ("input_ids", "attention_mask")}


def _molecule_config(tower, lm_folder, **extra):
    return {"mlp": dict(TINY_MOLECULE), "gnn": dict(TINY_GNN),
            "transformers": dict(encoder="transformers", transformers_model=lm_folder)}[tower] | extra


def _saved(tower, lm_folder, folder):
    config = CloomeConfig(vision_config=dict(TINY_VISION), molecule_config=_molecule_config(tower, lm_folder),
                          projection_dim=16)
    model = CloomeModel(config).eval()
    processor = CloomeProcessor.for_model(config)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return model, processor


@pytest.mark.parametrize("tower", list(TOWERS))
def test_processor_yields_the_towers_inputs_and_round_trips_with_the_model(tower, tiny_chem_lm_folder, tmp_path):
    folder = tmp_path / tower
    model, processor = _saved(tower, tiny_chem_lm_folder, folder)
    batch = processor(smiles=MOLECULES, return_tensors="pt")
    assert set(batch) == set(TOWERS[tower])
    with torch.no_grad():
        before = model(**batch).molecule_embeds
    loaded, reloaded = load_model_and_processor(folder)  # offline (HF_HUB_OFFLINE=1), nothing but the folder
    assert reloaded.featurizer == processor.featurizer
    with torch.no_grad():
        after = loaded(**reloaded(smiles=MOLECULES, return_tensors="pt")).molecule_embeds
    torch.testing.assert_close(after, before)
    if tower == "transformers":
        assert os.path.isfile(folder / "molecule_tokenizer" / "tokenizer.json")


def test_transformers_model_folder_loads_without_its_source(tiny_chem_lm_folder, tmp_path):
    """The saved model records the tower's config and the processor its tokenizer: the source folder is not read."""
    source = tmp_path / "lm"
    shutil.copytree(tiny_chem_lm_folder, source)
    model, _ = _saved("transformers", str(source), tmp_path / "saved")
    shutil.rmtree(source)
    loaded, processor = load_model_and_processor(tmp_path / "saved")
    batch = processor(smiles=MOLECULES, return_tensors="pt")
    torch.testing.assert_close(loaded(**batch).molecule_embeds, model(**batch).molecule_embeds)


@pytest.mark.parametrize("tower", list(TOWERS))
def test_invalid_smiles_refused_by_position_for_every_tower(tower, tiny_chem_lm_folder):
    config = CloomeConfig(vision_config=dict(TINY_VISION), molecule_config=_molecule_config(tower,
                                                                                            tiny_chem_lm_folder))
    with pytest.raises(ValueError, match=r"^Invalid SMILES 'C1CC' at position 2$"):
        CloomeProcessor.for_model(config)(smiles=["CCO", "CCN", "C1CC"])


def test_doses_count_molecules_not_atoms():
    config = CloomeConfig(vision_config=dict(TINY_VISION), molecule_config=dict(TINY_GNN,
                                                                                concentration_encoding="linear"))
    processor = CloomeProcessor.for_model(config)
    batch = processor(smiles=["CCO", "CCCCCC"], concentrations=[1.0, 3.0], return_tensors="pt")
    assert batch["concentrations"].tolist() == [1.0, 3.0]
    with pytest.raises(ValueError, match="got 3 concentrations for 2 molecules"):
        processor(smiles=["CCO", "CCCCCC"], concentrations=[1.0, 3.0, 2.0])
    out = CloomeModel(config).eval().get_molecule_features(**{k: v for k, v in batch.items()
                                                              if k != "concentrations"},
                                                           concentrations=batch["concentrations"])
    assert out.pooler_output.shape == (2, config.projection_dim)


def test_graph_schema_mismatch_is_refused_naming_the_feature(tmp_path):
    _saved("gnn", None, tmp_path)
    narrow = GraphFeaturizer(graph_schema(feature_values={"element": ["C", "N", "O"]}))
    model = CloomeModel.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"graph schema differs from the model's: atom feature 'element' takes values "
                                         r"\['C', 'N', 'O'\]"):
        CloomeProcessor(featurizer=narrow).check_model_compatibility(model.config)
    processor_file = tmp_path / "processor_config.json"
    values = json.loads(processor_file.read_text())
    values["featurizer"]["schema"]["atom"]["element"] = ["C", "N", "O"]
    processor_file.write_text(json.dumps(values))
    with pytest.raises(ValueError, match="atom feature 'element'"):
        CloomeProcessor.from_pretrained(tmp_path)  # saved beside the model: checked on load


def test_processor_without_its_graph_schema_is_refused_by_name(tmp_path):
    _saved("gnn", None, tmp_path)
    processor_file = tmp_path / "processor_config.json"
    values = json.loads(processor_file.read_text())
    del values["featurizer"]["schema"]
    processor_file.write_text(json.dumps(values))
    with pytest.raises(ValueError, match="no 'schema'"):
        CloomeProcessor.from_pretrained(tmp_path)


def test_processor_without_its_tokenizer_is_refused_by_name(tiny_chem_lm_folder, tmp_path):
    _saved("transformers", tiny_chem_lm_folder, tmp_path)
    shutil.rmtree(tmp_path / "molecule_tokenizer")
    with pytest.raises(ValueError, match="tokenizer is missing: there is no .*molecule_tokenizer"):
        load_model_and_processor(tmp_path)


def test_fingerprint_processor_of_a_graph_model_is_refused(tmp_path):
    _saved("gnn", None, tmp_path)
    model = CloomeModel.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="inputs of the 'mlp' molecule tower but the model's molecule encoder is "
                                         "'gnn'"):
        CloomeProcessor().check_model_compatibility(model.config)


def test_processors_saved_before_the_towers_still_load_as_fingerprints(tmp_path):
    """A ``processor_config.json`` without ``tower`` (every processor saved before #25) is the fingerprint one."""
    processor = CloomeProcessor()
    processor.save_pretrained(tmp_path)
    values = json.loads((tmp_path / "processor_config.json").read_text())
    assert "tower" not in values["featurizer"]
    loaded = CloomeProcessor.from_pretrained(tmp_path)
    np.testing.assert_array_equal(loaded(smiles=["CCO"])["fingerprints"], processor(smiles=["CCO"])["fingerprints"])
