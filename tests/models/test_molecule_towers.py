"""Molecule towers (#25): the registry, graph featurisation, the gnn and transformers towers behind one signature."""

import json
import os

import numpy as np
import pytest
import torch

from cloome_hf import CloomeConfig, CloomeModel
from cloome_hf.featurization_graph import GraphFeaturizer, graph_schema
from cloome_hf.molecule_tower_registry import (MoleculeTowerKind, get_molecule_tower, molecule_tower_names,
                                               register_molecule_tower)
from conftest import TINY_GNN, TINY_VISION

MOLECULES = ["CCO", "c1ccccc1O", "CC(=O)Oc1ccccc1C(=O)O", "[Na+].[Cl-]", "C#N", "O=C(O)CCc1ccccc1"]


def _config(**molecule):
    return CloomeConfig(vision_config=dict(TINY_VISION), molecule_config=molecule, projection_dim=16)


def _tensors(arrays):
    return {k: torch.from_numpy(v) for k, v in arrays.items()}


def test_registry_names_the_three_towers_and_refuses_unknown_or_duplicate():
    assert {"mlp", "gnn", "transformers"} <= set(molecule_tower_names())
    with pytest.raises(ValueError, match=r"unknown molecule encoder 'chemprop'.*'gnn'"):
        _config(encoder="chemprop")
    kind = get_molecule_tower("gnn")
    with pytest.raises(ValueError, match="already registered"):
        register_molecule_tower(kind)
    with pytest.raises(ValueError, match=r"inputs \['smiles_text'\]"):
        register_molecule_tower(MoleculeTowerKind("text", "", ("smiles_text",), None, None, None, None))


def test_default_tower_is_the_published_mlp():
    config = CloomeConfig()
    assert config.molecule_config.encoder == "mlp"
    keys = set(CloomeModel(_config()).molecule_model.state_dict())
    assert "layers.0.dense.weight" in keys and "layers.0.norm.running_mean" in keys  # the converted weights' names


def test_graph_of_ethanol_matches_rdkit():
    featurizer = GraphFeaturizer()
    schema = featurizer.schema
    graph = featurizer.model_inputs(["OCC"])
    elements = schema["atom"]["element"]
    # atoms O, C, C: the element block is the first one-hot block
    assert graph["x"][:, :len(elements)].argmax(1).tolist() == [elements.index(e) for e in ("O", "C", "C")]
    # one column per feature is set in every atom row and every bond row
    assert (graph["x"].sum(1) == len(schema["atom"])).all()
    assert (graph["edge_attr"].sum(1) == len(schema["bond"])).all()
    # two bonds, each in both directions
    assert sorted(map(tuple, graph["edge_index"].T.tolist())) == [(0, 1), (1, 0), (1, 2), (2, 1)]
    assert graph["batch"].tolist() == [0, 0, 0]
    degree = schema["atom"]["degree"]
    start = len(elements)
    assert graph["x"][:, start:start + len(degree)].argmax(1).tolist() == [1, 2, 1]


def test_batch_of_graphs_numbers_atoms_across_molecules():
    graph = GraphFeaturizer().model_inputs(["CC", "O", "CCO"])
    assert graph["batch"].tolist() == [0, 0, 1, 2, 2, 2]
    assert graph["edge_index"].max() == 5 and {(3, 4), (4, 5)} <= set(map(tuple, graph["edge_index"].T.tolist()))


@pytest.mark.parametrize("errors", ["raise", "skip"])
def test_atom_outside_the_schema_is_an_error_naming_atom_and_molecule(errors):
    with pytest.raises(ValueError, match=r"molecule 'CC\[U\]': atom 2 \(U\) has element 'U'"):
        GraphFeaturizer().featurize(["CCO", "CC[U]"], errors=errors)
    wider = graph_schema(feature_values={"element": ["C", "O", "U"]})
    assert GraphFeaturizer(wider).model_inputs(["CC[U]"])["x"].shape[0] == 3


def test_unknown_graph_feature_is_refused_by_name():
    with pytest.raises(ValueError, match="unknown atom feature 'mass'"):
        graph_schema(atom_features=["element", "mass"])
    with pytest.raises(ValueError, match=r"not in the schema: \['colour'\]"):
        graph_schema(feature_values={"colour": [1]})


def test_invalid_smiles_refused_by_position_as_for_fingerprints():
    from cloome_hf import MoleculeFeaturizer

    messages = []
    for featurizer in (MoleculeFeaturizer(), GraphFeaturizer()):
        with pytest.raises(ValueError) as info:
            featurizer(["CCO", "C1CC", "CC O"])
        messages.append(str(info.value))
    assert messages[0] == messages[1]
    assert "'C1CC' at position 1" in messages[0]


def test_graph_featurisation_once_per_unique_molecule(monkeypatch):
    featurizer = GraphFeaturizer()
    calls = []
    original = GraphFeaturizer._encode
    monkeypatch.setattr(GraphFeaturizer, "_encode", lambda self, mol, text: calls.append(text) or original(
        self, mol, text))
    rows = featurizer(["CCO", "CCN", "CCO"] * 50)
    assert sorted(calls) == ["CCN", "CCO"] and len(rows) == 150


def test_parallel_graph_featurisation_equals_serial():
    smiles = MOLECULES * 3 + ["CCCC", "CCCN"]
    serial = GraphFeaturizer().model_inputs(smiles)
    parallel = GraphFeaturizer(parallel_threshold=1, num_workers=2)
    assert parallel._num_workers(len(smiles)) == 1  # one chunk: force two small chunks
    import cloome_hf.featurization_cloome as fc

    chunk = fc._CHUNK_SIZE
    fc._CHUNK_SIZE = 3
    try:
        assert parallel._num_workers(8) == 2
        out = parallel.model_inputs(smiles)
    finally:
        fc._CHUNK_SIZE = chunk
    for name in serial:
        np.testing.assert_array_equal(out[name], serial[name], err_msg=name)


@pytest.mark.parametrize("layer", ["gin", "gine", "nnconv"])
@pytest.mark.parametrize("readout", ["sum", "mean", "attention"])
def test_gnn_embedding_does_not_depend_on_the_batch(layer, readout):
    config = _config(**TINY_GNN, gnn_layer=layer, gnn_readout=readout)
    model = CloomeModel(config).train()  # layer norm, per-molecule readouts: independent even in training mode
    featurizer = get_molecule_tower("gnn").featurizer(config.molecule_config)
    alone = model.get_molecule_features(**_tensors(featurizer.model_inputs(["c1ccccc1O"]))).pooler_output
    for batch in (MOLECULES, MOLECULES[::-1], ["CC", "c1ccccc1O"]):
        out = model.get_molecule_features(**_tensors(featurizer.model_inputs(batch))).pooler_output
        torch.testing.assert_close(out[batch.index("c1ccccc1O")], alone[0], atol=1e-5, rtol=1e-5)


def test_gnn_edge_aware_layers_see_the_bonds():
    """Same atoms, other bond types: GINE and NNConv embed them apart, GIN (atoms only) cannot."""
    schema = graph_schema(atom_features=["element"], bond_features=["bond_type"])
    embeds = {}
    for layer in ("gin", "gine", "nnconv"):
        config = _config(**TINY_GNN, gnn_layer=layer, graph_schema=schema)
        model = CloomeModel(config).eval()
        inputs = _tensors(GraphFeaturizer(schema).model_inputs(["CC", "C=C"]))
        embeds[layer] = model.get_molecule_features(**inputs).pooler_output
    assert torch.allclose(embeds["gin"][0], embeds["gin"][1])
    assert not torch.allclose(embeds["gine"][0], embeds["gine"][1])
    assert not torch.allclose(embeds["nnconv"][0], embeds["nnconv"][1])


def test_gnn_trains_and_takes_the_dose():
    config = _config(**TINY_GNN, concentration_encoding="one_hot")
    model = CloomeModel(config).train()
    featurizer = get_molecule_tower("gnn").featurizer(config.molecule_config)
    inputs = _tensors(featurizer.model_inputs(MOLECULES[:4]))
    with pytest.raises(ValueError, match="pass concentrations"):
        model(pixel_values=torch.randn(4, 5, 64, 64), **inputs, return_loss=True)
    doses = torch.tensor([1.0, 10.0, float("nan"), 0.1])
    out = model(pixel_values=torch.randn(4, 5, 64, 64), **inputs, concentrations=doses, return_loss=True)
    out.loss.backward()
    assert model.molecule_model.convs[0].nn[0].weight.grad.abs().sum() > 0
    dosed = model.get_molecule_features(**inputs, concentrations=torch.tensor([1.0, 1.0, 1.0, 1.0])).pooler_output
    assert not torch.allclose(dosed[1], model.get_molecule_features(**inputs, concentrations=doses).pooler_output[1])


def test_inputs_of_another_tower_are_refused_by_name():
    model = CloomeModel(_config(**TINY_GNN)).eval()
    with pytest.raises(ValueError, match=r"'gnn' molecule tower takes .*missing \['x', 'edge_index'.*not taken: "
                                         r"\['fingerprints'\]"):
        model.get_molecule_features(fingerprints=torch.zeros(2, 1024))
    inputs = _tensors(GraphFeaturizer().model_inputs(["CCO"]))
    inputs["x"] = inputs["x"][:, :5]
    with pytest.raises(ValueError, match=r"x must have shape \(atoms, \d+\) float"):
        model.get_molecule_features(**inputs)


def test_cwcl_needs_fingerprints_so_it_is_refused_for_a_graph_tower():
    with pytest.raises(ValueError, match="loss 'cwcl' weighs pairs by the molecules' fingerprints"):
        CloomeConfig(vision_config=dict(TINY_VISION), molecule_config=dict(TINY_GNN), loss="cwcl")


# ------------------------------------------------------------------------------------------ transformers tower
def _lm_config(folder, **molecule):
    return _config(encoder="transformers", transformers_model=folder, **molecule)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_transformers_tower_loads_the_pretrained_model_and_pools(tiny_chem_lm_folder, pooling):
    from transformers import AutoModel, AutoTokenizer

    config = _lm_config(tiny_chem_lm_folder, token_pooling=pooling)
    model = CloomeModel(config).eval()
    reference = AutoModel.from_pretrained(tiny_chem_lm_folder).eval()
    torch.testing.assert_close(model.molecule_model.model.embeddings.word_embeddings.weight,
                               reference.embeddings.word_embeddings.weight)
    featurizer = get_molecule_tower("transformers").featurizer(config.molecule_config)
    inputs = _tensors(featurizer.model_inputs(["CCO", "Oc1ccccc1"]))
    tokens = AutoTokenizer.from_pretrained(tiny_chem_lm_folder)(["CCO", "Oc1ccccc1"], padding=True,
                                                                 return_tensors="pt")
    torch.testing.assert_close(inputs["input_ids"], tokens["input_ids"])
    with torch.no_grad():
        states = reference(**tokens).last_hidden_state
        mask = tokens["attention_mask"].unsqueeze(-1).float()
        expected = states[:, 0] if pooling == "cls" else (states * mask).sum(1) / mask.sum(1)
        pooled = model.molecule_model(**inputs).pooler_output
    torch.testing.assert_close(pooled, expected, atol=1e-5, rtol=1e-5)


def test_transformers_embedding_does_not_depend_on_padding(tiny_chem_lm_folder):
    config = _lm_config(tiny_chem_lm_folder, token_pooling="mean")
    model = CloomeModel(config).eval()
    featurizer = get_molecule_tower("transformers").featurizer(config.molecule_config)
    alone = model.get_molecule_features(**_tensors(featurizer.model_inputs(["CCO"]))).pooler_output
    padded = model.get_molecule_features(**_tensors(featurizer.model_inputs(MOLECULES))).pooler_output
    torch.testing.assert_close(padded[0], alone[0], atol=1e-5, rtol=1e-5)


def test_too_long_molecules_are_refused_or_truncated_with_a_warning(tiny_chem_lm_folder):
    long = "C" * 40  # 42 tokens with <s> and </s>; the tower reads 34
    config = _lm_config(tiny_chem_lm_folder)
    assert config.molecule_config.max_sequence_length == 34  # 36 positions less RoBERTa's padding offset
    featurizer = get_molecule_tower("transformers").featurizer(config.molecule_config)
    with pytest.raises(ValueError, match=r"molecule 'C{40}' at position 1 is 42 tokens long, more than .* 34"):
        featurizer(["CCO", long])
    truncating = get_molecule_tower("transformers").featurizer(_lm_config(tiny_chem_lm_folder,
                                                                          truncation=True).molecule_config)
    with pytest.warns(UserWarning, match="1 molecules are longer than 34 tokens and are truncated"):
        inputs = truncating.model_inputs(["CCO", long])
    assert inputs["input_ids"].shape == (2, 34) and inputs["input_ids"][1, -1] == 2  # the end token kept
    with pytest.raises(ValueError, match="exceeds what the molecule tower"):
        _lm_config(tiny_chem_lm_folder, max_sequence_length=100)


def test_transformers_tower_follows_the_models_attn_implementation_and_builds_on_meta(tiny_chem_lm_folder,
                                                                                         tmp_path):
    config = _lm_config(tiny_chem_lm_folder)
    CloomeModel(config).save_pretrained(tmp_path / "cloome")
    default = CloomeModel.from_pretrained(tmp_path / "cloome")
    eager = CloomeModel.from_pretrained(tmp_path / "cloome", attn_implementation="eager")
    assert default.molecule_model.model.config._attn_implementation == "sdpa"  # the LM's own default is kept
    assert eager.molecule_model.model.config._attn_implementation == "eager"
    with torch.device("meta"):  # a skeleton (no pretrained weights to load into), as transformers builds one
        skeleton = CloomeModel(config)
    assert skeleton.molecule_model.model.embeddings.word_embeddings.weight.is_meta


REMOTE_LM = '''
import pathlib
pathlib.Path({marker!r}).write_text("the tower's code ran")

import torch
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput


class TinyLMConfig(PretrainedConfig):
    model_type = "tiny_remote_lm"

    def __init__(self, vocab_size=64, hidden_size=8, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size, self.hidden_size = vocab_size, hidden_size


class TinyLM(PreTrainedModel):
    config_class = TinyLMConfig
    base_model_prefix = "tiny"

    def __init__(self, config):
        super().__init__(config)
        self.embed = torch.nn.Embedding(config.vocab_size, config.hidden_size)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, output_hidden_states=False, return_dict=True):
        return BaseModelOutput(last_hidden_state=self.embed(input_ids))
'''


def test_remote_code_tower_runs_only_with_trust_remote_code(tiny_chem_lm_folder, tmp_path):
    import shutil

    from safetensors.torch import save_file

    folder, marker = tmp_path / "remote-lm", tmp_path / "code-ran.txt"
    folder.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(tiny_chem_lm_folder, name), folder / name)
    (folder / "tiny_lm.py").write_text(REMOTE_LM.format(marker=str(marker)))
    (folder / "config.json").write_text(json.dumps({
        "model_type": "tiny_remote_lm", "vocab_size": 64, "hidden_size": 8, "max_position_embeddings": 40,
        "auto_map": {"AutoConfig": "tiny_lm.TinyLMConfig", "AutoModel": "tiny_lm.TinyLM"}}))
    weights = {"embed.weight": torch.randn(64, 8)}
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"remote code .*tiny_lm.TinyLM.*trust_remote_code=True"):
        _lm_config(str(folder))
    assert not marker.exists()  # refused after reading config.json as JSON, before importing any code
    config = _lm_config(str(folder), token_pooling="mean", trust_remote_code=True)
    model = CloomeModel(config).eval()
    assert marker.exists() and torch.equal(model.molecule_model.model.embed.weight, weights["embed.weight"])
    featurizer = get_molecule_tower("transformers").featurizer(config.molecule_config)
    inputs = _tensors(featurizer.model_inputs(["CCO", "CCN"]))
    expected = model.get_molecule_features(**inputs).pooler_output
    model.save_pretrained(tmp_path / "cloome")
    assert "trust_remote_code" not in (tmp_path / "cloome" / "config.json").read_text()
    with pytest.raises(ValueError, match="is remote code"):
        CloomeModel.from_pretrained(tmp_path / "cloome")
    reloaded = CloomeModel.from_pretrained(tmp_path / "cloome", trust_remote_code=True).eval()
    torch.testing.assert_close(reloaded.get_molecule_features(**inputs).pooler_output, expected)


def test_missing_transformers_model_is_refused_naming_it(tmp_path):
    with pytest.raises(ValueError, match=r"molecule tower '.*no-such-lm' was not found"):
        _lm_config(str(tmp_path / "no-such-lm"))


def test_chemberta_recipe_builds_a_transformers_tower_and_its_processor(tiny_chem_lm_folder, tmp_path):
    from cloome_hf.recipes import get_recipe
    from cloome_hf.train.params import parse_args
    from cloome_hf.train.setup import build_model, build_processor

    recipe = get_recipe("chemberta-style")
    assert recipe.model["molecule_model"] == "seyonec/ChemBERTa-zinc-base-v1"
    assert "seyonec/ChemBERTa-zinc-base-v1" in recipe.description and "trust_remote_code" in recipe.description
    model_args, data_args, _, _ = parse_args(["--recipe", "chemberta-style", "--output_dir", str(tmp_path),
                                              "--molecule_model", tiny_chem_lm_folder, "--vision_layers", "1", "1",
                                              "1", "1", "--base_width", "8", "--head_pool_size", "2"])
    model = build_model(model_args, data_args)
    molecule = model.config.molecule_config
    assert molecule.encoder == "transformers" and molecule.token_pooling == "cls"
    processor = build_processor(model_args, data_args)
    processor.check_model_compatibility(model.config)
    assert set(processor(smiles=["CCO"])) == {"input_ids", "attention_mask"}


def test_readme_molecule_towers_example_runs():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme.split("<!-- BEGIN molecule-towers -->", 1)[1].split("<!-- END molecule-towers -->", 1)[0]
    namespace: dict = {}
    exec(compile(section.split("```python\n", 1)[1].split("```", 1)[0], "README-molecule-towers", "exec"), namespace)
    assert namespace["embeds"].shape == (2, 32)
    assert set(namespace["batch"]) == {"x", "edge_index", "edge_attr", "batch"}
