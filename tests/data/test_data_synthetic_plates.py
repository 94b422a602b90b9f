"""Synthetic plate layouts: controls on every plate, replicates across plates and batches, plate effects,
inactive compounds drawn like DMSO, MoAs sharing a phenotype, the annotation table."""

import numpy as np
import pytest

from cloome_hf.channels import CHANNELS
from cloome_hf.data import decode_image
from cloome_hf.data.synthetic import Phenotype, render_site
from cloome_hf.data.synthetic_plates import (
    DMSO_SMILES,
    make_synthetic_plates,
    plan_synthetic_plates,
    site_intensity_features,
)

KW = dict(num_compounds=12, num_moas=3, inactive_fraction=0.25, replicates=4, controls_per_plate=4,
          num_plate_maps=2, num_batches=2, image_size=24, seed=3)


@pytest.fixture(scope="module")
def plan():
    return plan_synthetic_plates(**KW)


def test_layout(plan):
    rec = plan.records
    assert rec.plate.nunique() == 8 and rec.batch.nunique() == 2
    for plate, sites in rec.groupby("plate"):
        assert (sites.perturbation_type == "negcon").sum() == 4  # DMSO on every plate
        assert sites.well.is_unique and sites.batch.nunique() == 1
    assert set(rec.perturbation_type) == {"negcon", "trt"}
    assert (rec.smiles[rec.perturbation_type == "negcon"] == DMSO_SMILES).all()
    compounds = rec[rec.perturbation_type == "trt"]
    per_compound = compounds.groupby("inchikey").agg(plates=("plate", "nunique"), batches=("batch", "nunique"),
                                                     wells=("well", "size"))
    assert len(per_compound) == 12 and (per_compound.plates == 4).all() and (per_compound.batches == 2).all()
    assert (per_compound.wells == 4).all()


def test_annotations_and_phenotypes(plan):
    ann = plan.annotations
    assert list(ann.columns) == ["inchikey", "smiles", "name", "moa", "target", "active"]
    assert ann.active.sum() == 9 and ann.moa[~ann.active].isna().all() and ann.target[~ann.active].isna().all()
    assert set(ann.moa.dropna()) == {"MOA01", "MOA02", "MOA03"}
    for moa, rows in ann[ann.active].groupby("moa"):
        targets = [set(t.split("|")) for t in rows.target]
        shared = set.intersection(*targets)
        assert shared == {f"GENE{int(moa[3:])}A"} and any(len(t) == 2 for t in targets)
    index = dict(zip(plan.records.inchikey, plan.records.molecule_index))
    latent = {k: plan.latent[i] for k, i in index.items()}
    dmso = plan.records.inchikey[plan.records.perturbation_type == "negcon"].iloc[0]
    assert not latent[dmso].any()
    for key in ann.inchikey[~ann.active]:
        assert np.array_equal(latent[key], latent[dmso])  # inactive compounds are drawn like DMSO
    act = ann[ann.active].reset_index(drop=True)
    z = np.stack([latent[k] for k in act.inchikey])
    dist = np.linalg.norm(z[:, None] - z[None], axis=-1)
    same = act.moa.to_numpy()[:, None] == act.moa.to_numpy()[None]
    off_diagonal = ~np.eye(len(act), dtype=bool)
    assert dist[same & off_diagonal].mean() < dist[~same].mean()  # one MoA, one phenotype


def test_plate_effects_are_channel_gains_and_offsets(plan):
    assert plan.plate_gains.shape == plan.plate_offsets.shape == (8, 5)
    assert (plan.plate_offsets >= 0).all() and plan.plate_offsets.std(0).min() > 0
    # an offset adds its (vignetted) counts to the expected image; the same seed otherwise renders the same cells
    pheno = Phenotype.from_latent(np.zeros(12))
    base = render_site(pheno, np.random.default_rng(7), (32, 32), np.ones(5)).astype(float)
    shifted = render_site(pheno, np.random.default_rng(7), (32, 32), np.ones(5),
                          np.array([0, 0, 0, 0, 400.0])).astype(float)
    assert np.abs(shifted[:4] - base[:4]).max() <= 60  # Poisson noise only
    assert 300 < (shifted[4] - base[4]).mean() < 420


def test_dataset_and_features(plan):
    ds = make_synthetic_plates(**KW)
    assert len(ds) == len(plan.records)
    assert {"perturbation_type", "batch", "source", "moa", "target"} <= set(ds.column_names)
    assert ds["perturbation_type"] == plan.records.perturbation_type.tolist()
    image = decode_image(ds[0]["image"], ds[0]["image_shape"])
    assert image.shape == (len(CHANNELS), 24, 24)
    site = np.arange(5 * 6 * 8, dtype=np.uint16).reshape(5, 6, 8)
    feats = site_intensity_features(site).reshape(5, 9)
    flat = site.reshape(5, -1).astype(float)
    np.testing.assert_allclose(feats[:, 0], flat.mean(1))
    np.testing.assert_allclose(feats[:, 4], np.median(flat, 1))
    np.testing.assert_allclose(feats[:, 7], (1 + 8) / 2)  # mean |d/dy| = 8, mean |d/dx| = 1
    with pytest.raises(ValueError, match="num_batches must lie in"):
        plan_synthetic_plates(replicates=2, num_batches=3)
