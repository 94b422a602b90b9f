"""cloome_hf.profiling against the field's libraries called directly, and against the formulas themselves."""

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from copairs.map import average_precision, mean_average_precision, multilabel
from scipy import linalg

from cloome_hf.profiling import aggregate, normalize, phenotypic_activity, phenotypic_consistency, site_profiles

NEGCON = "Metadata_pert_type == 'negcon'"
FEATURES = [f"f{i}" for i in range(6)]


def make_wells(seed: int = 0, num_plates: int = 4, controls: int = 10, compounds: int = 8) -> pd.DataFrame:
    """Wells of ``num_plates`` plates (two batches) with plate shifts and scales: DMSO, compounds of graded
    strength on every plate, one compound on a single plate (too few replicates) and a positive control."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(compounds, len(FEATURES)))
    strength = np.linspace(0.0, 2.5, compounds)
    rows, values = [], []
    for p in range(num_plates):
        shift, scale = rng.normal(0, 2, len(FEATURES)), np.exp(rng.normal(0, 0.3, len(FEATURES)))
        wells = [("DMSO", "negcon", np.zeros(len(FEATURES)))] * controls
        wells += [(f"CPD{k}", "trt", strength[k] * centres[k]) for k in range(compounds)]
        wells += [("POS", "poscon", 3 * centres[0])] + ([("SINGLE", "trt", centres[1])] if p == 0 else [])
        for w, (compound, pert, effect) in enumerate(wells):
            rows.append({"Metadata_Plate": f"P{p}", "Metadata_Well": f"W{w:02d}", "Metadata_Batch": f"B{p % 2}",
                         "Metadata_InChIKey": compound, "Metadata_pert_type": pert})
            values.append(shift + scale * (effect + rng.normal(size=len(FEATURES))))
    return pd.concat([pd.DataFrame(rows), pd.DataFrame(np.array(values), columns=FEATURES)], axis=1)


@pytest.fixture(scope="module")
def wells():
    return make_wells()


def test_aggregate_reads_the_embeddings_dataset(tmp_path):
    rng = np.random.default_rng(0)
    n, dim = 24, 5
    emb = rng.normal(size=(n, dim)).astype(np.float32)
    plates, wells = np.repeat(["PA", "PB"], 12), np.tile(np.repeat(["A01", "A02", "A03", "A04"], 3), 2)
    table = pa.table({
        "sample_key": [f"{p}-{w}-{i % 3 + 1}" for i, (p, w) in enumerate(zip(plates, wells))],
        "plate": plates, "well": wells, "site": np.tile([1, 2, 3], 8).astype(np.int32),
        "inchikey": np.where(wells == "A01", "DMSOKEY", np.char.add("K", wells)), "smiles": ["C"] * n,
        "perturbation_type": np.where(wells == "A01", "negcon", "trt"),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), dim),
    })
    (tmp_path / "images").mkdir()
    pq.write_table(table, tmp_path / "images" / "shard-00000.parquet")

    for method, reduce in (("median", np.median), ("mean", np.mean)):
        out = aggregate(tmp_path, by=("plate", "well"), method=method)  # the OUT folder of `cloome embed`
        assert len(out) == 8 and "Metadata_Site" not in out and "Metadata_sample_key" not in out
        assert {"Metadata_InChIKey", "Metadata_pert_type", "Metadata_SMILES"} <= set(out.columns)
        for _, row in out.iterrows():
            rows = (plates == row.Metadata_Plate) & (wells == row.Metadata_Well)
            assert row[[f"emb_{i:04d}" for i in range(dim)]].to_numpy(float) == pytest.approx(
                reduce(emb[rows].astype(np.float64), axis=0), abs=1e-6)
            assert row.Metadata_pert_type == ("negcon" if row.Metadata_Well == "A01" else "trt")
    assert out.attrs["profiling"]["aggregate"] == {"by": ["Metadata_Plate", "Metadata_Well"], "method": "mean",
                                                   "library": "pycytominer"}
    pq.write_table(table.drop(["embedding"]), tmp_path / "images" / "shard-00000.parquet")
    with pytest.raises(ValueError, match="no 'embedding' column"):
        aggregate(tmp_path)
    with pytest.raises(ValueError, match="not 'median' or 'mean'"):
        aggregate(site_profiles(emb, table.drop(["embedding"]).to_pandas()), method="max")


def _pycytominer_per_plate(wells, method):
    from pycytominer import normalize as pyc_normalize

    meta = [c for c in wells.columns if c.startswith("Metadata_")]
    parts = [pyc_normalize(g, features=FEATURES, meta_features=meta, samples=NEGCON, method=method)
             for _, g in wells.groupby("Metadata_Plate")]
    return pd.concat(parts).loc[wells.index]


@pytest.mark.parametrize("method", ["standardize", "robustize", "mad_robustize"])
def test_per_plate_scaling_equals_pycytominer(wells, method):
    out = normalize(wells, method)
    ref = _pycytominer_per_plate(wells, method)
    np.testing.assert_allclose(out[FEATURES].to_numpy(), ref[FEATURES].to_numpy(), atol=1e-6)
    assert out[wells.columns[:5]].equals(wells[wells.columns[:5]])  # metadata untouched, rows in input order
    # and the formulas themselves, per plate, against that plate's controls
    x, plates = wells[FEATURES].to_numpy(), wells.Metadata_Plate.to_numpy()
    for plate in np.unique(plates):
        ctrl = x[(plates == plate) & (wells.Metadata_pert_type == "negcon").to_numpy()]
        if method == "mad_robustize":
            mad = 1.4826 * np.median(np.abs(ctrl - np.median(ctrl, 0)), 0)  # pycytominer's constant
            expected = (x[plates == plate] - np.median(ctrl, 0)) / mad
        elif method == "standardize":
            expected = (x[plates == plate] - ctrl.mean(0)) / ctrl.std(0)
        else:
            q1, q2, q3 = np.percentile(ctrl, [25, 50, 75], axis=0)
            expected = (x[plates == plate] - q2) / (q3 - q1)
        np.testing.assert_allclose(out[FEATURES].to_numpy()[plates == plate], expected, atol=1e-6)


def test_all_plates_scaling_equals_one_pycytominer_call(wells):
    from pycytominer import normalize as pyc_normalize

    out = normalize(wells, "standardize", plate_column=None)
    ref = pyc_normalize(wells, features=FEATURES, meta_features=list(wells.columns[:5]), samples=NEGCON,
                        method="standardize")
    np.testing.assert_allclose(out[FEATURES].to_numpy(), ref[FEATURES].to_numpy(), atol=1e-6)


def test_sphering_equals_pycytominer_and_whitens_the_controls(wells):
    from pycytominer import normalize as pyc_normalize

    step1 = normalize(wells, "mad_robustize")
    out = normalize(step1, "sphering")
    ref = pyc_normalize(step1, features=FEATURES, meta_features=list(wells.columns[:5]), samples=NEGCON,
                        method="spherize", spherize_method="ZCA-cor")
    np.testing.assert_allclose(out[FEATURES].to_numpy(), ref[FEATURES].to_numpy(), atol=1e-6)
    ctrl = out.loc[wells.Metadata_pert_type == "negcon", FEATURES].to_numpy()
    np.testing.assert_allclose(np.cov(ctrl, rowvar=False), np.eye(len(FEATURES)), atol=1e-3)
    chained = normalize(wells, "mad_robustize,sphering")
    np.testing.assert_allclose(chained[FEATURES].to_numpy(), out[FEATURES].to_numpy(), atol=1e-9)


def test_feature_select_equals_pycytominer(wells):
    from pycytominer import feature_select

    rng = np.random.default_rng(1)
    table = wells.assign(dup=wells.f0 + 1e-3 * rng.normal(size=len(wells)), const=1.0)
    feats = FEATURES + ["dup", "const"]
    out = normalize(table, "feature_select")
    ref = feature_select(table, features=feats,
                         operation=["variance_threshold", "correlation_threshold", "drop_na_columns"])
    assert list(out.columns) == [c for c in table.columns if c in set(ref.columns)]
    assert "const" not in out and ("dup" in out) != ("f0" in out)  # one of the correlated pair is kept
    np.testing.assert_allclose(out.drop(columns=list(wells.columns[:5])).to_numpy(),
                               ref[[c for c in out.columns if not c.startswith("Metadata_")]].to_numpy())


def _tvn_reference(x, ctrl):
    """Scale on controls (population std), eigenvectors of the controls' covariance, scale again."""
    z = (x - x[ctrl].mean(0)) / x[ctrl].std(0)
    w, v = np.linalg.eigh(np.cov(z[ctrl], rowvar=False))
    v = v[:, np.argsort(w)[::-1]][:, : min(x.shape[1], ctrl.sum() - 1)]
    p = (z - z[ctrl].mean(0)) @ v
    return (p - p[ctrl].mean(0)) / p[ctrl].std(0)


def _align_signs(a, b):
    """Flip the columns of ``a`` so they correlate positively with ``b`` (principal axes have no sign)."""
    return a * np.sign(np.sum(a * b, axis=0))


def test_tvn_matches_the_formula(wells):
    out = normalize(wells, "tvn")
    got = out[[f"PC{i + 1}" for i in range(len(FEATURES))]].to_numpy()
    ctrl = (wells.Metadata_pert_type == "negcon").to_numpy()
    ref = _tvn_reference(wells[FEATURES].to_numpy(), ctrl)
    np.testing.assert_allclose(_align_signs(got, ref), ref, atol=1e-6)
    assert out.attrs["profiling"]["pipeline"][-1]["step"] == "tvn"


def test_tvn_coral_matches_the_formula(wells):
    out = normalize(wells, "tvn_coral", coral_regularization=0.5)
    got = out[[c for c in out.columns if c.startswith("PC")]].to_numpy()
    ctrl = (wells.Metadata_pert_type == "negcon").to_numpy()
    tvn = _align_signs(normalize(wells, "tvn")[[c for c in out.columns if c.startswith("PC")]].to_numpy(),
                       _tvn_reference(wells[FEATURES].to_numpy(), ctrl))
    ref = np.empty_like(tvn)
    batches = wells.Metadata_Batch.to_numpy()
    target = linalg.sqrtm(np.cov(tvn[ctrl], rowvar=False) + 0.5 * np.eye(tvn.shape[1])).real
    for b in np.unique(batches):
        rows = batches == b
        source = linalg.inv(linalg.sqrtm(np.cov(tvn[rows & ctrl], rowvar=False) + 0.5 * np.eye(tvn.shape[1])).real)
        ref[rows] = tvn[rows] @ source @ target
    np.testing.assert_allclose(_align_signs(got, ref), ref, atol=1e-6)


def test_harmony_equals_harmonypy(wells):
    import harmonypy

    out = normalize(wells, "harmony", harmony_kwargs={"nclust": 3})
    ref = harmonypy.run_harmony(wells[FEATURES].to_numpy(), wells, "Metadata_Batch", nclust=3, random_state=0,
                                verbose=False).Z_corr
    np.testing.assert_allclose(out[FEATURES].to_numpy(), ref, atol=1e-6)
    step = out.attrs["profiling"]["pipeline"][-1]
    assert step["step"] == "harmony" and step["by"] == "Metadata_Batch" and step["library"].startswith("harmonypy")
    with pytest.raises(ValueError, match="at least two batches"):
        normalize(wells.assign(Metadata_Batch="one"), "harmony")


def test_pipeline_is_recorded_and_survives_parquet(wells, tmp_path):
    out = normalize(wells, ["mad_robustize", "sphering"])
    steps = out.attrs["profiling"]["pipeline"]
    assert [s["step"] for s in steps] == ["mad_robustize", "sphering"]
    assert steps[0]["fit_on"] == NEGCON and steps[0]["per"] == "Metadata_Plate"
    assert steps[1]["method"] == "ZCA-cor" and steps[1]["library"].startswith("pycytominer")
    assert "pipeline" not in wells.attrs.get("profiling", {})  # the input is not modified
    out.to_parquet(tmp_path / "p.parquet")
    assert pd.read_parquet(tmp_path / "p.parquet").attrs["profiling"]["pipeline"] == steps
    assert normalize(wells, "none").attrs["profiling"]["pipeline"] == []


def test_normalize_refuses_bad_input(wells):
    with pytest.raises(ValueError, match="unknown normalisation step 'zscore'"):
        normalize(wells, "mad_robustize,zscore")
    no_ctrl_on_p2 = wells[~((wells.Metadata_Plate == "P2") & (wells.Metadata_pert_type == "negcon"))]
    with pytest.raises(ValueError, match="matches no row of the plate 'P2' table"):
        normalize(no_ctrl_on_p2, "mad_robustize")
    with pytest.raises(ValueError, match="cannot be evaluated"):
        normalize(wells, "sphering", controls="Metadata_nope == 'DMSO'")
    with pytest.raises(ValueError, match=r"feature column\(s\) \['compound'\] are not numeric"):
        normalize(wells.assign(compound="x"), "standardize")
    # a bare perturbation type means that type
    np.testing.assert_allclose(normalize(wells, "standardize", controls="negcon")[FEATURES].to_numpy(),
                               normalize(wells, "standardize")[FEATURES].to_numpy())


def _recipe_activity(wells, null_size):
    """The JUMP recipe's own steps, with one copairs call over all plates."""
    meta = wells[["Metadata_Plate", "Metadata_InChIKey", "Metadata_pert_type"]].copy()
    counts = meta.loc[meta.Metadata_pert_type == "trt", "Metadata_InChIKey"].value_counts()
    valid = counts[counts.between(2, 1000)].index
    keep = (meta.Metadata_pert_type == "negcon") | (meta.Metadata_InChIKey.isin(valid)
                                                    & (meta.Metadata_pert_type == "trt"))
    meta, feats = meta[keep].reset_index(drop=True), wells.loc[keep, FEATURES].to_numpy()
    negcon = meta.Metadata_pert_type == "negcon"
    meta.loc[negcon, "Metadata_InChIKey"] = [f"negcon_{i}" for i in range(negcon.sum())]
    ap = average_precision(meta, feats, pos_sameby=["Metadata_InChIKey"], pos_diffby=[],
                           neg_sameby=["Metadata_Plate"], neg_diffby=["Metadata_pert_type", "Metadata_InChIKey"],
                           progress_bar=False)
    ap = ap.query("Metadata_pert_type != 'negcon'")
    maps = mean_average_precision(ap, ["Metadata_InChIKey"], null_size=null_size, threshold=0.05, seed=0,
                                  progress_bar=False)
    return ap, maps


def test_activity_equals_the_jump_recipe_with_copairs(wells):
    profiles = normalize(wells, "mad_robustize")
    ref_ap, ref_maps = _recipe_activity(profiles, null_size=10000)
    res = phenotypic_activity(profiles, chunk_size=1)  # JUMP defaults; one plate per copairs call
    got = res.per_group.set_index("Metadata_InChIKey")
    ref = ref_maps.set_index("Metadata_InChIKey")
    assert set(got.index) == {f"CPD{k}" for k in range(8)}  # no POS (poscon), SINGLE (1 well), DMSO
    for col in ("mean_average_precision", "p_value", "corrected_p_value"):
        np.testing.assert_allclose(got.loc[ref.index, col], ref[col], atol=1e-9)
    assert got.loc[ref.index, "below_corrected_p"].tolist() == ref.below_corrected_p.tolist()
    np.testing.assert_allclose(np.sort(res.average_precision.average_precision), np.sort(ref_ap.average_precision))
    assert res.fraction_retrieved == pytest.approx(ref.below_corrected_p.mean())
    assert res.parameters["null_size"] == 10000 and res.parameters["threshold"] == 0.05 and res.parameters["seed"] == 0
    assert res.parameters["n_compounds_excluded_by_replicates"] == 1
    assert (got.n_profiles == 4).all()
    # the strong compounds are retrieved, the null one is not
    assert got.loc["CPD7", "below_corrected_p"] and not got.loc["CPD0", "below_corrected_p"]
    whole = phenotypic_activity(profiles, chunk_size=10**6, null_size=500)
    chunked = phenotypic_activity(profiles, chunk_size=3, null_size=500)
    pd.testing.assert_frame_equal(whole.per_group, chunked.per_group)


def test_activity_refuses_bad_input(wells):
    with pytest.raises(ValueError, match=r"plate\(s\) \['P1'\] have treated wells but no negative control"):
        phenotypic_activity(wells[~((wells.Metadata_Plate == "P1") & (wells.Metadata_pert_type == "negcon"))])
    with pytest.raises(ValueError, match="matches no row"):
        phenotypic_activity(wells, controls="Metadata_InChIKey == 'water'")
    with pytest.raises(ValueError, match="no compound has between 2 and 1000"):
        phenotypic_activity(wells[(wells.Metadata_Plate == "P0") | (wells.Metadata_pert_type == "negcon")])
    broken = wells.copy()
    broken.loc[(broken.Metadata_Plate == "P1") & (broken.Metadata_Well == "W12"), "f3"] = np.inf
    with pytest.raises(ValueError, match="NaN or infinite features, the first at Metadata_Plate=P1, Metadata_Well=W12"):
        phenotypic_activity(broken)


def test_consistency_equals_a_direct_multilabel_copairs_call(wells):
    profiles = normalize(wells, "mad_robustize")
    annotations = pd.DataFrame({"inchikey": [f"CPD{k}" for k in range(8)] + ["SINGLE"],
                                "target": ["T1", "T1|T2", "T2", "T2|T3", "T3", "T3", "T4", None, "T4"]})
    res = phenotypic_consistency(profiles, annotations, by="target", null_size=2000)
    # independent consensus (median of each compound's treated wells) and labels
    treated = profiles[profiles.Metadata_pert_type == "trt"]
    consensus = treated.groupby("Metadata_InChIKey")[FEATURES].median()
    labels = annotations.dropna().set_index("inchikey").target.str.split("|")
    consensus = consensus.loc[labels.index.intersection(consensus.index)]
    meta = pd.DataFrame({"Metadata_InChIKey": consensus.index, "Metadata_target": labels[consensus.index].tolist()})
    ap = multilabel.average_precision(meta, consensus.to_numpy(), ["Metadata_target"], [], [], ["Metadata_target"],
                                      multilabel_col="Metadata_target", progress_bar=False)
    ap = ap[ap.n_pos_pairs > 0]
    ref = mean_average_precision(ap, ["Metadata_target"], null_size=2000, threshold=0.05, seed=0,
                                 progress_bar=False).set_index("Metadata_target")
    got = res.per_group.set_index("Metadata_target")
    assert set(got.index) == set(ref.index) == {"T1", "T2", "T3", "T4"}
    for col in ("mean_average_precision", "p_value", "corrected_p_value"):
        np.testing.assert_allclose(got.loc[ref.index, col], ref[col], atol=1e-9)
    assert res.parameters["n_compounds"] == 8 and res.parameters["multilabel"]
    only = phenotypic_consistency(profiles, annotations, by="target", null_size=500, compounds=["CPD2", "CPD3", "CPD4"])
    assert set(only.per_group.Metadata_target) == {"T2", "T3"}
    with pytest.raises(ValueError, match="no column 'moa'"):
        phenotypic_consistency(profiles, annotations, by="moa")
