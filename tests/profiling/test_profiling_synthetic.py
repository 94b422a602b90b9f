"""The JUMP protocol on synthetic plates with plate and batch effects: correction helps, p-values stay honest,
synthetic MoAs are consistent. The "embeddings" are simple per-image features of the rendered raw sites."""

import numpy as np
import pytest
from scipy.stats import binom

from cloome_hf.data.synthetic_plates import plan_site_features, plan_synthetic_plates
from cloome_hf.profiling import aggregate, normalize, phenotypic_activity, phenotypic_consistency

NULL_SIZE = 2000  # these tests are about the protocol, not the default null size
CORRECTIONS = ("mad_robustize,sphering", "mad_robustize,tvn_coral", "mad_robustize,sphering,harmony")
META = ["sample_key", "plate", "well", "site", "inchikey", "smiles", "perturbation_type", "batch", "source"]


@pytest.fixture(scope="module")
def plates():
    plan = plan_synthetic_plates(num_compounds=64, inactive_fraction=0.5, num_moas=4, replicates=4,
                                 num_plate_maps=2, num_batches=2, controls_per_plate=16, image_size=32, seed=0)
    wells = aggregate(plan_site_features(plan), metadata=plan.records[META])
    return plan, wells


@pytest.fixture(scope="module")
def activity(plates):
    _, wells = plates
    return {pipeline: phenotypic_activity(normalize(wells, pipeline), null_size=NULL_SIZE)
            for pipeline in ("", *CORRECTIONS)}


def _fraction(result, compounds):
    rows = result.per_group[result.per_group.Metadata_InChIKey.isin(compounds)]
    assert len(rows) == len(compounds)  # every compound was scored
    return rows.below_corrected_p.mean(), rows


@pytest.mark.parametrize("pipeline", CORRECTIONS)
def test_correction_retrieves_more_active_compounds(plates, activity, pipeline):
    plan, _ = plates
    active = plan.annotations.inchikey[plan.annotations.active].tolist()
    raw, _ = _fraction(activity[""], active)
    corrected, _ = _fraction(activity[pipeline], active)
    assert corrected > raw


@pytest.mark.parametrize("pipeline", ("", *CORRECTIONS))
def test_inactive_compounds_are_retrieved_at_most_at_the_nominal_rate(plates, activity, pipeline):
    plan, _ = plates
    inactive = plan.annotations.inchikey[~plan.annotations.active].tolist()
    fraction, rows = _fraction(activity[pipeline], inactive)
    # at most 5 % in expectation; allow the binomial sampling of this many compounds (one-sided, 99 %)
    allowed = binom.ppf(0.99, len(rows), 0.05) / len(rows)
    assert fraction <= allowed
    assert (rows.p_value < 0.05).mean() <= allowed  # the raw permutation p-values too


@pytest.mark.parametrize("by", ["moa", "target"])
def test_consistency_of_synthetic_moas_beats_shuffled_annotations(plates, by):
    plan, wells = plates
    profiles = normalize(wells, "mad_robustize,sphering")
    annotations = plan.annotations
    true = phenotypic_consistency(profiles, annotations, by=by, null_size=NULL_SIZE)
    rng = np.random.default_rng(0)
    labelled = annotations[by].notna()
    shuffled = []
    for _ in range(5):
        fake = annotations.copy()
        fake.loc[labelled, by] = rng.permutation(annotations.loc[labelled, by].to_numpy())
        shuffled.append(phenotypic_consistency(profiles, fake, by=by, null_size=NULL_SIZE).mean_map)
    assert true.mean_map > max(shuffled)
    assert true.parameters["n_compounds"] == int(labelled.sum())
