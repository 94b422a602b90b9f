"""A synthetic JUMP cpg0016 plate set in the exact Cell Painting Gallery path layout, with the raw arrays kept for
independent reference computations.

Bucket keys (under a local folder, or uploaded to a local S3 server)::

    cpg0016-jump/source_4/images/2021_04_26_Batch1/images/BR00117035__2021-05-02T16_02_51-Measurement1/Images/
        r01c01f01p01-ch1sk1fk1fl1.tiff ...                       16-bit TIFF per site and channel
    cpg0016-jump/source_4/images/2021_04_26_Batch1/illum/BR00117035/BR00117035_IllumDNA.npy ...
    cpg0016-jump/source_4/workspace/load_data_csv/2021_04_26_Batch1/BR00117035/load_data_with_illum.parquet

Channel numbers in the file names deliberately differ from JUMP's column order, and every channel file holds its
own pattern, so a channel mix-up anywhere changes the stored image. Wells: a compound (trt), DMSO (negcon),
aloxistatin (a JUMP positive control) and a reagent without a structure (an ORF-like id absent from the
compound table).
"""

import os

import numpy as np
import pandas as pd
import tifffile
from uint8_rule import reference_uint8

BUCKET = "cellpainting-gallery"
SOURCE, BATCH = "source_4", "2021_04_26_Batch1"
PLATES = {"BR00117035": "BR00117035__2021-05-02T16_02_51-Measurement1",
          "BR00117036": "BR00117036__2021-05-03T09_12_44-Measurement1"}
CHANNEL_NUMBER = {"Mito": 1, "AGP": 2, "RNA": 3, "ER": 4, "DNA": 5, "Brightfield": 6}
STAINS = ("DNA", "ER", "RNA", "AGP", "Mito")
CANONICAL_TO_JUMP = {"Mito": "Mito", "ERSyto": "ER", "ERSytoBleed": "RNA", "Ph_golgi": "AGP", "Hoechst": "DNA"}
DMSO, ALOXISTATIN, COMPOUND, REAGENT = "JCP2022_033924", "JCP2022_085227", "JCP2022_000123", "JCP2022_905588"
WELLS = {"A01": COMPOUND, "A02": DMSO, "B01": ALOXISTATIN, "B02": REAGENT}
COMPOUNDS = pd.DataFrame({
    "Metadata_JCP2022": [COMPOUND, DMSO, ALOXISTATIN],
    "Metadata_InChIKey": ["BSYNRYMUTXBXSQ-UHFFFAOYSA-N", "IAZDPXIOMUYVGZ-UHFFFAOYSA-N", ""],
    "Metadata_SMILES": ["CC(=O)Oc1ccccc1C(=O)O", "CS(C)=O", "CCOC(=O)C1OC1C(=O)NC(CC(C)C)C(=O)NCCC(C)C"],
})


def image_key(plate: str, well: str, site: int, channel: str) -> str:
    row, col = ord(well[0]) - ord("A") + 1, int(well[1:])
    name = f"r{row:02d}c{col:02d}f{site:02d}p01-ch{CHANNEL_NUMBER[channel]}sk1fk1fl1.tiff"
    return f"cpg0016-jump/{SOURCE}/images/{BATCH}/images/{PLATES[plate]}/Images/{name}"


def illum_key(plate: str, channel: str) -> str:
    return f"cpg0016-jump/{SOURCE}/images/{BATCH}/illum/{plate}/{plate}_Illum{channel}.npy"


def load_data_key(plate: str, name: str) -> str:
    return f"cpg0016-jump/{SOURCE}/workspace/load_data_csv/{BATCH}/{plate}/{name}"


def _pattern(channel: str, shape, rng) -> np.ndarray:
    """A different structure per channel (gradients in different directions, stripes, a checkerboard, noise)."""
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float64)
    base = {"DNA": 40 * yy, "ER": 30 * xx, "RNA": 900 * (xx % 5), "AGP": 700 * ((yy + xx) % 2),
            "Mito": 20 * (yy + 2 * xx), "Brightfield": 5 * xx * yy / max(shape)}[channel]
    return (300 + base + rng.integers(0, 400, size=shape)).astype(np.uint16)


def write_cpg0016(root, shape=(24, 32), sites=2, plates=tuple(PLATES), wells=None) -> dict:
    """Write the plates under ``root`` (bucket keys as paths). Returns the raw arrays (``raw[(plate, well, site,
    channel)]``), the illumination functions (``illum[(plate, channel)]``, float32) and the load_data tables in
    both forms (``url_table``: ``URL_*`` columns with ``s3://`` URLs; ``file_table``: ``FileName_`` /
    ``PathName_`` with ``s3://`` folders), one row per site."""
    wells = dict(WELLS if wells is None else wells)
    rng = np.random.default_rng(0)
    raw, illum, url_rows, file_rows = {}, {}, [], []
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]] / np.array(shape).reshape(2, 1, 1)
    for p, plate in enumerate(plates):
        for c, channel in enumerate(STAINS):  # vignetting-like, different per plate and channel, > 0
            function = (0.45 + 0.1 * c + 0.2 * p + 0.9 * np.exp(-((yy - 0.4) ** 2 + (xx - 0.6) ** 2) * (2 + c)))
            illum[(plate, channel)] = function.astype(np.float32)
            os.makedirs(os.path.dirname(os.path.join(root, illum_key(plate, channel))), exist_ok=True)
            np.save(os.path.join(root, illum_key(plate, channel)), illum[(plate, channel)])
        for well in wells:
            for site in range(1, sites + 1):
                meta = {"Metadata_Source": SOURCE, "Metadata_Batch": BATCH, "Metadata_Plate": plate,
                        "Metadata_Well": well, "Metadata_Site": str(site), "Metadata_ImageSizeX": str(shape[1]),
                        "Metadata_ImageSizeY": str(shape[0]), "Metadata_ImageResolutionX": "5.98e-07"}
                url_row, file_row = dict(meta), dict(meta)
                for channel in STAINS + ("Brightfield",):
                    key = image_key(plate, well, site, channel)
                    raw[(plate, well, site, channel)] = image = _pattern(channel, shape, rng)
                    os.makedirs(os.path.dirname(os.path.join(root, key)), exist_ok=True)
                    tifffile.imwrite(os.path.join(root, key), image)
                    url_row[f"URL_Orig{channel}"] = f"s3://{BUCKET}/{key}"
                    file_row[f"FileName_Orig{channel}"] = os.path.basename(key)
                    file_row[f"PathName_Orig{channel}"] = f"s3://{BUCKET}/{os.path.dirname(key)}/"
                for channel in STAINS:
                    key = illum_key(plate, channel)
                    url_row[f"URL_Illum{channel}"] = f"s3://{BUCKET}/{key}"
                    file_row[f"FileName_Illum{channel}"] = os.path.basename(key)
                    file_row[f"PathName_Illum{channel}"] = f"s3://{BUCKET}/{os.path.dirname(key)}"
                url_rows.append(url_row)
                file_rows.append(file_row)
    well_table = pd.DataFrame([{"Metadata_Source": SOURCE, "Metadata_Plate": plate, "Metadata_Well": w,
                                "Metadata_JCP2022": j} for plate in plates for w, j in wells.items()])
    plate_table = pd.DataFrame({"Metadata_Source": SOURCE, "Metadata_Batch": BATCH, "Metadata_Plate": list(plates),
                                "Metadata_PlateType": "COMPOUND"})
    return {"raw": raw, "illum": illum, "url_table": pd.DataFrame(url_rows), "file_table": pd.DataFrame(file_rows),
            "wells": well_table, "plates": plate_table, "compounds": COMPOUNDS.copy()}


def expected_site(layout: dict, plate: str, well: str, site: int, illumination: bool = True,
                  extra=()) -> np.ndarray:
    """The stored site computed independently: per canonical channel, raw / illum in float64, then the rule."""
    out = []
    for canonical in ("Mito", "ERSyto", "ERSytoBleed", "Ph_golgi", "Hoechst"):
        channel = CANONICAL_TO_JUMP[canonical]
        x = layout["raw"][(plate, well, site, channel)].astype(np.float64)
        if illumination:
            x = x / layout["illum"][(plate, channel)].astype(np.float64)
        out.append(reference_uint8(x))
    for channel in extra:
        out.append(reference_uint8(layout["raw"][(plate, well, site, channel)]))
    return np.stack(out)
