"""Synthetic screening plates: DMSO controls on every plate, plate and batch effects, inactive compounds and
compounds grouped into mechanisms of action (MoAs) that share a phenotype.

The layout follows a JUMP compound screen. Compounds are split over ``num_plate_maps`` plate maps; each map is
replicated on ``replicates`` plates, so a compound's replicate wells lie on different plates, and replicate
``r`` goes to batch ``r % num_batches``, so every batch holds every map. Each plate carries
``controls_per_plate`` DMSO wells (``perturbation_type == "negcon"``) at random positions among the compound
wells (``"trt"``).

Phenotypes (the 12-d latent of :mod:`cloome_hf.data.synthetic`, rendered by its :func:`render_site`):

* DMSO and the *inactive* compounds have the neutral latent ``z = 0``: their images are drawn like DMSO's;
* ``phenotype="moa"`` (default): each MoA has a centre ``c_m ~ N(0, phenotype_strength^2 I)``; an active compound
  of MoA ``m`` has ``z = clip(c_m + N(0, moa_spread^2 I), -0.95, 0.95)``: compounds of one MoA look alike;
* ``phenotype="structure"``: an active compound has the latent of its structure,
  :func:`~cloome_hf.data.synthetic.molecule_latent` (the embedded generator's map), so the phenotype of an unseen
  active compound can be predicted from its structure (zero-shot retrieval of active molecules). Its MoA and
  target columns are empty: no MoA shapes the phenotype.

Dose series (``doses``, uM): every compound is plated at every dose (one well per compound and dose on each
replicate plate), with an EC50 drawn log-uniformly between the lowest and the highest dose; a site shows the
fraction :func:`~cloome_hf.data.synthetic.dose_response` of its compound's phenotype, so the phenotype grows with
the dose. Sites then have a ``concentration`` column (DMSO wells: 0) and ``plan.annotations`` an ``ec50`` column.
Without ``doses`` the layout, and every output, is what it was before doses existed.

Plate effects: per batch and per plate, channel gains ``exp(N(0, effect^2))`` multiply the signal and channel
offsets ``360 |N(0, effect^2)|`` add background counts (``effect`` = ``batch_effect`` / ``plate_effect``).

The per-compound table ``plan.annotations`` (``inchikey, smiles, name, moa, target, active``) is the MoA /
target annotation; targets are ``"|"``-separated lists (every compound of MoA ``m`` hits ``GENE{m}A``, every
other one also ``GENE{m}B``), for the multi-label consistency question.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from .synthetic import (
    LATENT_DIM,
    SyntheticPlan,
    well_name,
    bundled_molecules,
    dataset_from_plan,
    dose_response,
    iter_synthetic_sites,
    molecule_latent,
)

__all__ = ["DMSO_SMILES", "PHENOTYPES", "make_synthetic_plates", "plan_synthetic_plates", "site_intensity_features"]

DMSO_SMILES = "CS(C)=O"
LAYOUT_COLUMNS = ("perturbation_type", "batch", "source", "moa", "target")
PHENOTYPES = ("moa", "structure")


def plan_synthetic_plates(
    num_compounds: int = 40,
    num_moas: int = 4,
    inactive_fraction: float = 0.25,
    replicates: int = 4,
    controls_per_plate: int = 16,
    num_plate_maps: int = 1,
    num_batches: int = 2,
    sites_per_well: int = 1,
    image_size: int | tuple[int, int] = 48,
    phenotype_strength: float = 0.5,
    moa_spread: float = 0.15,
    plate_effect: float = 0.15,
    batch_effect: float = 0.15,
    seed: int = 0,
    phenotype: str = "moa",
    doses: Sequence[float] | None = None,
) -> SyntheticPlan:
    """Lay out the plates (see the module docstring). Returns a :class:`SyntheticPlan` whose ``records`` have one
    row per site with ``perturbation_type, batch, source, moa, target`` besides the common columns (and
    ``concentration``, ``response`` with ``doses``); latent row 0 is DMSO."""
    if num_compounds < 1 or replicates < 2 or controls_per_plate < 1 or num_plate_maps < 1 or sites_per_well < 1:
        raise ValueError("need >= 1 compound, >= 2 replicates, >= 1 control well, plate map and site per well; got "
                         f"{num_compounds}, {replicates}, {controls_per_plate}, {num_plate_maps}, {sites_per_well}")
    if not 1 <= num_batches <= replicates:
        raise ValueError(f"num_batches must lie in 1..replicates={replicates}, got {num_batches}")
    if not 0.0 <= inactive_fraction <= 1.0 or num_moas < 1:
        raise ValueError(f"need 0 <= inactive_fraction <= 1 and num_moas >= 1, got {inactive_fraction}, {num_moas}")
    if phenotype not in PHENOTYPES:
        raise ValueError(f"phenotype must be one of {PHENOTYPES}, got {phenotype!r}")
    doses = _checked_doses(doses)
    from .molecules import inchikeys_from_smiles

    rng = np.random.default_rng(seed)
    mols = bundled_molecules()
    mols = mols[mols.smiles != DMSO_SMILES].reset_index(drop=True)
    if num_compounds > len(mols):
        raise ValueError(f"num_compounds={num_compounds} exceeds the {len(mols)} bundled molecules")
    mols = mols.iloc[np.sort(rng.choice(len(mols), num_compounds, replace=False))].reset_index(drop=True)
    annotations, latent = _compound_phenotypes(mols, num_moas, inactive_fraction, phenotype_strength, moa_spread, rng)
    if phenotype == "structure":
        latent = np.where(annotations.active.to_numpy()[:, None], molecule_latent(list(mols.smiles)), 0.0)
        annotations["moa"] = annotations["target"] = None
    if doses is not None:  # a stream of its own: compounds, latents and plate effects stay those of the seed
        low, high = np.log(min(doses)), np.log(max(doses))
        annotations["ec50"] = np.exp(np.random.default_rng([seed, 1]).uniform(low, high, len(annotations)))
    dmso = {"smiles": DMSO_SMILES, "inchikey": inchikeys_from_smiles([DMSO_SMILES])[0], "name": "DMSO"}
    num_plates = num_plate_maps * replicates
    batch_of_plate = np.array([r % num_batches for _ in range(num_plate_maps) for r in range(replicates)])
    rows = []
    for plate_index in range(num_plates):
        plate_map, batch = plate_index // replicates, batch_of_plate[plate_index]
        wells = [(0, None)] * controls_per_plate + [
            (1 + i, dose) for i in range(num_compounds) if i % num_plate_maps == plate_map
            for dose in (doses or [None])]
        order = rng.permutation(len(wells))
        for position, w in enumerate(order):
            mol_index, dose = wells[w]
            comp = dmso if mol_index == 0 else annotations.iloc[mol_index - 1]
            plate, well = f"SYNP{plate_index + 1:03d}", well_name(position)
            for site in range(1, sites_per_well + 1):
                rows.append(dict(
                    sample_key=f"{plate}-{well}-{site}", plate=plate, well=well, site=site, smiles=comp["smiles"],
                    inchikey=comp["inchikey"], name=comp["name"], molecule_index=mol_index,
                    perturbation_type="negcon" if mol_index == 0 else "trt", batch=f"SYNB{batch + 1:02d}",
                    source="source_syn", moa=None if mol_index == 0 else comp["moa"],
                    target=None if mol_index == 0 else comp["target"],
                    **({} if doses is None else _dose_columns(dose, None if mol_index == 0 else comp["ec50"]))))
    gains, offsets = _plate_effects(batch_of_plate, num_batches, plate_effect, batch_effect, rng)
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    return SyntheticPlan(pd.DataFrame(rows), np.vstack([np.zeros((1, LATENT_DIM)), latent]), gains, size, seed,
                         plate_offsets=offsets, annotations=annotations)


def _checked_doses(doses) -> list[float] | None:
    if doses is None:
        return None
    values = [float(d) for d in doses]
    if not values or not all(np.isfinite(d) and d > 0 for d in values) or len(set(values)) != len(values):
        raise ValueError(f"doses must be distinct positive concentrations in uM, got {doses!r}")
    return values


def _dose_columns(dose: float | None, ec50: float | None) -> dict[str, float]:
    """``concentration`` and ``response`` of a well: DMSO (``ec50 is None``) has neither dose nor phenotype."""
    if ec50 is None:
        return {"concentration": 0.0, "response": 0.0}
    return {"concentration": dose, "response": float(dose_response(dose, ec50))}


def _compound_phenotypes(mols, num_moas, inactive_fraction, strength, spread, rng):
    """Annotation table (one row per compound) and the ``(C, LATENT_DIM)`` latents."""
    n = len(mols)
    active = np.zeros(n, dtype=bool)
    active[rng.permutation(n)[: n - int(round(inactive_fraction * n))]] = True
    moa = np.full(n, -1)
    moa[active] = np.arange(active.sum()) % num_moas
    centres = rng.normal(0.0, strength, (num_moas, LATENT_DIM))
    latent = np.zeros((n, LATENT_DIM))
    latent[active] = np.clip(centres[moa[active]] + rng.normal(0.0, spread, (active.sum(), LATENT_DIM)), -0.95, 0.95)
    rank_in_moa = pd.Series(moa).groupby(moa).cumcount().to_numpy()
    targets = [None if m < 0 else f"GENE{m + 1}A" + (f"|GENE{m + 1}B" if k % 2 else "")
               for m, k in zip(moa, rank_in_moa)]
    annotations = pd.DataFrame({
        "inchikey": mols.inchikey.to_numpy(), "smiles": mols.smiles.to_numpy(), "name": mols.name.to_numpy(),
        "moa": [None if m < 0 else f"MOA{m + 1:02d}" for m in moa], "target": targets, "active": active,
    })
    return annotations, latent


def _plate_effects(batch_of_plate, num_batches, plate_effect, batch_effect, rng):
    """Per-plate ``(P, 5)`` channel gains and background offsets: a batch part times / plus a plate part."""
    num_plates = len(batch_of_plate)
    batch_gain = np.exp(rng.normal(0.0, batch_effect, (num_batches, 5)))
    plate_gain = np.exp(rng.normal(0.0, plate_effect, (num_plates, 5)))
    batch_offset = 360.0 * np.abs(rng.normal(0.0, batch_effect, (num_batches, 5)))
    plate_offset = 360.0 * np.abs(rng.normal(0.0, plate_effect, (num_plates, 5)))
    return batch_gain[batch_of_plate] * plate_gain, batch_offset[batch_of_plate] + plate_offset


def make_synthetic_plates(**kwargs):
    """The sites of :func:`plan_synthetic_plates` (same arguments) as a ``datasets.Dataset`` in the common
    schema, with the layout columns ``perturbation_type, batch, source, moa, target``. The MoA / target table is
    ``plan_synthetic_plates(**kwargs).annotations`` (the plan is deterministic)."""
    return dataset_from_plan(plan_synthetic_plates(**kwargs), extra_columns=LAYOUT_COLUMNS)


_PERCENTILES = (5, 25, 50, 75, 95)


def site_intensity_features(site16: np.ndarray) -> np.ndarray:
    """Handcrafted CellProfiler-like features of one raw site, for the profiling protocol without a model.

    Per channel: mean, standard deviation, the 5/25/50/75/95th intensity percentiles, mean absolute
    gradient (texture) and the fraction of pixels brighter than twice the channel median (structures).

    Args:
        site16: ``(C, H, W)`` raw intensities (e.g. ``uint16`` from :func:`iter_synthetic_sites`).
    Returns:
        ``(9 * C,)`` float32, channel-major.
    """
    x = np.asarray(site16, dtype=np.float64)
    if x.ndim != 3:
        raise ValueError(f"expected a (C, H, W) site, got shape {x.shape}")
    flat = x.reshape(x.shape[0], -1)
    pct = np.percentile(flat, _PERCENTILES, axis=1).T
    grad = (np.abs(np.diff(x, axis=1)).mean(axis=(1, 2)) + np.abs(np.diff(x, axis=2)).mean(axis=(1, 2))) / 2
    bright = (flat > 2 * pct[:, 2:3]).mean(axis=1)
    return np.column_stack([flat.mean(1), flat.std(1), pct, grad, bright]).astype(np.float32).reshape(-1)


def plan_site_features(plan: SyntheticPlan, rows: Sequence[int] | None = None) -> np.ndarray:
    """``(N, F)`` :func:`site_intensity_features` of the plan's sites (all, or ``rows``), in row order."""
    return np.stack([site_intensity_features(site) for _, site in iter_synthetic_sites(plan, rows)])
