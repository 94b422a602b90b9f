"""Dose conditioning (issue 17): the concentration column from the sources to the store, the loader's
``concentrations``, the processor, the molecule tower's encoding, the synthetic dose-response, and training that
tells two doses of one molecule apart."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY_MOLECULE, TINY_VISION

from cloome_hf import CloomeConfig, CloomeModel, CloomeProcessor, MoleculeFeaturizer
from cloome_hf.data import build_dataloader, load_cell_painting, open_source, prepare_dataset, write_synthetic_layout
from cloome_hf.data.synthetic import dose_response
from cloome_hf.data.synthetic_plates import make_synthetic_plates, plan_synthetic_plates, site_intensity_features
from cloome_hf.image_processing_cloome import CloomeImageProcessor
from cloome_hf.modeling_cloome import CloomeConcentrationEncoding

NAN = float("nan")


def dose_config(encoding="one_hot", **molecule):
    return CloomeConfig(vision_config=dict(TINY_VISION), projection_dim=16,
                        molecule_config=dict(TINY_MOLECULE, concentration_encoding=encoding, **molecule))


@pytest.fixture(scope="module")
def dose_plates():
    """16 active compounds at 0.1 and 10 uM, 2 replicates each, 64 px (the tiny model's input size)."""
    kwargs = dict(num_compounds=16, num_moas=2, inactive_fraction=0.0, replicates=2, controls_per_plate=1,
                  doses=[0.1, 10.0], image_size=64, phenotype_strength=0.8, seed=0)
    ds = make_synthetic_plates(**kwargs)
    return ds.filter(lambda kind: kind == "trt", input_columns=["perturbation_type"]), kwargs


# --- the encoding and the model ----------------------------------------------------------------------------------


def test_encodings_match_a_loop_over_the_definition():
    edges = [0.1, 1.0, 10.0]
    doses = [0.05, 0.1, 0.5, 1.0, 9.99, 10.0, 100.0, 0.0, NAN]
    one_hot = CloomeConcentrationEncoding(dose_config(concentration_buckets=edges).molecule_config)
    linear = CloomeConcentrationEncoding(dose_config("linear").molecule_config)
    got_one_hot, got_linear = one_hot(torch.tensor(doses)), linear(torch.tensor(doses))
    for i, c in enumerate(doses):
        expected = [0.0] * (len(edges) + 1)
        known = c > 0  # a zero (vehicle) or unknown (NaN) dose carries no dose information
        if known:
            expected[sum(edge <= c for edge in edges)] = 1.0  # buckets are left-closed
        assert got_one_hot[i].tolist() == expected, c
        assert got_linear[i].tolist() == pytest.approx([math.log10(c), 1.0] if known else [0.0, 0.0]), c


def test_the_model_takes_the_dose_only_when_it_encodes_it():
    images = torch.randn(3, 5, 64, 64)
    fingerprints = (torch.rand(3, TINY_MOLECULE["fingerprint_size"]) > 0.7).float()
    model = CloomeModel(dose_config()).eval()
    with pytest.raises(ValueError, match="pass concentrations"):
        model.get_molecule_features(fingerprints)
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        model.get_molecule_features(fingerprints, torch.ones(2))
    for bad in (-1.0, math.inf):
        with pytest.raises(ValueError, match=r"concentrations\[1\]"):
            model.get_molecule_features(fingerprints, torch.tensor([1.0, bad, 1.0]))
    with pytest.raises(ValueError, match="with fingerprints"):
        model(pixel_values=images, concentrations=torch.ones(3))
    plain = CloomeModel(CloomeConfig(vision_config=dict(TINY_VISION), molecule_config=dict(TINY_MOLECULE),
                                     projection_dim=16)).eval()
    with pytest.raises(ValueError, match="no dose conditioning"):
        plain(pixel_values=images, fingerprints=fingerprints, concentrations=torch.ones(3))


@pytest.mark.parametrize("encoding", ["one_hot", "linear"])
def test_the_molecule_tower_output_depends_on_the_dose(encoding):
    model = CloomeModel(dose_config(encoding)).eval()
    fingerprint = (torch.rand(1, TINY_MOLECULE["fingerprint_size"]) > 0.7).float().repeat(4, 1)
    with torch.no_grad():
        features = model.get_molecule_features(fingerprint, torch.tensor([0.1, 10.0, 0.0, NAN])).pooler_output
    assert not torch.allclose(features[0], features[1])  # one molecule, two doses: two embeddings
    torch.testing.assert_close(features[2], features[3])  # zero and unknown doses: both "no dose information"
    assert model.molecule_model.layers[0].dense.in_features == (
        TINY_MOLECULE["fingerprint_size"] + model.config.molecule_config.num_concentration_features)


def test_processor_passes_checked_doses_to_the_model():
    processor = CloomeProcessor(featurizer=MoleculeFeaturizer(fingerprint_size=TINY_MOLECULE["fingerprint_size"]))
    batch = processor(smiles=["CCO", "CCN"], concentrations=[0.5, None], return_tensors="pt")
    assert batch["concentrations"].dtype == torch.float32
    assert batch["concentrations"][0].item() == 0.5 and math.isnan(batch["concentrations"][1].item())
    model = CloomeModel(dose_config()).eval()
    with torch.no_grad():
        via_processor = model.get_molecule_features(**batch).pooler_output
        direct = model.get_molecule_features(batch["fingerprints"], torch.tensor([0.5, NAN])).pooler_output
    torch.testing.assert_close(via_processor, direct)
    assert processor(smiles="CCO", concentrations=3.0)["concentrations"].tolist() == [3.0]
    for bad, message in [([1.0], "1 concentrations for 2"), ([1.0, -2.0], "-2.0"), ([1.0, "ten"], "'ten'")]:
        with pytest.raises(ValueError, match=message):
            processor(smiles=["CCO", "CCN"], concentrations=bad)
    with pytest.raises(ValueError, match="with smiles"):
        processor(concentrations=[1.0])


# --- the data path: sources, prepare, loader, store ----------------------------------------------------------------


@pytest.fixture(scope="module")
def npz_layout(tmp_path_factory):
    root = tmp_path_factory.mktemp("dose_layout")
    return write_synthetic_layout(root, "bray_npz", num_molecules=3, sites_per_molecule=2, num_plates=2,
                                  image_size=(32, 40))


def _index_with(layout, tmp_path, column, values):
    index = pd.read_csv(layout["index"])
    index[column] = values
    path = tmp_path / f"index_{column}.csv"
    index.to_csv(path, index=False)
    return str(path), index


def test_a_source_dose_column_is_carried_through_prepare(npz_layout, tmp_path):
    doses = [0.1, 1.0, 10.0, np.nan, 0.0, 3.0]
    path, index = _index_with(npz_layout, tmp_path, "concentration", doses)
    report = prepare_dataset(open_source("bray_npz", index=path, root=npz_layout["root"]), tmp_path / "out",
                             progress=False)
    assert report["complete"]
    ds = load_cell_painting(tmp_path / "out", split="train", cache_dir=str(tmp_path / "cache"))
    got = dict(zip(ds["sample_key"], ds["concentration"]))
    for key, dose in zip(index.SAMPLE_KEY, doses):
        assert got[key] == pytest.approx(dose, nan_ok=True)
    # the Broad / LINCS column is in mM
    path, index = _index_with(npz_layout, tmp_path, "Metadata_mmoles_per_liter", [0.01, 0.001, 0, 0, 0, 0])
    records = open_source("bray_npz", index=path, root=npz_layout["root"]).records
    assert records.set_index("sample_key").loc[index.SAMPLE_KEY[:2], "concentration"].tolist() == [10.0, 1.0]


@pytest.mark.parametrize("bad", [-1.0, "10 uM"])
def test_a_bad_dose_is_refused_naming_the_sample(npz_layout, tmp_path, bad):
    path, index = _index_with(npz_layout, tmp_path, "concentration", [1.0, 1.0, bad, 1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match=f"sample {index.SAMPLE_KEY[2]}"):
        open_source("bray_npz", index=path, root=npz_layout["root"])


def test_the_loader_yields_the_doses_of_its_sites(dose_plates):
    ds, _ = dose_plates
    expected = dict(zip(ds["sample_key"], ds["concentration"]))
    featurizer = MoleculeFeaturizer(fingerprint_size=TINY_MOLECULE["fingerprint_size"])
    for train in (True, False):
        for batch in build_dataloader(ds, featurizer, batch_size=8, train=train):
            assert batch["concentrations"].dtype == torch.float32
            assert batch["concentrations"].tolist() == pytest.approx([expected[k] for k in batch["sample_key"]])
    plain = ds.remove_columns("concentration")
    assert "concentrations" not in next(iter(build_dataloader(plain, featurizer, batch_size=8, train=False)))


def test_embed_stores_the_dose_of_every_site(dose_plates, tmp_path):
    from cloome_hf.cli import embed
    from cloome_hf.inference.store import read_embeddings

    ds, _ = dose_plates
    ds.save_to_disk(str(tmp_path / "sites"))
    model = CloomeModel(CloomeConfig(vision_config=dict(TINY_VISION), molecule_config=dict(TINY_MOLECULE),
                                     projection_dim=16))
    model.save_pretrained(tmp_path / "model")
    CloomeProcessor(CloomeImageProcessor(do_center_crop=False),
                    MoleculeFeaturizer(fingerprint_size=TINY_MOLECULE["fingerprint_size"])).save_pretrained(
        tmp_path / "model")
    embed.main(["--model", str(tmp_path / "model"), "--dataset", str(tmp_path / "sites"), "--output_dir",
                str(tmp_path / "store"), "--batch_size", "16"])
    stored = read_embeddings(str(tmp_path / "store" / "images")).to_pandas()
    assert dict(zip(stored.sample_key, stored.concentration)) == dict(zip(ds["sample_key"], ds["concentration"]))


# --- the synthetic dose-response -----------------------------------------------------------------------------------


def test_synthetic_phenotype_grows_with_the_dose():
    doses = [0.03, 0.3, 3.0, 30.0]
    plan = plan_synthetic_plates(num_compounds=8, inactive_fraction=0.25, replicates=2, controls_per_plate=4,
                                 doses=doses, image_size=48, phenotype_strength=0.8, seed=1)
    records, annotations = plan.records, plan.annotations.set_index("inchikey")
    assert sorted(set(records.concentration[records.perturbation_type == "trt"])) == doses
    assert (records.concentration[records.perturbation_type == "negcon"] == 0).all()
    assert ((annotations.ec50 >= min(doses)) & (annotations.ec50 <= max(doses))).all()
    trt = records[records.perturbation_type == "trt"]
    hill = trt.concentration / (trt.concentration + annotations.ec50.loc[trt.inchikey].to_numpy())
    np.testing.assert_allclose(trt.response, hill)
    np.testing.assert_allclose(dose_response(np.array([0.0, 2.0]), 2.0), [0.0, 0.5])

    from cloome_hf.data.synthetic import iter_synthetic_sites

    features = np.stack([site_intensity_features(site) for _, site in iter_synthetic_sites(plan)])
    features = (features - features.mean(0)) / (features.std(0) + 1e-9)
    dmso = features[(records.perturbation_type == "negcon").to_numpy()].mean(0)
    active = records.inchikey.map(annotations.active).fillna(False).to_numpy(bool)
    distance = [np.linalg.norm(features[active & (records.concentration == c).to_numpy()] - dmso, axis=1).mean()
                for c in doses]
    assert all(a < b for a, b in zip(distance, distance[1:])), distance  # image features: farther from DMSO
    inactive = (~active & (records.perturbation_type == "trt")).to_numpy()
    assert np.all(np.stack([plan.latent[i] for i in records.molecule_index[inactive]]) == 0)
    assert "concentration" not in plan_synthetic_plates(num_compounds=4, replicates=2, controls_per_plate=1).records


def test_structure_phenotype_is_the_embedded_generators_map():
    from cloome_hf.data.synthetic import molecule_latent

    plan = plan_synthetic_plates(num_compounds=10, inactive_fraction=0.3, replicates=2, controls_per_plate=1,
                                 phenotype="structure", seed=2)
    annotations = plan.annotations
    expected = np.where(annotations.active.to_numpy()[:, None], molecule_latent(list(annotations.smiles)), 0.0)
    np.testing.assert_allclose(plan.latent[1:], expected)
    assert annotations.moa.isna().all()
    with pytest.raises(ValueError, match="phenotype"):
        plan_synthetic_plates(phenotype="random")
    with pytest.raises(ValueError, match="doses"):
        plan_synthetic_plates(doses=[1.0, -1.0])


# --- training separates two doses of one molecule ------------------------------------------------------------------


def _dose_discrimination(model, processor, ds) -> float:
    """Fraction of (molecule, dose) whose mean image embedding is closer to the molecule's embedding at that dose
    than at the other dose (0.5: no dose information; ties count as failures)."""
    from cloome_hf.inference.encode import encode_dataset

    embeddings = encode_dataset(model, processor, ds)
    sites, molecules = embeddings.metadata, embeddings.molecules
    assert len(molecules) == 2 * sites.inchikey.nunique()  # one embedding per molecule and dose
    hits = []
    for key, group in sites.groupby("inchikey"):
        for dose in (0.1, 10.0):
            image = embeddings.image[group.index[group.concentration == dose]].mean(0)
            own = molecules.index[(molecules.inchikey == key) & (molecules.concentration == dose)][0]
            other = molecules.index[(molecules.inchikey == key) & (molecules.concentration != dose)][0]
            assert (embeddings.molecule_index[group.index[group.concentration == dose]] == own).all()
            hits.append(image @ embeddings.molecule[own] > image @ embeddings.molecule[other])
    return float(np.mean(hits))


def test_training_separates_two_doses_of_one_molecule(dose_plates, one_thread):
    ds, _ = dose_plates
    torch.manual_seed(0)
    model = CloomeModel(dose_config())
    featurizer = MoleculeFeaturizer(fingerprint_size=TINY_MOLECULE["fingerprint_size"])
    processor = CloomeProcessor(CloomeImageProcessor(do_center_crop=False), featurizer)
    before = _dose_discrimination(model, processor, ds)
    loader = build_dataloader(ds, featurizer, batch_size=16, train=True, seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    model.train()
    for epoch in range(15):
        loader.set_epoch(epoch)
        for batch in loader:
            loss = model(pixel_values=batch["pixel_values"], fingerprints=batch["fingerprints"],
                         concentrations=batch["concentrations"], return_loss=True).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            model.clamp_logit_scale()
    after = _dose_discrimination(model, processor, ds)
    assert after >= 0.8 and after > before + 0.2, (before, after)
