"""Synthetic Cell Painting whose phenotype is a deterministic, smooth function of the molecule's structure.

The embedded default dataset of cloome-hf: real SMILES (``cloome_hf/resources/smiles.csv``), rendered sites
that look like Cell Painting (cells as textured blobs with nuclei, five stain-like channels, uneven
illumination, plate effects, camera noise), learnable by a small CLOOME on CPU in minutes.

How a molecule becomes a phenotype
----------------------------------
1. Morgan fingerprint (radius 2, 2048 bits, RDKit) ``b`` and nine RDKit descriptors ``d`` of the molecule (logP,
   weight, TPSA, H-bond donors / acceptors, rotatable bonds, rings, Fsp3, aromatic rings; robustly standardised).
2. ``z = tanh(d @ M + 0.35 b @ P / sqrt(|b|))`` with *fixed* Gaussian matrices ``M`` (9 x 12) and ``P``
   (2048 x 12), seed :data:`PROJECTION_SEED`, independent of the dataset seed: similar molecules -> similar
   ``z``. The descriptor part is a sum of atom / group contributions, so a model can learn it from
   fingerprints of a few hundred molecules and generalise to unseen ones; the random-projection part gives
   molecules with equal descriptors distinct phenotypes.
3. ``z`` drives: cell coverage (z0), cell size (z1), nucleus/cell ratio (z2), elongation (z3), the diffuse
   level of each of the five channels relative to its bright structures (z4..z8), texture frequency (z9),
   mitochondrial puncta density (z10) and actin/membrane ring strength (z11).

Dose-response (:func:`dose_response`): a plan's records may carry a ``response`` in [0, 1] per site, the fraction
of its molecule's phenotype the site shows (``z`` becomes ``response * z``, towards the neutral ``z = 0``), and a
``concentration`` (uM) that the dataset then has as a column; :mod:`cloome_hf.data.synthetic_plates` lays out
dose series with them.

Everything else (cell positions and orientations, textures, illumination, per-plate channel gains,
noise) is random per site / plate, so a model must read the phenotype, not memorise pixels. Phenotypes
are relative (structure vs. diffuse signal, coverage, texture), so they survive the per-site 16 -> 8 bit
rescaling of the processor, as real phenotypes must.

Images are rendered as 12-bit-like ``uint16`` (background ~200, structures up to ~4000, like the real
example site), converted with :func:`cloome_hf.image_processing_cloome.rescale_to_uint8`.
:func:`write_synthetic_layout` writes the same sites as real Bray npz / raw TIFF / JUMP layouts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from typing import Iterator, Sequence

import numpy as np
import pandas as pd

from ..channels import CHANNELS, JUMP_CHANNELS
from .schema import dataset_description, encode_image


PROJECTION_SEED = 20230712
LATENT_DIM = 12
_FP_BITS = 2048


def bundled_molecules() -> pd.DataFrame:
    """The bundled real molecules: columns ``smiles, inchikey, name, source`` (1,297 rows)."""
    with resources.files("cloome_hf.resources").joinpath("smiles.csv").open("r") as f:
        return pd.read_csv(f)


# Robust location / scale of the descriptors over the bundled molecules (median, interquartile range)
_DESCRIPTOR_CENTER = np.array([3.2, 358.0, 72.0, 1.0, 5.0, 4.0, 3.0, 0.28, 2.0], dtype=np.float32)
_DESCRIPTOR_SCALE = np.array([1.8, 130.0, 41.0, 1.0, 3.0, 3.0, 2.0, 0.26, 1.0], dtype=np.float32)


def _descriptors(mol) -> list[float]:
    """logP, MW, TPSA, H-bond donors / acceptors, rotatable bonds, rings, Fsp3, aromatic rings: sums of atom and
    group contributions, so (nearly) linear in the fingerprint's substructure bits."""
    from rdkit.Chem import Crippen, Descriptors
    from rdkit.Chem import rdMolDescriptors as rd

    return [Crippen.MolLogP(mol), Descriptors.MolWt(mol), rd.CalcTPSA(mol), rd.CalcNumHBD(mol), rd.CalcNumHBA(mol),
            rd.CalcNumRotatableBonds(mol), rd.CalcNumRings(mol), rd.CalcFractionCSP3(mol),
            rd.CalcNumAromaticRings(mol)]


def molecule_latent(smiles: Sequence[str]) -> np.ndarray:
    """Phenotype latent ``z`` in (-1, 1), shape ``(N, LATENT_DIM)``, of each SMILES (see module docstring)."""
    from rdkit import DataStructs
    from rdkit.Chem import rdFingerprintGenerator

    from ..featurization_cloome import parse_molecule

    gen = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=_FP_BITS)
    bits = np.zeros((len(smiles), _FP_BITS), dtype=np.float32)
    desc = np.zeros((len(smiles), len(_DESCRIPTOR_CENTER)), dtype=np.float32)
    for i, s in enumerate(smiles):
        mol = parse_molecule(s)
        if mol is None:
            raise ValueError(f"invalid SMILES at position {i}: {s!r}")
        DataStructs.ConvertToNumpyArray(gen.GetFingerprint(mol), bits[i])
        desc[i] = _descriptors(mol)
    rng = np.random.default_rng(PROJECTION_SEED)
    proj = rng.standard_normal((_FP_BITS, LATENT_DIM)).astype(np.float32)
    mix = rng.standard_normal((len(_DESCRIPTOR_CENTER), LATENT_DIM)).astype(np.float32)
    mix /= np.linalg.norm(mix, axis=0, keepdims=True)
    d = np.clip((desc - _DESCRIPTOR_CENTER) / _DESCRIPTOR_SCALE, -3, 3)
    fp = bits @ proj / np.sqrt(np.maximum(bits.sum(1, keepdims=True), 1.0))
    return np.tanh(1.0 * d @ mix + 0.35 * fp)


def dose_response(concentration, ec50, hill: float = 1.0) -> np.ndarray:
    """Fraction of the full phenotype at a dose: the Hill curve ``c^h / (c^h + EC50^h)`` (0 at ``c = 0``, 1/2 at the
    EC50, towards 1 above). ``concentration`` and ``ec50`` in uM, broadcast against each other."""
    c = np.asarray(concentration, dtype=np.float64)
    ec50 = np.asarray(ec50, dtype=np.float64)
    if np.any(~np.isfinite(c) | (c < 0)) or np.any(~np.isfinite(ec50) | (ec50 <= 0)) or not hill > 0:
        raise ValueError(f"dose_response needs doses >= 0, EC50s > 0 and hill > 0, got {c}, {ec50}, {hill}")
    return c**hill / (c**hill + ec50**hill)


def site_latent(plan: "SyntheticPlan", row: int) -> np.ndarray:
    """The latent ``z`` that generates site ``row`` of ``plan``: its molecule's, times the site's ``response``."""
    rec = plan.records.iloc[row]
    z = plan.latent[rec.molecule_index]
    return z * float(rec.response) if "response" in plan.records.columns else z


@dataclass(frozen=True)
class Phenotype:
    """Per-molecule rendering parameters derived from ``z`` (all dimensionless, sizes relative to the image)."""

    coverage: float  # fraction of the field covered by cells
    radius: float  # cell radius / min(H, W)
    nucleus_ratio: float  # nucleus radius / cell radius
    elongation: float  # major / minor axis
    levels: tuple[float, ...]  # per channel (canonical order): diffuse signal relative to bright structures
    texture_frequency: float  # cycles per pixel at 64 px, scaled with the image
    puncta: float  # mitochondrial puncta threshold (higher z -> denser puncta)
    ring: float  # actin / membrane ring strength

    @classmethod
    def from_latent(cls, z: np.ndarray) -> "Phenotype":
        z = [float(v) for v in z]
        return cls(
            coverage=0.42 + 0.22 * z[0],
            radius=0.10 * 1.4 ** z[1],
            nucleus_ratio=0.45 + 0.15 * z[2],
            elongation=1.25 + 0.25 * z[3],
            levels=tuple(0.45 + 0.35 * v for v in z[4:9]),
            texture_frequency=0.12 * 1.8 ** z[9],
            puncta=0.6 - 0.5 * z[10],
            ring=0.6 + 0.4 * z[11],
        )


def _bandpass_noise(rng: np.random.Generator, shape: tuple[int, int], freq: float) -> np.ndarray:
    """Unit-variance noise with its power around ``freq`` cycles/pixel (texture of a stain)."""
    h, w = shape
    k = np.sqrt(np.fft.fftfreq(h)[:, None] ** 2 + np.fft.rfftfreq(w)[None, :] ** 2)
    spec = np.fft.rfft2(rng.standard_normal(shape)) * np.exp(-(((k - freq) / (0.35 * freq)) ** 2))
    out = np.fft.irfft2(spec, s=shape)
    return (out - out.mean()) / (out.std() + 1e-8)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def render_site(
    pheno: Phenotype,
    rng: np.random.Generator,
    image_size: tuple[int, int],
    plate_gain: np.ndarray,
    plate_offset: np.ndarray | None = None,
) -> np.ndarray:
    """Render one site: ``uint16 (5, H, W)`` in canonical channel order.

    ``plate_gain``: ``(5,)`` multiplies each channel's signal; ``plate_offset``: optional ``(5,)`` background
    counts added to each channel (a plate's or batch's uneven staining / exposure), 0 when omitted.
    """
    h, w = image_size
    side = min(h, w)
    r = pheno.radius * side
    area = np.pi * r * r
    n = int(np.clip(rng.poisson(max(pheno.coverage * h * w / area, 1.0)), 1, 400))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    f32 = lambda x: x.astype(np.float32)[:, None, None]  # noqa: E731  (float32 halves the render time)
    cy, cx = f32(rng.uniform(0, h, n)), f32(rng.uniform(0, w, n))
    th = f32(rng.uniform(0, np.pi, n))
    size = r * f32(rng.lognormal(0.0, 0.12, n))
    a, b = size * np.sqrt(pheno.elongation), size / np.sqrt(pheno.elongation)
    dx, dy = xx[None] - cx, yy[None] - cy
    u = (dx * np.cos(th) + dy * np.sin(th)) / a
    v = (-dx * np.sin(th) + dy * np.cos(th)) / b
    k = (u * u + v * v).argmin(0)[None]  # each pixel belongs to its nearest cell (touching cells split)
    u, v = np.take_along_axis(u, k, 0)[0], np.take_along_axis(v, k, 0)[0]
    k = k[0]
    dmin = np.sqrt(u * u + v * v)  # 1 on the cell boundary
    # nucleus: off-centre ellipse inside the cell, in the cell's own coordinates
    off = rng.uniform(-0.15, 0.15, (2, n)).astype(np.float32)[:, k]
    dn = np.sqrt((u - off[0]) ** 2 + (v - off[1]) ** 2) / pheno.nucleus_ratio
    cyto = _sigmoid((1.0 - dmin) / 0.06)
    nuc = _sigmoid((1.0 - dn) / 0.08)
    freq = pheno.texture_frequency * 64.0 / max(side, 64)  # textures scale with the cells in larger fields
    tex = [_bandpass_noise(rng, (h, w), min(freq * f, 0.45)) for f in (1.0, 1.5, 0.7, 1.2, 2.0)]
    lv = pheno.levels
    # golgi: one bright blob next to each nucleus, at a random angle
    ga = rng.uniform(0, 2 * np.pi, n).astype(np.float32)[k]
    golgi = _sigmoid((1.0 - np.sqrt((u - 0.55 * np.cos(ga)) ** 2 + (v - 0.55 * np.sin(ga)) ** 2) / 0.22) / 0.1)
    mito = cyto * (1 - nuc) * np.clip(tex[0] - (pheno.puncta - 0.4), 0, None)
    signal = np.stack(
        [
            mito + lv[0] * cyto * 0.8,  # Mito: puncta on a diffuse cytoplasm
            cyto * (1 - 0.6 * nuc) * np.exp(-1.2 * dmin) * (1 + 0.35 * tex[1]) + lv[1] * cyto * 0.6,  # ER
            nuc * np.clip(tex[4] - 1.2, 0, None) * 1.5 + lv[2] * cyto * (1 + 0.3 * tex[2]) * 0.8,  # RNA/nucleoli
            pheno.ring * np.exp(-(((dmin - 0.95) / 0.09) ** 2)) * cyto + golgi * (1 - nuc) + lv[3] * cyto * 0.6
            * (1 + 0.3 * tex[3]),  # actin ring + golgi
            nuc * (0.75 + 0.25 * np.clip(1 + 0.6 * tex[4], 0, None)) + 0.3 * lv[4] * cyto,  # Hoechst, chromatin
        ]
    )
    signal = np.clip(signal, 0, None)
    # smooth vignetting with a per-site shifted centre; per-plate channel gains; site-level jitter
    oy, ox = rng.uniform(-0.2, 0.2, 2)
    illum = 1.0 - 0.3 * (((yy / h - 0.5 - oy) ** 2 + (xx / w - 0.5 - ox) ** 2) / 0.5)
    gain = plate_gain * rng.lognormal(0.0, 0.04, 5)
    expected = (180.0 + 2600.0 * signal * gain[:, None, None]) * illum[None]
    if plate_offset is not None:
        expected = expected + np.asarray(plate_offset, dtype=np.float64)[:, None, None] * illum[None]
    noisy = rng.poisson(np.clip(expected, 0, None) / 2.0) * 2.0 + rng.normal(0.0, 6.0, expected.shape)
    return np.clip(noisy, 0, 4095).astype(np.uint16)


def well_name(index: int) -> str:
    """0 -> "A01", 23 -> "A24", 24 -> "B01"; rows past "Z" continue "AA", "AB", ... (more than 624 wells)."""
    row, col = divmod(index, 24)
    letters = ""
    row += 1
    while row:
        row, rem = divmod(row - 1, 26)
        letters = chr(ord("A") + rem) + letters
    return f"{letters}{col + 1:02d}"


@dataclass
class SyntheticPlan:
    """Which molecule goes to which plate / well / site, and the plate effects. ``records``: one row per site."""

    records: pd.DataFrame  # sample_key, plate, well, site, smiles, inchikey, name, molecule_index (+ layout columns)
    latent: np.ndarray  # (num_molecules, LATENT_DIM)
    plate_gains: np.ndarray  # (num_plates, 5), rows in sorted plate order
    image_size: tuple[int, int]
    seed: int
    plate_offsets: np.ndarray | None = None  # (num_plates, 5) background counts, or none
    annotations: pd.DataFrame | None = None  # per-compound table of a plate layout (see synthetic_plates)


def plan_synthetic(
    num_molecules: int = 200,
    sites_per_molecule: int = 4,
    num_plates: int = 4,
    image_size: int | tuple[int, int] = 64,
    seed: int = 0,
    smiles: Sequence[str] | None = None,
) -> SyntheticPlan:
    """Lay out the sites. Site ``s`` of molecule ``i`` lands on plate ``(i + s) % num_plates``, so each
    molecule is replicated across plates and plate effects are not confounded with molecule identity."""
    if num_molecules < 1 or sites_per_molecule < 1 or num_plates < 1:
        raise ValueError(f"need >= 1 molecules/sites/plates, got {num_molecules}/{sites_per_molecule}/{num_plates}")
    rng = np.random.default_rng(seed)
    if smiles is None:
        mols = bundled_molecules()
        if num_molecules > len(mols):
            raise ValueError(f"num_molecules={num_molecules} exceeds the {len(mols)} bundled molecules")
        mols = mols.iloc[np.sort(rng.choice(len(mols), num_molecules, replace=False))].reset_index(drop=True)
    else:
        from .molecules import inchikeys_from_smiles

        smiles = list(smiles)[:num_molecules]
        mols = pd.DataFrame({"smiles": smiles, "inchikey": inchikeys_from_smiles(smiles), "name": ""})
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    rows, wells, next_well = [], {}, [0] * num_plates
    for i in range(len(mols)):
        for s in range(sites_per_molecule):
            p = (i + s) % num_plates
            if (i, p) not in wells:  # one well per molecule and plate; further sites are fields of it
                wells[i, p] = well_name(next_well[p])
                next_well[p] += 1
            plate, well, site = f"SYN{p + 1:04d}", wells[i, p], s // num_plates + 1
            rows.append(dict(sample_key=f"{plate}-{well}-{site}", plate=plate, well=well, site=site,
                             smiles=mols.smiles[i], inchikey=mols.inchikey[i], name=mols.name[i], molecule_index=i))
    records = pd.DataFrame(rows)
    plate_gains = rng.lognormal(0.0, 0.12, (num_plates, 5))
    return SyntheticPlan(records, molecule_latent(list(mols.smiles)), plate_gains, size, seed)


def iter_synthetic_sites(plan: SyntheticPlan, rows: Sequence[int] | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(row, uint16 (5, H, W))``; each site has its own seeded stream, so any subset renders the same."""
    plate_index = {p: i for i, p in enumerate(sorted(plan.records.plate.unique()))}
    for row in range(len(plan.records)) if rows is None else rows:
        rec = plan.records.iloc[row]
        rng = np.random.default_rng([plan.seed, int(row)])
        pheno = Phenotype.from_latent(site_latent(plan, row))
        p = plate_index[rec.plate]
        offset = None if plan.plate_offsets is None else plan.plate_offsets[p]
        yield row, render_site(pheno, rng, plan.image_size, plan.plate_gains[p], offset)


def _to_uint8(site16: np.ndarray) -> np.ndarray:
    from cloome_hf.image_processing_cloome import rescale_to_uint8

    return np.stack([rescale_to_uint8(channel) for channel in site16])


def make_synthetic_dataset(
    num_molecules: int = 200,
    sites_per_molecule: int = 4,
    num_plates: int = 4,
    image_size: int | tuple[int, int] = 64,
    seed: int = 0,
    smiles: Sequence[str] | None = None,
):
    """A ``datasets.Dataset`` of synthetic sites in the common schema (see :mod:`cloome_hf.data.schema`).

    Extra columns: ``name`` (compound name), ``molecule_index``, ``phenotype`` (the 12-d latent ``z`` that
    generated the site; for tests and diagnostics, never a model input).
    """
    plan = plan_synthetic(num_molecules, sites_per_molecule, num_plates, image_size, seed, smiles)
    return dataset_from_plan(plan)


def dataset_from_plan(plan: SyntheticPlan, extra_columns: Sequence[str] = ()):
    """Render every site of ``plan`` into a ``datasets.Dataset`` in the common schema, with ``name``,
    ``molecule_index``, ``phenotype`` (the site's latent, :func:`site_latent`), the string ``extra_columns`` of
    ``plan.records`` and, when the records have one, the float ``concentration`` (uM)."""
    import datasets

    from .schema import CONCENTRATION, features

    strings = ("sample_key", "plate", "well", "smiles", "inchikey", "name", *extra_columns)
    extra = {c: datasets.Value("string") for c in ("name", *extra_columns)}
    if CONCENTRATION in plan.records.columns:
        extra[CONCENTRATION] = datasets.Value("float64")
    feats = features({**extra, "molecule_index": datasets.Value("int32"),
                      "phenotype": datasets.List(datasets.Value("float32"))})
    cols = {c: [] for c in feats}
    for row, site16 in iter_synthetic_sites(plan):
        rec = plan.records.iloc[row]
        data, shape = encode_image(_to_uint8(site16))
        for c in strings:
            cols[c].append(None if pd.isna(rec[c]) else str(rec[c]))
        cols["site"].append(int(rec.site))
        cols["molecule_index"].append(int(rec.molecule_index))
        cols["image"].append(data)
        cols["image_shape"].append(shape)
        cols["phenotype"].append(site_latent(plan, row).tolist())
        if CONCENTRATION in cols:
            cols[CONCENTRATION].append(float(rec[CONCENTRATION]))
    info = datasets.DatasetInfo(description=dataset_description(CHANNELS), features=feats)
    return datasets.Dataset.from_dict(cols, features=feats, info=info)


def write_synthetic_layout(
    output_dir: str | os.PathLike,
    layout: str,
    num_molecules: int = 20,
    sites_per_molecule: int = 2,
    num_plates: int = 2,
    image_size: int | tuple[int, int] = (48, 64),
    seed: int = 0,
) -> dict[str, str]:
    """Write synthetic sites in a real on-disk layout so the real loaders run end to end on them.

    ``layout``:
      * ``"bray_npz"``: ``index.csv`` (Bray columns) + ``npz/{SAMPLE_KEY}.npz`` (key ``sample``: uint8 H x W x 5,
        plus pickled ``channels``/``filenames`` dicts as in the published files);
      * ``"tiff"``: ``index.csv`` with ``IMG_{channel}`` file stems + ``images/{plate}/{stem}.tif`` (uint16);
      * ``"jump"``: ``load_data.csv`` (``FileName_Orig{DNA,ER,RNA,AGP,Mito}``, ``PathName_Orig*``,
        ``Metadata_{Source,Plate,Well,Site,JCP2022}``) + ``compound.csv`` (``Metadata_JCP2022,
        Metadata_InChIKey, Metadata_SMILES``) + ``images/{plate}/*.tiff`` (uint16).
    Returns the written paths (``index``/``load_data``, ``compounds``, ``root``).
    """
    import tifffile

    if layout not in ("bray_npz", "tiff", "jump"):
        raise ValueError(f"unknown layout {layout!r}; expected 'bray_npz', 'tiff' or 'jump'")
    out = os.fspath(output_dir)
    plan = plan_synthetic(num_molecules, sites_per_molecule, num_plates, image_size, seed)
    rec = plan.records
    jcp = {k: f"JCP2022_{i + 1:06d}" for i, k in enumerate(dict.fromkeys(rec.inchikey))}
    rows = []
    for row, site16 in iter_synthetic_sites(plan):
        r = rec.iloc[row]
        base = dict(SAMPLE_KEY=r.sample_key, PLATE_ID=r.plate, WELL_POSITION=r.well, SITE=int(r.site),
                    SMILES=r.smiles, INCHIKEY=r.inchikey, CPD_NAME=r["name"])
        if layout == "bray_npz":
            os.makedirs(os.path.join(out, "npz"), exist_ok=True)
            np.savez(os.path.join(out, "npz", f"{r.sample_key}.npz"), sample=_to_uint8(site16).transpose(1, 2, 0),
                     channels=np.array({c: i for i, c in enumerate(CHANNELS)}, dtype=object),
                     filenames=np.array({c: f"{r.sample_key}_{c}.tif" for c in CHANNELS}, dtype=object))
        elif layout == "tiff":
            os.makedirs(os.path.join(out, "images", r.plate), exist_ok=True)
            for c, ch in zip(CHANNELS, site16):
                stem = f"{r.plate.lower()}_{r.well.lower()}_s{r.site}_{c.lower()}"
                tifffile.imwrite(os.path.join(out, "images", r.plate, stem + ".tif"), ch)
                base[f"IMG_{c}"] = f"{r.plate}/{stem}"
        else:
            os.makedirs(os.path.join(out, "images", r.plate), exist_ok=True)
            base = {"Metadata_Source": "source_syn", "Metadata_Plate": r.plate, "Metadata_Well": r.well,
                    "Metadata_Site": int(r.site), "Metadata_JCP2022": jcp[r.inchikey]}
            for jname, canon in JUMP_CHANNELS.items():
                fname = f"r{r.well}f{int(r.site):02d}-ch{list(JUMP_CHANNELS).index(jname) + 1}_{jname}.tiff"
                tifffile.imwrite(os.path.join(out, "images", r.plate, fname), site16[CHANNELS.index(canon)])
                base[f"FileName_Orig{jname}"] = fname
                base[f"PathName_Orig{jname}"] = f"images/{r.plate}"
        rows.append(base)
    if layout == "jump":
        pd.DataFrame(rows).to_csv(os.path.join(out, "load_data.csv"), index=False)
        comp = pd.DataFrame({"Metadata_JCP2022": list(jcp.values()), "Metadata_InChIKey": list(jcp),
                             "Metadata_SMILES": [rec.smiles[rec.inchikey == k].iloc[0] for k in jcp]})
        comp.to_csv(os.path.join(out, "compound.csv"), index=False)
        return {"load_data": os.path.join(out, "load_data.csv"), "compounds": os.path.join(out, "compound.csv"),
                "root": out}
    pd.DataFrame(rows).to_csv(os.path.join(out, "index.csv"), index=False)
    return {"index": os.path.join(out, "index.csv"),
            "root": os.path.join(out, "npz") if layout == "bray_npz" else os.path.join(out, "images")}
