"""The plate-by-plate profiling path gives, bit for bit, what whole-table pycytominer and copairs calls give.

The reference is the path before the scale work, written here with the libraries called directly: per-plate
``pycytominer.normalize`` on each plate's ``groupby`` slice, one whole-table ``pycytominer.normalize(method=
"spherize")``, and one copairs call over all wells for phenotypic activity. Rows are interleaved across plates and
the features are float32, as profiles from the embedding store are.
"""

import importlib

import numpy as np
import pandas as pd
import pytest
from copairs.map import average_precision, mean_average_precision

from cloome_hf.profiling import normalize, phenotypic_activity

normalize_module = importlib.import_module("cloome_hf.profiling.normalize")  # the module, not the function
NEGCON = "Metadata_pert_type == 'negcon'"
DIM, PLATES, CONTROLS, COMPOUNDS = 24, 9, 12, 20


def _wells(seed: int = 0) -> pd.DataFrame:
    """``PLATES`` plates, each with ``CONTROLS`` DMSO wells and the same ``COMPOUNDS`` compounds; plate shifts;
    rows shuffled so that no plate is contiguous."""
    rng = np.random.default_rng(seed)
    effects = rng.normal(0, 1, (COMPOUNDS, DIM)) * (rng.random(COMPOUNDS) < 0.5)[:, None]
    meta, values = [], []
    for p in range(PLATES):
        shift = rng.normal(0, 2, DIM)
        for c in range(CONTROLS + COMPOUNDS):
            control = c < CONTROLS
            meta.append({"Metadata_Plate": f"PL{p}", "Metadata_Well": f"W{c:03d}",
                         "Metadata_InChIKey": "DMSO" if control else f"CPD{c - CONTROLS:03d}",
                         "Metadata_pert_type": "negcon" if control else "trt"})
            values.append(shift + (0 if control else effects[c - CONTROLS]) + rng.normal(size=DIM))
    table = pd.concat([pd.DataFrame(meta), pd.DataFrame(np.array(values, np.float32),
                                                        columns=[f"emb_{i:02d}" for i in range(DIM)])], axis=1)
    return table.iloc[rng.permutation(len(table))].reset_index(drop=True)


def _features(table):
    return [c for c in table.columns if not c.startswith("Metadata_")]


def _whole_table_reference(wells: pd.DataFrame) -> pd.DataFrame:
    """mad_robustize per plate then ZCA-cor sphering, each one pycytominer.normalize call per unit."""
    from pycytominer import normalize as pyc_normalize

    feats, meta = _features(wells), [c for c in wells.columns if c.startswith("Metadata_")]
    parts = [pyc_normalize(g, features=feats, meta_features=meta, samples=NEGCON, method="mad_robustize")
             for _, g in wells.groupby("Metadata_Plate", sort=False)]
    scaled = pd.concat(parts).loc[wells.index, list(wells.columns)]
    sphered = pyc_normalize(scaled, features=feats, meta_features=meta, samples=NEGCON, method="spherize",
                            spherize_method="ZCA-cor", spherize_center=True)
    return scaled, sphered[list(wells.columns)]


@pytest.fixture(scope="module")
def wells():
    return _wells()


def test_plate_by_plate_normalisation_is_bit_identical_to_whole_table_pycytominer(wells, monkeypatch):
    monkeypatch.setattr(normalize_module, "SPHERIZE_BLOCK_ROWS", 37)  # several blocks, none plate-aligned
    scaled_ref, sphered_ref = _whole_table_reference(wells)
    feats = _features(wells)
    scaled = normalize(wells, "mad_robustize")
    assert scaled[feats].dtypes.tolist() == scaled_ref[feats].dtypes.tolist()
    assert np.array_equal(scaled[feats].to_numpy(), scaled_ref[feats].to_numpy())
    sphered = normalize(wells, "mad_robustize,sphering")
    assert np.array_equal(sphered[feats].to_numpy(), sphered_ref[feats].to_numpy())
    pd.testing.assert_frame_equal(sphered.drop(columns=feats), wells.drop(columns=feats))  # metadata, row order
    assert list(sphered.columns) == list(wells.columns) and sphered.index.equals(wells.index)


def test_the_thin_svd_sphering_fit_is_bit_identical_to_pycytominers(wells, monkeypatch):
    monkeypatch.setattr(normalize_module, "THIN_SVD_CONTROLS", 0)  # the large-scale fit, on these few controls
    _, sphered_ref = _whole_table_reference(wells)
    feats = _features(wells)
    assert np.array_equal(normalize(wells, "mad_robustize,sphering")[feats].to_numpy(), sphered_ref[feats].to_numpy())


@pytest.mark.parametrize("method", ["standardize", "robustize"])
def test_the_other_per_plate_scalers_are_bit_identical_too(wells, method):
    from pycytominer import normalize as pyc_normalize

    feats, meta = _features(wells), [c for c in wells.columns if c.startswith("Metadata_")]
    ref = pd.concat([pyc_normalize(g, features=feats, meta_features=meta, samples=NEGCON, method=method)
                     for _, g in wells.groupby("Metadata_Plate", sort=False)]).loc[wells.index]
    assert np.array_equal(normalize(wells, method)[feats].to_numpy(), ref[feats].to_numpy())


def test_a_well_without_a_plate_is_refused_by_name(wells):
    broken = wells.copy()
    broken.loc[5, "Metadata_Plate"] = None
    with pytest.raises(ValueError, match="row 5 has no Metadata_Plate"):
        normalize(broken, "mad_robustize")


def test_chunked_activity_is_bit_identical_to_one_copairs_call(wells):
    _, profiles = _whole_table_reference(wells)
    feats = _features(profiles)
    meta = profiles[["Metadata_Plate", "Metadata_InChIKey", "Metadata_pert_type"]].copy()
    negcon = (meta.Metadata_pert_type == "negcon").to_numpy()
    meta.loc[negcon, "Metadata_InChIKey"] = [f"negcon_{i}" for i in range(negcon.sum())]
    ap = average_precision(meta, profiles[feats].to_numpy(), pos_sameby=["Metadata_InChIKey"], pos_diffby=[],
                           neg_sameby=["Metadata_Plate"], neg_diffby=["Metadata_pert_type", "Metadata_InChIKey"],
                           progress_bar=False)
    ap = ap[~negcon]
    ref = mean_average_precision(ap, ["Metadata_InChIKey"], null_size=1000, threshold=0.05, seed=0,
                                 progress_bar=False).set_index("Metadata_InChIKey").sort_index()
    for chunk_size in (1, 50, 10**6):  # one plate per copairs call, a few plates, all of them
        got = phenotypic_activity(profiles, null_size=1000, chunk_size=chunk_size).per_group
        got = got.set_index("Metadata_InChIKey").loc[ref.index]
        for col in ("mean_average_precision", "p_value", "corrected_p_value"):
            assert np.array_equal(got[col].to_numpy(), ref[col].to_numpy()), (chunk_size, col)
        assert got.below_corrected_p.tolist() == ref.below_corrected_p.tolist()
    assert ref.below_corrected_p.any() and not ref.below_corrected_p.all()  # a real mix of outcomes
