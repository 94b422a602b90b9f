"""``cloome prepare`` and ``cloome embed`` fail loudly (exit 2, naming the report and the commonest reason with
its count) when they write nothing, or when prepare skips more than ``--max_skipped_fraction`` of the sites."""

import re

from conftest import run_cloome as _cloome


def _error_lines(proc, command):
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert lines[-2].startswith(f"cloome {command}: error: ") and lines[-1].startswith(f"cloome {command}: hint: ")
    return lines[-2], lines[-1]


def _well_table(path, rows):
    path.write_text("plate,well,smiles\n" + "".join(f"{p},{w},{s}\n" for p, w, s in rows))


def test_prepare_that_writes_no_site_fails_naming_report_and_reason(tmp_path, write_tiff_plates):
    _well_table(tmp_path / "wells.csv", write_tiff_plates(tmp_path / "tiffs", wells=("A01", "A02"), sites=2,
                                                          size=16))
    for f in (tmp_path / "tiffs" / "P1").glob("*_Mito.tif"):
        f.unlink()
    proc = _cloome(["prepare", "--kind", "tiff", "--root", "tiffs", "--wells", "wells.csv", "--output_dir",
                    "sites"], tmp_path)
    error, _ = _error_lines(proc, "prepare")
    assert re.search(r"wrote 0 of 4 sites, skipped 4 \(100%\); most often \(4x\): channel Mito file not found", error)
    assert "sites/prepare_report.json" in error


def test_prepare_skipping_more_than_the_threshold_fails_unless_allowed(tmp_path, write_tiff_plates):
    _well_table(tmp_path / "wells.csv", write_tiff_plates(tmp_path / "tiffs", wells=("A01", "A02"), sites=2,
                                                          size=16))
    (tmp_path / "tiffs" / "P1" / "A02_s2_ER.tif").write_bytes(b"not a tiff")  # 1 of 4 sites: 25 % > 10 %
    args = ["prepare", "--kind", "tiff", "--root", "tiffs", "--wells", "wells.csv", "--output_dir", "sites"]
    error, hint = _error_lines(_cloome(args, tmp_path), "prepare")
    assert re.search(r"wrote 3 of 4 sites, skipped 1 \(25%, more than the allowed 10%\); most often \(1x\): ", error)
    assert "--max_skipped_fraction" in hint
    accepted = _cloome(args + ["--max_skipped_fraction", "0.3"], tmp_path)
    assert accepted.returncode == 0, accepted.stderr
    assert "wrote 3 sites" in accepted.stderr


def test_embed_that_writes_no_row_fails(tmp_path, tiny_config):
    from cloome_hf import CloomeModel
    from cloome_hf.featurization_cloome import MoleculeFeaturizer
    from cloome_hf.processing_cloome import CloomeProcessor

    CloomeModel(tiny_config).save_pretrained(tmp_path / "model")
    CloomeProcessor(featurizer=MoleculeFeaturizer(fingerprint_size=64)).save_pretrained(tmp_path / "model")
    (tmp_path / "library.csv").write_text("smiles\n")
    proc = _cloome(["embed", "--model", "model", "--molecules", "library.csv", "--output_dir", "emb"], tmp_path)
    error, _ = _error_lines(proc, "embed")
    assert re.search(r"wrote 0 molecules rows: 'library.csv' holds no rows", error)
