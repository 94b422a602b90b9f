"""MoleculeFeaturizer against RDKit's classic fingerprint calls on 1,000 real Bray 2017 SMILES."""

import csv
from pathlib import Path

import numpy as np
import pytest
from rdkit import Chem, DataStructs, RDLogger
from rdkit.Chem import AllChem
from rdkit.Chem import rdFingerprintGenerator

import cloome_hf.featurization_cloome as featurization
from cloome_hf.featurization_cloome import MoleculeFeaturizer


RDLogger.DisableLog("rdApp.*")  # the classic Morgan call warns that it is deprecated
INDEX = Path(__file__).resolve().parents[1] / "fixtures" / "bray2017_index_sample.csv"


@pytest.fixture(scope="module")
def smiles():
    with open(INDEX, newline="") as f:
        return [row["SMILES"] for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def mols(smiles):
    return [Chem.MolFromSmiles(s) for s in smiles]


def classic_morgan_bits(mol, radius=3, n_bits=1024, chirality=True):
    fp = AllChem.GetMorganFingerprintAsBitVect(mol, radius, nBits=n_bits, useChirality=chirality)
    out = np.zeros((n_bits,), dtype=np.float64)
    DataStructs.ConvertToNumpyArray(fp, out)
    return out


def classic_morgan_counts(mol, radius=3, n_bits=1024, chirality=True):
    fp = AllChem.GetHashedMorganFingerprint(mol, radius, nBits=n_bits, useChirality=chirality)
    out = np.zeros((n_bits,), dtype=np.float64)
    for index, count in fp.GetNonzeroElements().items():
        out[index] = count
    return out


def test_morgan_matches_classic_rdkit_on_1000_real_smiles(smiles, mols):
    assert len(smiles) == 1000 and all(m is not None for m in mols)
    fingerprints = MoleculeFeaturizer()(smiles)
    assert fingerprints.shape == (1000, 1024) and fingerprints.dtype == np.float32
    expected = np.stack([classic_morgan_bits(m) for m in mols])
    np.testing.assert_array_equal(fingerprints, expected)


def test_morgan_settings_are_honoured(smiles, mols):
    fingerprints = MoleculeFeaturizer(fingerprint_size=256, radius=2, use_chirality=False)(smiles[:100])
    expected = np.stack([classic_morgan_bits(m, 2, 256, False) for m in mols[:100]])
    np.testing.assert_array_equal(fingerprints, expected)


def test_count_kinds(smiles, mols):
    subset, sub_mols = smiles[:150], mols[:150]
    morgan_counts = MoleculeFeaturizer(kind="morgan_count")(subset)
    np.testing.assert_array_equal(morgan_counts, np.stack([classic_morgan_counts(m) for m in sub_mols]))
    path = rdFingerprintGenerator.GetRDKitFPGenerator(minPath=1, maxPath=7, fpSize=8192)
    rdkit_counts = np.stack([path.GetCountFingerprintAsNumPy(m) for m in sub_mols]).astype(np.float64)
    combined = MoleculeFeaturizer(kind="morgan_rdkit_max")(subset)
    assert combined.shape == (150, 8192)
    expected = np.maximum(np.stack([classic_morgan_counts(m, n_bits=8192) for m in sub_mols]), rdkit_counts)
    np.testing.assert_array_equal(combined, expected)
    small_path = rdFingerprintGenerator.GetRDKitFPGenerator(minPath=1, maxPath=5, fpSize=512)
    np.testing.assert_array_equal(
        MoleculeFeaturizer(kind="rdkit_count", fingerprint_size=512, max_path=5)(subset),
        np.stack([small_path.GetCountFingerprintAsNumPy(m) for m in sub_mols]),
    )


def test_invalid_smiles_are_named_with_position():
    featurizer = MoleculeFeaturizer()
    with pytest.raises(ValueError, match=r"Invalid SMILES 'C1CC' at position 2"):
        featurizer(["CCO", "c1ccccc1", "C1CC", "CC"])
    with pytest.raises(ValueError, match=r"Invalid SMILES '' at position 1"):
        featurizer(["CCO", ""])
    with pytest.raises(ValueError, match=r"Invalid SMILES None at position 0"):
        featurizer([None, "CCO"])
    rows, failed = featurizer.featurize(["CCO", "not_a_smiles", "c1ccccc1", "CCO", "  "], errors="skip")
    assert failed == [1, 4]
    np.testing.assert_array_equal(rows, featurizer(["CCO", "c1ccccc1", "CCO"]))
    with pytest.raises(ValueError, match="errors"):
        featurizer.featurize(["CCO"], errors="ignore")


def test_inchi_input_matches_smiles():
    featurizer = MoleculeFeaturizer()
    aspirin_inchi = "InChI=1S/C9H8O4/c1-6(10)13-8-5-3-2-4-7(8)9(11)12/h2-5H,1H3,(H,11,12)"
    from_inchi = featurizer([aspirin_inchi])
    np.testing.assert_array_equal(from_inchi, featurizer(["CC(=O)Oc1ccccc1C(=O)O"]))
    np.testing.assert_array_equal(from_inchi[0], classic_morgan_bits(Chem.MolFromInchi(aspirin_inchi)))


def test_duplicates_are_featurised_once(smiles, monkeypatch):
    calls = []
    original = featurization.parse_molecule
    monkeypatch.setattr(featurization, "parse_molecule", lambda text: calls.append(text) or original(text))
    batch = smiles[:10] + smiles[:5] + smiles[3:8]
    fingerprints = MoleculeFeaturizer()(batch)
    assert len(calls) == 10
    np.testing.assert_array_equal(fingerprints[10:15], fingerprints[:5])
    np.testing.assert_array_equal(fingerprints[15:], fingerprints[3:8])


def test_process_pool_matches_serial(smiles):
    batch = smiles + ["bad((", "CCO"] + smiles[:200]
    serial_rows, serial_failed = MoleculeFeaturizer(parallel_threshold=10**9).featurize(batch, errors="skip")
    parallel = MoleculeFeaturizer(parallel_threshold=100, num_workers=2)
    assert parallel._num_workers(1001) == 2
    rows, failed = parallel.featurize(batch, errors="skip")
    assert failed == serial_failed == [1000]
    np.testing.assert_array_equal(rows, serial_rows)


def test_config_round_trip_and_validation():
    featurizer = MoleculeFeaturizer(kind="morgan_rdkit_max", radius=2, max_path=6)
    assert featurizer.fingerprint_size == 8192
    assert MoleculeFeaturizer.from_dict(featurizer.to_dict()) == featurizer
    with pytest.raises(ValueError, match="Unknown fingerprint kind 'ecfp'"):
        MoleculeFeaturizer(kind="ecfp")
    with pytest.raises(ValueError, match="fingerprint_size"):
        MoleculeFeaturizer(fingerprint_size=0)
