"""Hostile and careless inputs on the data path: interrupted or foreign ``prepare`` folders, all-skipped shards,
a second writer, tables reaching outside ``--root``, TIFF headers declaring huge images, SMILES look-alikes,
bad image-processor settings."""

import json
import math
import os
import re
import shutil
import struct

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from cloome_hf.data import load_cell_painting, open_source, prepare_dataset, write_synthetic_layout
from lock_holder import lock_held_elsewhere


@pytest.fixture(scope="module")
def npz_layout(tmp_path_factory):
    root = tmp_path_factory.mktemp("hardening_npz")
    return write_synthetic_layout(root, "bray_npz", num_molecules=7, sites_per_molecule=2, num_plates=2,
                                  image_size=(24, 24), seed=5)


def _source(layout, errors="raise"):
    return open_source("bray_npz", index=layout["index"], root=layout["root"], errors=errors)


def _keys(folder):
    """Sample keys of every shard under folder/data, read with pyarrow (not through the loader under test)."""
    files = sorted(os.listdir(os.path.join(folder, "data")))
    return [k for f in files for k in pq.read_table(os.path.join(folder, "data", f)).column("sample_key").to_pylist()]


# ---------------------------------------------------------------------------------------------- prepare folders
def test_an_interrupted_prepare_folder_is_refused_naming_the_missing_shards(tmp_path, npz_layout):
    out = tmp_path / "out"
    prepare_dataset(_source(npz_layout), out, shard_size=4, max_shards=1, progress=False)  # 1 of 4 shards
    with pytest.raises(ValueError, match=r"lacks 3 of its 4 shards \(train-00001-of-00004\.parquet, "
                                         r"train-00002-of-00004\.parquet, train-00003-of-00004\.parquet\)"):
        load_cell_painting(out, split="train", cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ValueError, match="interrupted or unfinished prepare"):
        load_cell_painting(out, split="train", streaming=True)
    prepare_dataset(_source(npz_layout), out, shard_size=4, progress=False)  # finishing the run makes it loadable
    ds = load_cell_painting(out, split="train", cache_dir=str(tmp_path / "cache"))
    assert ds["sample_key"] == pd.read_csv(npz_layout["index"])["SAMPLE_KEY"].tolist()


def test_a_shard_with_rows_missing_or_files_of_another_plan_is_refused(tmp_path, npz_layout):
    good = tmp_path / "good"
    prepare_dataset(_source(npz_layout), good, shard_size=4, progress=False)
    cut = tmp_path / "cut"
    shutil.copytree(good, cut)
    shard = cut / "data" / "train-00002-of-00004.parquet"
    pq.write_table(pq.read_table(shard).slice(0, 3), shard)  # a shard that lost a row
    with pytest.raises(ValueError, match=r"train-00002-of-00004\.parquet has 3 rows, its plan and report say 4"):
        load_cell_painting(cut, split="train", cache_dir=str(tmp_path / "cache"))
    foreign = tmp_path / "foreign"
    shutil.copytree(good, foreign)
    shutil.copy(good / "data" / "train-00000-of-00004.parquet", foreign / "data" / "train-00000-of-00002.parquet")
    with pytest.raises(ValueError, match=r"does not plan \(train-00000-of-00002\.parquet\): another run's shards"):
        load_cell_painting(foreign, split="train", cache_dir=str(tmp_path / "cache"))
    for damage in ("{\"format\": ", json.dumps({"format": "something/else", "channels": [], "splits": {}}),
                   json.dumps({"channels": []})):
        (foreign / "cloome_data.json").write_text(damage)
        with pytest.raises(ValueError, match="cloome_data.json"):
            load_cell_painting(foreign, split="train", cache_dir=str(tmp_path / "cache"))
    # the same folder without its manifest: Hub-style shard names still reveal a missing shard
    bare = tmp_path / "bare"
    shutil.copytree(good / "data", bare / "data")
    os.remove(bare / "data" / "train-00001-of-00004.parquet")
    with pytest.raises(ValueError, match=r"lacks shard\(s\) \[1\] of the 4 shards"):
        load_cell_painting(bare, split="train", cache_dir=str(tmp_path / "cache"))


def _copy_layout(layout, folder):
    """A copy of the npz layout (index.csv + npz/) under ``folder``, to damage."""
    shutil.copy(layout["index"], folder / "index.csv")
    shutil.copytree(layout["root"], folder / "npz")
    return {"index": folder / "index.csv", "root": folder / "npz"}


def test_a_shard_whose_sites_were_all_skipped_leaves_the_dataset_loadable(tmp_path, npz_layout):
    import datasets

    layout = _copy_layout(npz_layout, tmp_path)
    index = pd.read_csv(layout["index"])
    gone = index["SAMPLE_KEY"][4:8].tolist()  # every site of shard 1 (shard_size 4) is unreadable
    for key in gone:
        os.remove(layout["root"] / f"{key}.npz")
    out = tmp_path / "out"
    report = prepare_dataset(_source(layout, errors="skip"), out, shard_size=4, progress=False)
    assert report["complete"] and report["num_skipped"] == 4
    expected = [k for k in index["SAMPLE_KEY"] if k not in gone]
    assert _keys(out) == expected
    assert load_cell_painting(out, split="train", cache_dir=str(tmp_path / "c1"))["sample_key"] == expected
    assert [r["sample_key"] for r in load_cell_painting(out, split="train", streaming=True)] == expected
    # the folder as the Hub serves it, read by datasets itself (no cloome-hf reader in between)
    files = sorted(str(p) for p in (out / "data").iterdir())
    assert datasets.load_dataset("parquet", data_files=files, split="train",
                                 cache_dir=str(tmp_path / "c2"))["sample_key"] == expected


def test_a_split_whose_every_site_was_skipped_is_refused_by_name(tmp_path, npz_layout):
    layout = _copy_layout(npz_layout, tmp_path)
    for f in layout["root"].glob("*.npz"):
        f.unlink()
    prepare_dataset(_source(layout, errors="skip"), tmp_path / "out", shard_size=4, progress=False)
    with pytest.raises(ValueError, match=r"split\(s\) \['train'\] of .* hold no sites: every site was skipped"):
        load_cell_painting(tmp_path / "out", split="train", cache_dir=str(tmp_path / "cache"))


def test_prepare_refuses_a_folder_another_writer_holds(tmp_path, npz_layout):
    from cloome_hf.safe_io import LOCK_FILE

    out = tmp_path / "out"
    out.mkdir()
    with lock_held_elsewhere(out, "cloome prepare") as pid:
        with pytest.raises(ValueError, match=rf"in use by another run \(cloome prepare, pid {pid}"):
            prepare_dataset(_source(npz_layout), out, shard_size=4, progress=False)
        assert sorted(os.listdir(out)) == [LOCK_FILE]  # nothing written next to the other run
    report = prepare_dataset(_source(npz_layout), out, shard_size=4, progress=False)  # a dead holder's lock
    assert report["complete"] and not (out / LOCK_FILE).exists()


def test_prepare_refuses_a_new_split_with_other_channels_or_columns(tmp_path, npz_layout):
    out = tmp_path / "out"
    prepare_dataset(_source(npz_layout), out, shard_size=4, progress=False)
    original = json.loads((out / "cloome_data.json").read_text())
    manifest = dict(original, channels=original["channels"][::-1])
    (out / "cloome_data.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"different settings \(channels\)"):
        prepare_dataset(_source(npz_layout), out, split="test", shard_size=4, progress=False)
    manifest = dict(original, features={**original["features"], "dose": {"dtype": "float64", "_type": "Value"}})
    (out / "cloome_data.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"different settings \(features\).*'dose'"):
        prepare_dataset(_source(npz_layout), out, split="test", shard_size=4, progress=False)
    (out / "cloome_data.json").write_text(json.dumps(original))
    prepare_dataset(_source(npz_layout), out, split="test", shard_size=4, progress=False)  # the same columns: fine
    assert set(load_cell_painting(out, cache_dir=str(tmp_path / "cache"))) == {"train", "test"}


# ---------------------------------------------------------------------------------------------- paths in tables
def test_a_sample_key_outside_root_is_refused(tmp_path, npz_layout):
    index = pd.read_csv(npz_layout["index"])
    for key in ("../../x", "sub/../../x", "/etc/passwd"):
        bad = index.copy()
        bad.loc[3, "SAMPLE_KEY"] = key
        bad.to_csv(tmp_path / "index.csv", index=False)
        for errors in ("raise", "skip"):  # a hostile table is refused whole, never skipped row by row
            with pytest.raises(ValueError, match=rf"row 3: SAMPLE_KEY '{key}' resolves to .*, outside the root"):
                open_source("bray_npz", index=tmp_path / "index.csv", root=npz_layout["root"], errors=errors)
    index.loc[3, "SAMPLE_KEY"] = "sub/./../" + index.loc[3, "SAMPLE_KEY"]  # stays inside: allowed
    index.to_csv(tmp_path / "index.csv", index=False)
    assert len(open_source("bray_npz", index=tmp_path / "index.csv", root=npz_layout["root"])) == len(index)


def test_tiff_and_load_data_paths_outside_root_are_refused(tmp_path):
    tiff = write_synthetic_layout(tmp_path / "tiff", "tiff", num_molecules=2, sites_per_molecule=1, num_plates=1,
                                  image_size=16, seed=0)
    index = pd.read_csv(tiff["index"])
    index.loc[1, "IMG_Mito"] = "../../../etc/shadow"
    index.to_csv(tmp_path / "tiff_index.csv", index=False)
    with pytest.raises(ValueError, match=r"row 1: IMG_Mito '\.\./\.\./\.\./etc/shadow' resolves to .*outside"):
        open_source("tiff", index=tmp_path / "tiff_index.csv", root=tiff["root"])

    jump = write_synthetic_layout(tmp_path / "jump", "jump", num_molecules=2, sites_per_molecule=1, num_plates=1,
                                  image_size=16, seed=0)
    table = pd.read_csv(jump["load_data"])
    for column, value in (("PathName_OrigER", "../../elsewhere"), ("FileName_OrigER", "../../../x.tiff")):
        bad = table.copy()
        bad.loc[1, column] = value
        bad.to_csv(tmp_path / "load_data.csv", index=False)
        with pytest.raises(ValueError, match=r"row 1: PathName_OrigER \+ FileName_OrigER .*outside the root"):
            open_source("jump", load_data=tmp_path / "load_data.csv", compounds=jump["compounds"], root=jump["root"])
    good = open_source("jump", load_data=jump["load_data"], compounds=jump["compounds"], root=jump["root"])
    assert len(good) == len(table)


# ---------------------------------------------------------------------------------------------- TIFF headers
def _tiff_header(width, height, byte_count, bits=16):
    """A classic little-endian TIFF: the header and one IFD declaring a width x height image (no pixel data)."""
    tags = [(256, 4, width), (257, 4, height), (258, 3, bits), (259, 3, 1), (262, 3, 1), (273, 4, 8 + 2 + 12 * 9 + 4),
            (277, 3, 1), (278, 4, height), (279, 4, byte_count)]
    ifd = struct.pack("<H", len(tags)) + b"".join(
        struct.pack("<HHI", code, kind, 1) + (struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value))
        for code, kind, value in tags) + struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 8) + ifd


@pytest.mark.parametrize("consistent", [True, False], ids=["fast-path", "tifffile"])
def test_a_tiff_declaring_a_huge_image_is_refused_before_allocation(tmp_path, consistent):
    from cloome_hf import fast_tiff
    from cloome_hf.image_files import read_image_file

    side = 20_000  # 4e8 pixels > the 2**28 default; the file is 130 bytes
    data = _tiff_header(side, side, side * side * 2 if consistent else 100)
    path = tmp_path / "bomb.tif"
    path.write_bytes(data)
    assert side * side > fast_tiff.MAX_TIFF_PIXELS
    limit = f"{fast_tiff.MAX_TIFF_PIXELS:,}"
    message = rf"{path}: the TIFF header declares 400,000,000 pixels, more than the limit of {limit}"
    with pytest.raises(ValueError, match=message):
        read_image_file(path)
    with pytest.raises(ValueError, match="declares 400,000,000 pixels"):  # remote files arrive as bytes
        fast_tiff.read_tiff(data, "s3://bucket/bomb.tif")


def test_the_tiff_pixel_limit_is_configurable(tmp_path, monkeypatch):
    import tifffile

    from cloome_hf import fast_tiff
    from cloome_hf.image_files import read_image_file

    image = np.arange(24 * 30, dtype=np.uint16).reshape(24, 30)
    tifffile.imwrite(tmp_path / "site.tif", image)
    np.testing.assert_array_equal(read_image_file(tmp_path / "site.tif"), image)
    monkeypatch.setattr(fast_tiff, "MAX_TIFF_PIXELS", 24 * 30 - 1)
    with pytest.raises(ValueError, match="declares 720 pixels, more than the limit of 719"):
        read_image_file(tmp_path / "site.tif")


# ---------------------------------------------------------------------------------------------- molecules
LOOK_ALIKES = {
    "CC O": "whitespace at character 2: RDKit would read only 'CC'",
    "CC\tO": "whitespace at character 2",
    "CC\u039f": r"non-ASCII character 'Ο' \(U\+039F\)",  # Greek capital Omicron
    "CCO\u0301": r"non-ASCII character .* \(U\+0301\)",  # combining acute accent
    "C\u200bCO": r"non-ASCII character .* \(U\+200B\)",  # zero-width space
}


def test_rdkit_alone_would_read_a_different_molecule():
    """The attack is real: RDKit parses these strings, as another molecule than written."""
    from rdkit import Chem

    assert Chem.MolToSmiles(Chem.MolFromSmiles("CC O")) == "CC"
    assert Chem.MolToSmiles(Chem.MolFromSmiles("CC\u039f")) == "CC"


@pytest.mark.parametrize("text", list(LOOK_ALIKES))
def test_the_featurizer_refuses_smiles_look_alikes(text):
    from cloome_hf.featurization_cloome import MoleculeFeaturizer

    featurizer = MoleculeFeaturizer()
    shown = re.escape(repr(text))
    with pytest.raises(ValueError, match=rf"Invalid SMILES {shown} at position 1 \({LOOK_ALIKES[text]}"):
        featurizer(["CCO", text])
    rows, failed = featurizer.featurize(["CCO", text, " CCO "], errors="skip")
    assert failed == [1] and rows.shape[0] == 2  # surrounding whitespace is stripped, not refused
    np.testing.assert_array_equal(rows[0], rows[1])


def test_none_and_non_strings_get_the_same_message():
    from cloome_hf.featurization_cloome import MoleculeFeaturizer

    featurizer = MoleculeFeaturizer()
    for entries, shown, position in ((["CCO", None], "None", 1), (["CCO", "CC", 3.5], "3.5", 2)):
        with pytest.raises(ValueError, match=rf"Invalid SMILES {shown} at position {position} \(not a string"):
            featurizer(entries)
    for value, shown in ((None, "None"), (7, "7"), (b"CCO", "b'CCO'")):
        with pytest.raises(ValueError, match=rf"Invalid SMILES {re.escape(shown)} at position 0 \(not a string"):
            featurizer(value)


def test_sources_and_inchikeys_apply_the_featurizers_rule(tmp_path, npz_layout):
    from cloome_hf.data.molecules import inchikeys_from_smiles, invalid_smiles
    from cloome_hf.featurization_cloome import MoleculeFeaturizer

    strings = ["CCO", *LOOK_ALIKES, "", None, "c1ccccc1", "C1CC"]
    _, failed = MoleculeFeaturizer().featurize(strings, errors="skip")
    assert invalid_smiles(strings) == failed == [1, 2, 3, 4, 5, 6, 7, 9]
    with pytest.raises(ValueError, match=r"invalid SMILES 'CC O' at position 1 \(whitespace"):
        inchikeys_from_smiles(["CCO", "CC O"])
    index = pd.read_csv(npz_layout["index"])
    index.loc[2, "SMILES"] = "CC\u039f"
    index.loc[2, "INCHIKEY"] = ""
    index.to_csv(tmp_path / "index.csv", index=False, encoding="utf-8")
    with pytest.raises(ValueError, match=r"row 2 .*invalid SMILES 'CCΟ'"):
        open_source("bray_npz", index=tmp_path / "index.csv", root=npz_layout["root"])
    source = open_source("bray_npz", index=tmp_path / "index.csv", root=npz_layout["root"], errors="skip")
    assert [(s.row, s.reason) for s in source.skipped] == [(2, "invalid SMILES 'CCΟ'")]


# ---------------------------------------------------------------------------------------------- image processor
BAD_SETTINGS = [
    ({"image_std": [1.0, 0.0, 1.0, 1.0, 1.0]}, "image_std must be positive"),
    ({"image_std": -2.0}, "image_std must be positive"),
    ({"image_std": [1.0, math.nan, 1.0, 1.0, 1.0]}, "image_std must be finite"),
    ({"image_std": [1.0, 1.0]}, "image_std has 2 entries but channel_order has 5 channels"),
    ({"image_mean": [0.0] * 6}, "image_mean has 6 entries but channel_order has 5 channels"),
    ({"image_mean": [math.inf, 0, 0, 0, 0]}, "image_mean must be finite"),
    ({"intensity_scale": 0}, "intensity_scale must be a positive finite number"),
    ({"intensity_scale": -256.0}, "intensity_scale must be a positive finite number"),
    ({"intensity_scale": math.nan}, "intensity_scale must be a positive finite number"),
    ({"intensity_scale": math.inf}, "intensity_scale must be a positive finite number"),
    ({"crop_size": {"height": 0, "width": 64}}, "crop_size sides must be positive integers"),
    ({"crop_size": {"height": -8, "width": 64}}, "crop_size sides must be positive integers"),
    ({"crop_size": {"height": 32.5, "width": 64}}, "crop_size sides must be positive integers"),
    ({"crop_size": {"height": "32", "width": 64}}, "must be a real number"),
]


@pytest.mark.parametrize("setting, message", BAD_SETTINGS, ids=[m for _, m in BAD_SETTINGS])
def test_the_image_processor_refuses_bad_settings_at_construction_and_on_load(tmp_path, setting, message):
    from cloome_hf.image_processing_cloome import CloomeImageProcessor
    from cloome_hf.processing_cloome import CloomeProcessor

    with pytest.raises(ValueError, match=re.escape(message)):
        CloomeImageProcessor(**setting)
    CloomeProcessor().save_pretrained(tmp_path)  # a good processor, then its file edited by hand
    path = tmp_path / "processor_config.json"
    saved = json.loads(path.read_text())
    saved["image_processor"].update(setting)
    path.write_text(json.dumps(saved))  # (json writes NaN / Infinity, which json reads back)
    with pytest.raises(ValueError, match=re.escape(message)):
        CloomeProcessor.from_pretrained(tmp_path)

