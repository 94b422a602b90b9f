"""JUMP cpg0016 / CellProfiler LoadData tables read from a local mirror in the exact Cell Painting Gallery layout:
both column forms, CSV / CSV.gz / Parquet, illumination correction, brightfield, perturbation types, any image
size, the training-site selection, and every refused input. Stored images are compared with an independent
computation (raw / illum in float64, then the 8-bit rule written out in tests/cpg0016_layout.py)."""

import os
import shutil

import numpy as np
import pandas as pd
import pytest
from cpg0016_layout import (
    ALOXISTATIN,
    COMPOUND,
    DMSO,
    PLATES,
    REAGENT,
    WELLS,
    expected_site,
    illum_key,
    image_key,
    write_cpg0016,
)

from cloome_hf.data import (
    channels_of,
    contrastive_training_sites,
    decode_row,
    load_cell_painting,
    open_source,
    perturbation_types,
)

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures")
TYPE_OF = {COMPOUND: "trt", DMSO: "negcon", ALOXISTATIN: "poscon", REAGENT: "unknown"}
PLATE1, PLATE2 = list(PLATES)


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    """The plates under a local mirror of the bucket, plus the tables as files next to it."""
    root = tmp_path_factory.mktemp("cpg0016")
    layout = write_cpg0016(root / "mirror")
    tables = root / "tables"
    os.makedirs(tables)
    layout["file_table"].to_csv(tables / "load_data_with_illum.csv.gz", index=False)
    layout["wells"].to_csv(tables / "well.csv.gz", index=False)
    layout["plates"].to_csv(tables / "plate.csv.gz", index=False)
    layout["compounds"].to_csv(tables / "compound.csv.gz", index=False)
    return dict(layout, root=root / "mirror", tables=tables)


def _jump(mirror, load_data=None, **kwargs):
    t = mirror["tables"]
    kwargs.setdefault("compounds", t / "compound.csv.gz")
    kwargs.setdefault("wells", t / "well.csv.gz")
    return open_source("jump", load_data=t / "load_data_with_illum.csv.gz" if load_data is None else load_data,
                       root=kwargs.pop("root", mirror["root"]), **kwargs)


def _by_site(rows):
    return {(r["plate"], r["well"], r["site"]): r for r in rows}


def test_filename_pathname_form_through_a_local_mirror(mirror, tmp_path):
    t = mirror["tables"]
    ds = load_cell_painting(t / "load_data_with_illum.csv.gz", compounds=t / "compound.csv.gz",
                            wells=t / "well.csv.gz", root=mirror["root"], split="train", cache_dir=str(tmp_path),
                            source_options={"plates": t / "plate.csv.gz", "read_threads": 4})
    assert len(ds) == len(mirror["file_table"]) == 16
    assert channels_of(ds) == ("Mito", "ERSyto", "ERSytoBleed", "Ph_golgi", "Hoechst")
    smiles_of = dict(zip(mirror["compounds"].Metadata_JCP2022, mirror["compounds"].Metadata_SMILES))
    for (plate, well, site), row in _by_site(ds).items():
        np.testing.assert_array_equal(decode_row(row), expected_site(mirror, plate, well, site))
        assert row["perturbation_type"] == TYPE_OF[WELLS[well]]
        assert row["smiles"] == smiles_of.get(WELLS[well], "")  # the reagent has no structure: kept, empty
        assert (row["inchikey"] == "") == (WELLS[well] == REAGENT)
        assert row["Metadata_PlateType"] == "COMPOUND" and row["Metadata_JCP2022"] == WELLS[well]
        assert row["sample_key"] == f"source_4-{plate}-{well}-{site}"
    assert not any(c.startswith(("FileName_", "PathName_", "URL_")) for c in ds.column_names)


def test_table_formats_and_column_forms_give_the_same_sites(mirror, tmp_path):
    file_table, url_table = mirror["file_table"], mirror["url_table"]
    file_table.to_csv(tmp_path / "load_data.csv", index=False)
    file_table.to_parquet(tmp_path / "load_data.parquet", index=False)
    url_table.to_parquet(tmp_path / "load_data_url.parquet", index=False)
    sources = [_jump(mirror)] + [_jump(mirror, tmp_path / name) for name in
                                 ("load_data.csv", "load_data.parquet", "load_data_url.parquet")]
    reference = sources[0]
    for source in sources[1:]:
        pd.testing.assert_frame_equal(source.records, reference.records)
        assert [source.describe_files(i) for i in range(len(source))] == \
            [reference.describe_files(i) for i in range(len(reference))]
    # root maps the bucket to the mirror: s3://cellpainting-gallery/KEY -> root/KEY
    assert reference.describe_files(0).split(", ")[0] == os.path.join(mirror["root"],
                                                                      image_key(PLATE1, "A01", 1, "DNA"))
    serial = list(_jump(mirror, read_threads=1).iter_rows())
    assert serial == list(reference.iter_rows())  # parallel reads keep order and content


def test_illumination_modes(mirror, tmp_path):
    site = (PLATE2, "B01", 2)
    row = _by_site(_jump(mirror, illumination=False).iter_rows())[site]
    uncorrected = expected_site(mirror, *site, illumination=False)
    np.testing.assert_array_equal(decode_row(row), uncorrected)
    assert (uncorrected != expected_site(mirror, *site)).any()  # the correction matters on this plate
    no_illum = mirror["file_table"].drop(columns=[c for c in mirror["file_table"] if "Illum" in c])
    no_illum.to_csv(tmp_path / "load_data.csv", index=False)
    row = _by_site(_jump(mirror, tmp_path / "load_data.csv").iter_rows())[site]  # auto: nothing to divide by
    np.testing.assert_array_equal(decode_row(row), uncorrected)
    with pytest.raises(ValueError, match=r"load_data.csv has no illumination column\(s\) for channel\(s\) "
                                         r"\['DNA', 'ER', 'RNA', 'AGP', 'Mito'\].*plate BR00117035, well A01, site 1"):
        _jump(mirror, tmp_path / "load_data.csv", illumination=True)
    mirror["file_table"].drop(columns=["FileName_IllumRNA", "PathName_IllumRNA"]).to_csv(tmp_path / "part.csv",
                                                                                         index=False)
    with pytest.raises(ValueError, match=r"no illumination column\(s\) for channel\(s\) \['RNA'\].*but has them"):
        _jump(mirror, tmp_path / "part.csv")
    with pytest.raises(ValueError, match="illumination must be True, False or 'auto'"):
        _jump(mirror, illumination="yes")


def test_brightfield_only_when_asked(mirror, tmp_path):
    t = mirror["tables"]
    default = _jump(mirror)
    assert default.channels == ("Mito", "ERSyto", "ERSytoBleed", "Ph_golgi", "Hoechst")
    ds = load_cell_painting(t / "load_data_with_illum.csv.gz", compounds=t / "compound.csv.gz",
                            wells=t / "well.csv.gz", root=mirror["root"], split="train", cache_dir=str(tmp_path),
                            source_options={"extra_channels": ["Brightfield"]})
    assert channels_of(ds)[-1] == "Brightfield" and ds[0]["image_shape"][0] == 6
    for (plate, well, site), row in _by_site(ds).items():
        np.testing.assert_array_equal(decode_row(row), expected_site(mirror, plate, well, site,
                                                                     extra=("Brightfield",)))


def test_1080_by_1080_sites_are_stored_whole(tmp_path):
    layout = write_cpg0016(tmp_path / "mirror", shape=(1080, 1080), sites=1, plates=(PLATE1,),
                           wells={"A02": DMSO})
    layout["file_table"].to_parquet(tmp_path / "load_data.parquet", index=False)
    # a LoadData table alone (no compound table) is recognised by its columns, as embedding a new plate needs
    rows = list(load_cell_painting(tmp_path / "load_data.parquet", root=tmp_path / "mirror", split="train",
                                   streaming=True))
    assert len(rows) == 1 and rows[0]["image_shape"] == [5, 1080, 1080]
    np.testing.assert_array_equal(decode_row(rows[0]), expected_site(layout, PLATE1, "A02", 1))
    assert rows[0]["perturbation_type"] == "unknown"  # no compound table: no structure, so not even DMSO is known


def test_perturbation_types_from_annotation_columns(mirror, tmp_path):
    # JUMP-Target-1 metadata (real): pert_type trt / control, control_type negcon / poscon_* / "NA"
    meta = pd.read_csv(os.path.join(DATA, "jump_target1_compound_metadata.tsv"), sep="\t", dtype=str,
                       keep_default_na=False)
    got = perturbation_types(meta, (meta.smiles != "").to_numpy(), "JUMP-Target")
    expected = ["negcon" if c.startswith("negcon") else "poscon" if c.startswith("poscon") else "trt"
                for c in meta.control_type]
    assert got.tolist() == expected and got.tolist().count("poscon") == 46
    # real LINCS profiles: pert_type "control" without a kind, the vehicle named DMSO
    lincs = pd.read_csv(os.path.join(DATA, "cellprofiler_profiles_SQ00015054_subset.csv.gz"), dtype=str,
                        keep_default_na=False)
    got = perturbation_types(lincs, np.ones(len(lincs), bool), "LINCS")
    assert got.tolist() == ["negcon" if b == "DMSO" else "trt" for b in lincs.Metadata_broad_sample]
    # annotation columns of the load_data table override the compound's identity
    table = mirror["file_table"].copy()
    table["Metadata_control_type"] = np.where(table.Metadata_Well == "A01", "poscon_cp", "")
    table.to_csv(tmp_path / "annotated.csv", index=False)
    records = _jump(mirror, tmp_path / "annotated.csv").records
    assert records.perturbation_type.tolist() == [
        "poscon" if w == "A01" else TYPE_OF[WELLS[w]] for w in records.well]
    table["Metadata_control_type"] = "weird"
    table.to_csv(tmp_path / "weird.csv", index=False)
    with pytest.raises(ValueError, match="unrecognised Metadata_control_type value 'weird'"):
        _jump(mirror, tmp_path / "weird.csv")


def test_negative_controls_left_out_of_training_but_embedded(mirror, tmp_path):
    from cloome_hf.data import build_dataloader
    from cloome_hf.featurization_cloome import MoleculeFeaturizer

    t = mirror["tables"]
    ds = load_cell_painting(t / "load_data_with_illum.csv.gz", compounds=t / "compound.csv.gz",
                            wells=t / "well.csv.gz", root=mirror["root"], split="train", cache_dir=str(tmp_path))
    assert ds["perturbation_type"][:].count("negcon") == 4  # what an embedding of the plate sees
    selected = contrastive_training_sites(ds.shuffle(seed=1))
    wells = [WELLS[w] for w in selected.dataset["well"][:]]
    assert sorted(set(wells)) == sorted([COMPOUND, ALOXISTATIN]) and selected.num_sites == 8
    assert selected.report() == {"num_sites": 8, "num_negative_controls_left_out": 4,
                                 "num_without_structure_left_out": 4}
    loader = build_dataloader(selected.dataset, MoleculeFeaturizer(fingerprint_size=64), batch_size=2, train=False)
    seen = [k for batch in loader for k in batch["inchikey"]]
    assert len(seen) == 8 and "IAZDPXIOMUYVGZ-UHFFFAOYSA-N" not in seen
    streamed = contrastive_training_sites(load_cell_painting(
        t / "load_data_with_illum.csv.gz", compounds=t / "compound.csv.gz", wells=t / "well.csv.gz",
        root=mirror["root"], split="train", streaming=True))
    assert sorted(r["sample_key"] for r in streamed.dataset) == sorted(selected.dataset["sample_key"][:])
    kept = contrastive_training_sites(ds, include_controls=True)
    assert kept.num_sites == 12 and kept.num_negative_controls_left_out == 0
    assert sorted(set(kept.dataset["perturbation_type"][:])) == ["negcon", "poscon", "trt"]


# ---------------------------------------------------------------- refused input
SITE1 = r"plate BR00117035, well A01, site 1"


def _damaged_mirror(mirror, tmp_path):
    root = tmp_path / "mirror"
    shutil.copytree(mirror["root"], root)
    return root


def test_missing_channel_column(mirror, tmp_path):
    mirror["file_table"].drop(columns=["FileName_OrigER"]).to_csv(tmp_path / "load_data.csv", index=False)
    with pytest.raises(ValueError, match=rf"load_data.csv lacks the image column\(s\) of channel\(s\) \['ER'\].*"
                                         rf"URL_Orig.*{SITE1}"):
        _jump(mirror, tmp_path / "load_data.csv")
    table = mirror["file_table"].copy()
    table.loc[3, "FileName_OrigAGP"] = ""
    table.to_csv(tmp_path / "empty.csv", index=False)
    with pytest.raises(ValueError, match=r"row 3 .*plate BR00117035, well A02, site 2.*no file for channel AGP"):
        list(_jump(mirror, tmp_path / "empty.csv").iter_rows())


def test_plate_without_its_illumination_file(mirror, tmp_path):
    root = _damaged_mirror(mirror, tmp_path)
    missing = root / illum_key(PLATE2, "ER")
    os.remove(missing)
    source = _jump(mirror, root=root, errors="skip")
    rows = list(source.iter_rows())
    assert {r["plate"] for r in rows} == {PLATE1} and len(source.skipped) == 8
    with pytest.raises(ValueError, match=rf"row 8 .*plate {PLATE2}, well A01, site 1.*illumination function of "
                                         rf"plate {PLATE2}, channel ER.*{missing}"):
        list(_jump(mirror, root=root).iter_rows([8]))
    table = mirror["file_table"].copy()
    table.loc[table.Metadata_Plate == PLATE2, "FileName_IllumDNA"] = ""
    table.to_csv(tmp_path / "load_data.csv", index=False)
    with pytest.raises(ValueError, match=rf"plate {PLATE2}, well A01, site 1.*plate {PLATE2} has no illumination "
                                         "file for channel DNA"):
        list(_jump(mirror, tmp_path / "load_data.csv").iter_rows([8]))


@pytest.mark.parametrize("damage", ["shape", "zero", "negative", "pickle"])
def test_bad_illumination_function(mirror, tmp_path, damage):
    root = _damaged_mirror(mirror, tmp_path)
    path = root / illum_key(PLATE1, "Mito")
    function = np.load(path)
    if damage == "shape":
        np.save(path, function[:10, :12])
        message = r"is 10x12 but the Mito image is 24x32"
    elif damage == "pickle":
        np.save(path, np.array([{"not": "an image"}], dtype=object), allow_pickle=True)
        message = r"not a plain .npy array"
    else:
        function[5, 7] = 0.0 if damage == "zero" else -1.0
        np.save(path, function)
        message = r"1 non-positive or non-finite values \(first at row 5, column 7"
    with pytest.raises(ValueError, match=rf"{SITE1}.*channel Mito: illumination file {path}.*{message}"):
        list(_jump(mirror, root=root).iter_rows([0]))


def test_unreadable_image_file(mirror, tmp_path):
    root = _damaged_mirror(mirror, tmp_path)
    gone = root / image_key(PLATE1, "B02", 2, "RNA")
    os.remove(gone)
    with pytest.raises(ValueError, match=rf"row 7 .*plate {PLATE1}, well B02, site 2.*not found: {gone}"):
        list(_jump(mirror, root=root).iter_rows())
    truncated = root / image_key(PLATE1, "A01", 1, "DNA")
    truncated.write_bytes(truncated.read_bytes()[:100])
    with pytest.raises(ValueError, match=rf"{SITE1}.*{truncated}"):
        list(_jump(mirror, root=root).iter_rows([0]))


def test_compound_and_well_joins_that_match_nothing(mirror, tmp_path):
    comp = mirror["compounds"].assign(Metadata_JCP2022=lambda d: d.Metadata_JCP2022.str.replace("JCP2022", "JCP"))
    comp.to_csv(tmp_path / "compound.csv", index=False)
    with pytest.raises(ValueError, match=rf"compound join of .*load_data_with_illum.csv.gz with .*compound.csv on "
                                         rf"Metadata_JCP2022 matches nothing: {SITE1} has 'JCP2022_000123'"):
        _jump(mirror, compounds=tmp_path / "compound.csv")
    wells = mirror["wells"].assign(Metadata_Plate="BR99999999")
    wells.to_csv(tmp_path / "well.csv", index=False)
    with pytest.raises(ValueError, match=rf"well.csv matches no site of .* on \['Metadata_Source', 'Metadata_Plate', "
                                         rf"'Metadata_Well'\]: the first site is {SITE1}"):
        _jump(mirror, wells=tmp_path / "well.csv")
    with pytest.raises(ValueError, match="cannot join"):  # no compound id at all without the well table
        _jump(mirror, wells=None)

