"""Synthetic Cell Painting: schema, determinism, phenotype = f(structure), separability by a simple model."""

import numpy as np
import pytest
from rdkit import Chem, DataStructs
from rdkit.Chem import rdFingerprintGenerator

from cloome_hf.channels import CHANNELS
from cloome_hf.data import bundled_molecules, channels_of, decode_image, make_synthetic_dataset
from cloome_hf.data.synthetic import molecule_latent, plan_synthetic


@pytest.fixture(scope="module")
def syn():
    return make_synthetic_dataset(num_molecules=80, sites_per_molecule=3, num_plates=2, image_size=48, seed=0)


def _images(ds):
    return np.stack([decode_image(d, s) for d, s in zip(ds["image"], ds["image_shape"])])


def test_schema_layout_and_determinism(syn):
    assert {"sample_key", "plate", "well", "site", "smiles", "inchikey", "image", "image_shape"} <= set(syn.column_names)
    assert channels_of(syn) == CHANNELS
    assert len(syn) == 240 and len(set(syn["sample_key"])) == 240
    assert len(set(syn["inchikey"])) == 80 and set(syn["plate"]) == {"SYN0001", "SYN0002"}
    # every molecule is replicated across plates, so plate is not a proxy of molecule identity
    plates_per_mol = {}
    for k, p in zip(syn["inchikey"], syn["plate"]):
        plates_per_mol.setdefault(k, set()).add(p)
    assert all(len(v) == 2 for v in plates_per_mol.values())
    images = _images(syn.select(range(6)))
    assert images.shape == (6, 5, 48, 48) and images.dtype == np.uint8
    # 8-bit images in the range of the real Bray data (channel means ~30-55) and not blank
    assert 10 < images.mean() < 90 and (images.reshape(6, 5, -1).max(-1) > 100).all()
    again = make_synthetic_dataset(num_molecules=80, sites_per_molecule=3, num_plates=2, image_size=48, seed=0)
    assert again.select(range(6))["image"] == syn.select(range(6))["image"]
    other = make_synthetic_dataset(num_molecules=2, sites_per_molecule=1, num_plates=1, image_size=48, seed=1)
    assert other[0]["image"] != syn[0]["image"]


def test_real_molecules_and_keys(syn):
    mols = bundled_molecules()
    assert len(mols) >= 1200 and mols.inchikey.is_unique
    for smi, key in zip(syn["smiles"][:20], syn["inchikey"][:20]):
        assert Chem.MolToInchiKey(Chem.MolFromSmiles(smi)) == key


def test_latent_is_a_smooth_function_of_the_fingerprint():
    smiles = bundled_molecules().smiles[:150].tolist()
    z = molecule_latent(smiles)
    assert np.array_equal(z, molecule_latent(smiles))  # fixed projection, independent of any dataset seed
    assert z.shape == (150, 12) and np.abs(z).max() < 1 and z.std(0).min() > 0.3
    # independent Tanimoto similarities: more similar structures -> closer phenotypes
    gen = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=2048)
    fps = [gen.GetFingerprint(Chem.MolFromSmiles(s)) for s in smiles]
    sim = np.array([DataStructs.BulkTanimotoSimilarity(f, fps) for f in fps])
    dist = np.sqrt(((z[:, None] - z[None]) ** 2).sum(-1))
    iu = np.triu_indices(len(smiles), 1)
    sim, dist = sim[iu], dist[iu]
    assert (sim > 0.5).sum() >= 5
    assert dist[sim > 0.5].mean() < 0.65 * dist.mean() and dist[sim > 0.3].mean() < 0.85 * dist.mean()


def test_simple_features_predict_phenotype_of_unseen_molecules(syn):
    """Per-channel intensity / coverage / edge statistics regress the generating latent on held-out molecules,
    and identify the held-out molecule far above chance: the data are learnable from pixels."""
    x = _images(syn).astype(np.float32)
    feats = np.concatenate([x.mean((2, 3)), x.std((2, 3)), (x > 64).mean((2, 3)), (x > 128).mean((2, 3)),
                            np.abs(np.diff(x, axis=3)).mean((2, 3)), np.abs(np.diff(x, axis=2)).mean((2, 3))], 1)
    feats = (feats - feats.mean(0)) / feats.std(0)
    z, mol = np.asarray(syn["phenotype"]), np.asarray(syn["molecule_index"])
    train, test = mol < 60, mol >= 60

    def ridge_fit_predict(f_train, y_train, f_test, lam=1.0):
        a = np.c_[f_train, np.ones(len(f_train))]
        w = np.linalg.solve(a.T @ a + lam * np.eye(a.shape[1]), a.T @ y_train)
        return np.c_[f_test, np.ones(len(f_test))] @ w

    def r2(y, p):
        return float(np.mean(1 - ((y - p) ** 2).sum(0) / ((y - y.mean(0)) ** 2).sum(0)))

    pred = ridge_fit_predict(feats[train], z[train], feats[test])
    shuffled = ridge_fit_predict(feats[train], z[train][np.random.default_rng(0).permutation(train.sum())],
                                 feats[test])
    assert r2(z[test], pred) > 0.4 and r2(z[test], shuffled) < 0.05
    test_mols = np.unique(mol[test])
    latents = np.stack([z[mol == m][0] for m in test_mols])
    nearest = test_mols[((pred[:, None] - latents[None]) ** 2).sum(-1).argmin(1)]
    assert (nearest == mol[test]).mean() > 0.6  # chance: 1/20


def test_plan_rejects_bad_arguments():
    with pytest.raises(ValueError, match="num_molecules=5000"):
        plan_synthetic(num_molecules=5000)
    with pytest.raises(ValueError, match="invalid SMILES"):
        plan_synthetic(num_molecules=2, smiles=["CCO", "C1CC"])
