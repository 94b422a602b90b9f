"""Each on-disk layout end to end (synthetic files in the real layouts, the real example site, the real index
rows), checked against independent readers; and every kind of bad input."""

import os
import shutil

import numpy as np
import pandas as pd
import pytest
import tifffile
from uint8_rule import reference_uint8

from cloome_hf import example_site
from cloome_hf.channels import CHANNELS
from cloome_hf.data import decode_row, load_cell_painting, open_source, write_synthetic_layout

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures")
JUMP_NAMES = {"Mito": "Mito", "ERSyto": "ER", "ERSytoBleed": "RNA", "Ph_golgi": "AGP", "Hoechst": "DNA"}


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    root = tmp_path_factory.mktemp("layouts")
    return {name: write_synthetic_layout(root / name, name, num_molecules=4, sites_per_molecule=2, num_plates=2,
                                         image_size=(40, 56)) for name in ("bray_npz", "tiff", "jump")}


def _rows(source):
    return {r["sample_key"]: r for r in source.iter_rows()}


def test_bray_npz_layout_matches_np_load(layouts, tmp_path):
    p = layouts["bray_npz"]
    ds = load_cell_painting(p["index"], root=p["root"], split="train", cache_dir=str(tmp_path))
    index = pd.read_csv(p["index"])
    assert sorted(ds["sample_key"]) == sorted(index.SAMPLE_KEY)
    for row in ds:
        with np.load(os.path.join(p["root"], f"{row['sample_key']}.npz"), allow_pickle=True) as f:
            expected = f["sample"].transpose(2, 0, 1)
        np.testing.assert_array_equal(decode_row(row), expected)
        ref = index[index.SAMPLE_KEY == row["sample_key"]].iloc[0]
        assert (row["smiles"], row["inchikey"], row["plate"], row["site"]) == (ref.SMILES, ref.INCHIKEY,
                                                                                  ref.PLATE_ID, ref.SITE)


def test_tiff_layout_converts_16_bit_with_the_published_rule(layouts):
    p = layouts["tiff"]
    index = pd.read_csv(p["index"])
    rows = _rows(open_source("auto", index=p["index"], root=p["root"]))  # auto: no npz there -> tiff
    assert len(rows) == len(index) == 8
    for _, ref in index.iterrows():
        got = decode_row(rows[ref.SAMPLE_KEY])
        for c, name in enumerate(CHANNELS):
            raw = tifffile.imread(os.path.join(p["root"], ref[f"IMG_{name}"] + ".tif"))
            np.testing.assert_array_equal(got[c], reference_uint8(raw))


def test_raw_layout_streams_the_same_rows(layouts, tmp_path):
    p = layouts["tiff"]
    stream = load_cell_painting(p["index"], root=p["root"], split="train", streaming=True)
    in_memory = load_cell_painting(p["index"], root=p["root"], split="train", cache_dir=str(tmp_path))
    assert list(stream) == in_memory.to_list() and len(in_memory) == 8


def test_jump_layout_maps_stain_names_and_joins_compounds(layouts, tmp_path):
    p = layouts["jump"]
    ld, comp = pd.read_csv(p["load_data"]), pd.read_csv(p["compounds"])
    ds = load_cell_painting(p["load_data"], compounds=p["compounds"], root=p["root"], split="train",
                            cache_dir=str(tmp_path))
    assert len(ds) == len(ld) and "Metadata_Source" in ds.column_names
    smiles_of = dict(zip(comp.Metadata_JCP2022, comp.Metadata_SMILES))
    key_of = dict(zip(comp.Metadata_JCP2022, comp.Metadata_InChIKey))
    by_key = {r["sample_key"]: r for r in ds}
    for _, ref in ld.iterrows():
        row = by_key[f"{ref.Metadata_Source}-{ref.Metadata_Plate}-{ref.Metadata_Well}-{ref.Metadata_Site}"]
        assert row["smiles"] == smiles_of[ref.Metadata_JCP2022] and row["inchikey"] == key_of[ref.Metadata_JCP2022]
        for c, name in enumerate(CHANNELS):  # canonical order, whatever the JUMP stain names
            j = JUMP_NAMES[name]
            raw = tifffile.imread(os.path.join(p["root"], ref[f"PathName_Orig{j}"], ref[f"FileName_Orig{j}"]))
            np.testing.assert_array_equal(decode_row(row)[c], reference_uint8(raw))


def test_jump_compounds_joined_through_a_well_table(layouts, tmp_path):
    p = layouts["jump"]
    ld = pd.read_csv(p["load_data"])
    ld[["Metadata_Source", "Metadata_Plate", "Metadata_Well", "Metadata_JCP2022"]].to_csv(tmp_path / "well.csv",
                                                                                       index=False)
    ld.drop(columns="Metadata_JCP2022").to_csv(tmp_path / "load_data.csv", index=False)
    via_wells = open_source("jump", load_data=tmp_path / "load_data.csv", compounds=p["compounds"],
                            wells=tmp_path / "well.csv", root=p["root"]).records
    direct = open_source("jump", load_data=p["load_data"], compounds=p["compounds"], root=p["root"]).records
    pd.testing.assert_frame_equal(via_wells[list(direct.columns)], direct)
    with pytest.raises(ValueError, match="cannot join"):
        open_source("jump", load_data=tmp_path / "load_data.csv", compounds=p["compounds"], root=p["root"])


def test_real_example_site_and_real_index_rows(tmp_path):
    index = pd.read_csv(os.path.join(DATA, "bray2017_index_sample.csv")).head(3).copy()
    for c in CHANNELS:  # the real example site stands in for the first real row; the others are missing
        index[f"IMG_{c}"] = [os.path.basename(example_site()[c]), "missing_a", "missing_b"]
    index.to_csv(tmp_path / "index.csv", index=False)
    root = os.path.dirname(example_site()[CHANNELS[0]])  # the table's files lie under the root (#22 class 5)
    source = open_source("tiff", index=tmp_path / "index.csv", root=root, errors="skip")
    rows = list(source.iter_rows())
    assert len(rows) == 1 and [s.row for s in source.skipped] == [1, 2]
    assert "not found" in source.skipped[0].reason and "missing_a" in source.skipped[0].reason
    row = rows[0]
    assert row["sample_key"] == index.SAMPLE_KEY[0] and row["inchikey"] == index.INCHIKEY[0]
    assert row["IMG_CNT_CELLS"] == index.IMG_CNT_CELLS[0] and row["ROW_NR_LABEL_MAT"] == index.ROW_NR_LABEL_MAT[0]
    image = decode_row(row)
    assert image.shape == (5, 520, 696)
    for c, name in enumerate(CHANNELS):
        raw = tifffile.imread(example_site()[name])
        np.testing.assert_array_equal(image[c], reference_uint8(raw))


def test_real_index_with_npz_folder(tmp_path, layouts):
    """The real 1,000-row index: sites whose npz exists load with the real metadata, the others are listed."""
    index = pd.read_csv(os.path.join(DATA, "bray2017_index_sample.csv"))
    syn = sorted(os.listdir(layouts["bray_npz"]["root"]))[:2]
    os.makedirs(tmp_path / "npz")
    for name, key in zip(syn, index.SAMPLE_KEY[:2]):
        shutil.copy(os.path.join(layouts["bray_npz"]["root"], name), tmp_path / "npz" / f"{key}.npz")
    source = open_source("bray_npz", index=os.path.join(DATA, "bray2017_index_sample.csv"), root=tmp_path / "npz",
                         errors="skip")
    rows = list(source.iter_rows(range(10)))
    assert [r["sample_key"] for r in rows] == index.SAMPLE_KEY[:2].tolist()
    assert [r["CPD_NAME"] for r in rows] == index.CPD_NAME[:2].tolist()
    assert len(source.skipped) == 8 and all("not found" in s.reason for s in source.skipped)
    with pytest.raises(ValueError, match=rf"row 2 \(sample '{index.SAMPLE_KEY[2]}'\).*{index.SAMPLE_KEY[2]}\.npz"):
        next(iter(open_source("bray_npz", index=os.path.join(DATA, "bray2017_index_sample.csv"),
                              root=tmp_path / "npz").iter_rows(range(2, 3))))


# ---------------------------------------------------------------- bad input
def _tiff_copy(layouts, tmp_path):
    root = tmp_path / "images"
    shutil.copytree(layouts["tiff"]["root"], root)
    return pd.read_csv(layouts["tiff"]["index"]), root


def test_corrupt_truncated_and_mismatched_files(tmp_path, layouts):
    index, root = _tiff_copy(layouts, tmp_path)
    truncated = root / (index.IMG_Mito[0] + ".tif")
    truncated.write_bytes(truncated.read_bytes()[:200])
    small = root / (index.IMG_Hoechst[1] + ".tif")
    tifffile.imwrite(small, np.full((20, 20), 300, dtype=np.uint16))
    index.to_csv(tmp_path / "index.csv", index=False)
    with pytest.raises(ValueError, match=rf"row 0 .*{index.IMG_Mito[0]}"):
        list(open_source("tiff", index=tmp_path / "index.csv", root=root).iter_rows())
    with pytest.raises(ValueError, match=r"row 1 .*different shapes"):
        list(open_source("tiff", index=tmp_path / "index.csv", root=root).iter_rows([1]))
    skip = open_source("tiff", index=tmp_path / "index.csv", root=root, errors="skip")
    assert len(list(skip.iter_rows())) == 6 and [s.row for s in skip.skipped] == [0, 1]
    # wrong site size against an expected shape
    with pytest.raises(ValueError, match=r"row 2 .*40x56, expected 520x696"):
        list(open_source("tiff", index=tmp_path / "index.csv", root=root, expected_shape=(520, 696)).iter_rows([2]))


def test_corrupt_npz_blank_image_and_wrong_channel_count(tmp_path, layouts):
    src = layouts["bray_npz"]
    shutil.copytree(src["root"], tmp_path / "npz")
    index = pd.read_csv(src["index"])
    (tmp_path / "npz" / f"{index.SAMPLE_KEY[0]}.npz").write_bytes(b"PK\x03\x04 not a zip")
    np.savez(tmp_path / "npz" / f"{index.SAMPLE_KEY[1]}.npz", sample=np.zeros((40, 56, 5), np.uint8))
    np.savez(tmp_path / "npz" / f"{index.SAMPLE_KEY[2]}.npz", sample=np.ones((40, 56, 3), np.uint8))
    source = open_source("bray_npz", index=src["index"], root=tmp_path / "npz", errors="skip")
    assert len(list(source.iter_rows())) == 5
    reasons = {s.row: s.reason for s in source.skipped}
    assert set(reasons) == {0, 1, 2}
    assert f"{index.SAMPLE_KEY[0]}.npz" in reasons[0] and "all zero" in reasons[1] and "3" in reasons[2]
    with pytest.raises(ValueError, match=r"row 0 .*BadZipFile"):  # surfaced through datasets' generator
        load_cell_painting(src["index"], root=tmp_path / "npz", kind="bray_npz", split="train",
                           cache_dir=str(tmp_path / "cache"))


def test_index_errors_and_invalid_smiles(tmp_path, layouts):
    index = pd.read_csv(layouts["bray_npz"]["index"])
    index.drop(columns=["SMILES"]).to_csv(tmp_path / "no_smiles.csv", index=False)
    with pytest.raises(ValueError, match=r"no_smiles.csv lacks required column\(s\) \['SMILES'\]"):
        open_source("bray_npz", index=tmp_path / "no_smiles.csv", root=layouts["bray_npz"]["root"])
    bad = index.copy()
    bad.loc[3, "SMILES"] = "C1CC(N"
    bad.loc[5, "INCHIKEY"] = ""  # missing keys are computed from the SMILES
    bad.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ValueError, match=r"row 3 .*invalid SMILES 'C1CC\(N'"):
        open_source("bray_npz", index=tmp_path / "bad.csv", root=layouts["bray_npz"]["root"])
    source = open_source("bray_npz", index=tmp_path / "bad.csv", root=layouts["bray_npz"]["root"], errors="skip")
    assert len(source) == 7 and [(s.row, s.reason) for s in source.skipped] == [(3, "invalid SMILES 'C1CC(N'")]
    assert source.records.set_index("sample_key").inchikey[index.SAMPLE_KEY[5]] == index.INCHIKEY[5]
    index.assign(SAMPLE_KEY=index.SAMPLE_KEY[0]).to_csv(tmp_path / "dup.csv", index=False)
    with pytest.raises(ValueError, match="appears more than once"):
        open_source("bray_npz", index=tmp_path / "dup.csv", root=layouts["bray_npz"]["root"])
