"""``cloome prepare --layout tiff --root DIR --wells TABLE`` without an index infers one from the file names,
writes it for the user to check, and refuses names it cannot read, showing what it found."""


import numpy as np
import pandas as pd
import pytest

from conftest import run_cloome



def _cloome(args, cwd):
    return run_cloome(args, cwd)


def _well_table(path, rows):
    path.write_text("plate,well,smiles\n" + "".join(f"{p},{w},{s}\n" for p, w, s in rows))


def test_index_inferred_from_plate_well_site_channel_names(tmp_path, write_tiff_plates):
    from cloome_hf.data import decode_row, load_cell_painting
    from cloome_hf.image_processing_cloome import CloomeImageProcessor

    rows = write_tiff_plates(tmp_path / "tiffs", plates=("P1", "P2"), wells=("A01", "B02"), sites=1, size=24)
    _well_table(tmp_path / "wells.csv", rows[:3])  # P2/B02 is not in the table: no molecule, left out
    proc = _cloome(["prepare", "--layout", "tiff", "--root", "tiffs", "--wells", "wells.csv", "--output_dir",
                    "sites", "--max_skipped_fraction", "0.3"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "inferred an index of 4 sites (2 plates, 4 wells)" in proc.stderr
    assert "wrote it to sites/inferred_index.csv" in proc.stderr
    index = pd.read_csv(tmp_path / "sites" / "inferred_index.csv", keep_default_na=False)
    assert list(index.SAMPLE_KEY) == ["P1-A01-1", "P1-B02-1", "P2-A01-1", "P2-B02-1"]
    assert list(index.SMILES) == [rows[0][2], rows[1][2], rows[2][2], ""]
    assert index.IMG_Hoechst[1] == "P1/B02_s1_DNA.tif" and index.IMG_Ph_golgi[1] == "P1/B02_s1_AGP.tif"
    ds = load_cell_painting(str(tmp_path / "sites"), split="train", cache_dir=str(tmp_path / "cache"))
    assert sorted(ds["sample_key"]) == ["P1-A01-1", "P1-B02-1", "P2-A01-1"]
    row = ds[ds["sample_key"].index("P1-B02-1")]
    files = {c: str(tmp_path / "tiffs" / "P1" / f"B02_s1_{c}.tif") for c in ("DNA", "ER", "RNA", "AGP", "Mito")}
    np.testing.assert_array_equal(decode_row(row), CloomeImageProcessor().load_uint8_site(files))


def test_phenix_names_with_a_channel_map(tmp_path):
    import tifffile

    from cloome_hf.data.infer_index import infer_tiff_index

    for ch in range(1, 6):
        tifffile.imwrite(tmp_path / f"r02c03f04p01-ch{ch}sk1fk1fl1.tiff", np.full((8, 8), ch, np.uint16))
        tifffile.imwrite(tmp_path / f"r02c03f04p02-ch{ch}sk1fk1fl1.tiff", np.full((8, 8), ch, np.uint16))
    wells = pd.DataFrame({"Metadata_Plate": [tmp_path.name], "Metadata_Well": ["B3"], "SMILES": ["CCO"]})
    index = infer_tiff_index(tmp_path, wells, {"1": "DNA", "2": "ER", "3": "RNA", "4": "AGP", "5": "Mito"})
    assert index.to_dict("records") == [{
        "SAMPLE_KEY": f"{tmp_path.name}-B03-4", "PLATE_ID": tmp_path.name, "WELL_POSITION": "B03", "SITE": "4",
        "SMILES": "CCO", "IMG_Mito": "r02c03f04p01-ch5sk1fk1fl1.tiff", "IMG_ERSyto": "r02c03f04p01-ch2sk1fk1fl1.tiff",
        "IMG_ERSytoBleed": "r02c03f04p01-ch3sk1fk1fl1.tiff", "IMG_Ph_golgi": "r02c03f04p01-ch4sk1fk1fl1.tiff",
        "IMG_Hoechst": "r02c03f04p01-ch1sk1fk1fl1.tiff"}]  # the second focal plane is not a site
    with pytest.raises(ValueError, match=r"channel token\(s\) \['1', '2', '3', '4', '5'\].*--channels"):
        infer_tiff_index(tmp_path, wells)


def test_unreadable_file_names_are_refused_with_an_example(tmp_path, write_tiff_plates):
    _well_table(tmp_path / "wells.csv", write_tiff_plates(tmp_path / "tiffs", wells=("A01",), sites=1, size=8))
    (tmp_path / "tiffs" / "P1" / "overview_plate1.tif").write_bytes(b"")
    proc = _cloome(["prepare", "--layout", "tiff", "--root", "tiffs", "--wells", "wells.csv", "--output_dir",
                    "sites"], tmp_path)
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert lines[-2].startswith("cloome prepare: error: cannot infer an index from the file names under tiffs: 1 "
                                "of 6 files follow no known scheme (e.g. 'P1/overview_plate1.tif'")
    assert "PLATE/A01_s1_Hoechst.tif" in lines[-2] and "--index" in lines[-2]
    assert not (tmp_path / "sites" / "inferred_index.csv").exists()


def test_prepare_help_is_cloome_prepare_and_gives_each_layouts_schema(tmp_path):
    proc = _cloome(["prepare", "--help"], tmp_path)
    assert proc.returncode == 0
    assert proc.stdout.startswith("usage: cloome prepare ") and "python -m cloome_hf.data" not in proc.stdout
    for layout, header in [("tiff", "SAMPLE_KEY,PLATE_ID,WELL_POSITION,SITE,SMILES,IMG_Mito,IMG_ERSyto,"
                                    "IMG_ERSytoBleed,IMG_Ph_golgi,IMG_Hoechst"),
                           ("bray_npz", "SAMPLE_KEY,PLATE_ID,WELL_POSITION,SITE,SMILES,INCHIKEY"),
                           ("jump", "Metadata_Plate,Metadata_Well,Metadata_Site,Metadata_SMILES,FileName_OrigDNA")]:
        section = proc.stdout.split(f"\n  {layout} ", 1)[1]
        assert header in section
        example = [line.strip() for line in section.splitlines() if line.strip().startswith(header)]
        assert example, layout
