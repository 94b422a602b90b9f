"""The one output-folder contract (cloome_hf.output_folder): the same refusal, naming the changed field, for
train, embed and prepare; shard records verified on resume (cut off, wrong row count, another run's shard, a
record without its file), the bad shards named and recomputed."""

import logging
import os
import shutil

import pandas as pd
import pyarrow.parquet as pq
import pytest

from cloome_hf.data import open_source, prepare_dataset, write_synthetic_layout
from cloome_hf.output_folder import dataset_digest, file_sha256, shard_record_path
from cloome_hf.safe_io import atomic_write_json, read_json

from conftest import TINY_TRAIN_ARGS

CONTRACT = r"holds .* made with different settings \({field}\), so this run would not continue it: {field}: "


# ------------------------------------------------------------------------------------ one refusal, 3 commands
def test_train_refuses_a_changed_field_through_the_contract(finished_tiny_run, tmp_path, one_thread):
    from cloome_hf.train import main

    run = tmp_path / "run"
    shutil.copytree(finished_tiny_run, run)
    with pytest.raises(ValueError, match=CONTRACT.format(field="learning_rate") + r"0\.002 -> 0\.01"):
        main(["--output_dir", str(run), *TINY_TRAIN_ARGS, "--resume_from_checkpoint", "latest",
              "--learning_rate", "0.01"])


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    import torch

    from cloome_hf import CloomeConfig, CloomeModel, CloomeProcessor, MoleculeFeaturizer
    from cloome_hf.image_processing_cloome import CloomeImageProcessor

    from conftest import TINY_MOLECULE, TINY_VISION

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_model")
    CloomeModel(CloomeConfig(vision_config=dict(TINY_VISION), molecule_config=dict(TINY_MOLECULE),
                             projection_dim=16)).save_pretrained(folder)
    CloomeProcessor(CloomeImageProcessor(crop_size={"height": 64, "width": 64}),
                    MoleculeFeaturizer(fingerprint_size=64)).save_pretrained(folder)
    return folder


LIBRARY = ["CCO", "CCN", "c1ccccc1", "CC(=O)O", "CCCC", "CCOC", "C1CCCCC1"]


def _embed(model, library, out, *extra):
    from cloome_hf.cli import embed

    return embed.main(["--model", str(model), "--molecules", str(library), "--output_dir", str(out),
                       "--shard_size", "2", *extra])


def test_embed_refuses_a_changed_field_through_the_contract(tiny_model, tmp_path):
    pd.DataFrame({"smiles": LIBRARY}).to_csv(tmp_path / "lib.csv", index=False)
    _embed(tiny_model, tmp_path / "lib.csv", tmp_path / "out")
    with pytest.raises(ValueError, match=CONTRACT.format(field="shard_size") + "2 -> 3"):
        _embed(tiny_model, tmp_path / "lib.csv", tmp_path / "out", "--shard_size", "3")


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    return write_synthetic_layout(tmp_path_factory.mktemp("layout"), "bray_npz", num_molecules=5,
                                  sites_per_molecule=2, num_plates=1, image_size=(24, 24), seed=0)


def _source(layout):
    return open_source("bray_npz", index=layout["index"], root=layout["root"])


def test_prepare_refuses_a_changed_field_through_the_contract(layout, tmp_path):
    prepare_dataset(_source(layout), tmp_path / "out", shard_size=4, progress=False)
    with pytest.raises(ValueError, match=r"made with different settings \(num_shards, shard_size\), so this run "
                                         r"would not continue it: num_shards: 3 -> 2; shard_size: 4 -> 5"):
        prepare_dataset(_source(layout), tmp_path / "out", shard_size=5, progress=False)


def test_one_dataset_digest_tells_a_changed_table_and_a_changed_dataset(layout):
    from cloome_hf.data import load_cell_painting

    source = _source(layout)
    ds = load_cell_painting(layout["index"], root=layout["root"], split="train")
    assert dataset_digest(source) == dataset_digest(_source(layout))
    assert dataset_digest(ds) == dataset_digest(load_cell_painting(layout["index"], root=layout["root"],
                                                                   split="train"))
    assert dataset_digest(ds) != dataset_digest(ds.select(range(len(ds) - 1)))
    changed = ds.map(lambda r, i: {"smiles": "CCO" if i == 0 else r["smiles"]}, with_indices=True)
    assert dataset_digest(changed) != dataset_digest(ds)
    records = source.records.copy()
    assert dataset_digest(records) != dataset_digest(records.iloc[::-1])


# ------------------------------------------------------------------------------------ shard records
def _cut_off(path):
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])


def _fewer_rows(path):
    """A valid Parquet file with one row fewer, its record's checksum updated: only the row count disagrees."""
    table = pq.read_table(path)
    pq.write_table(table.slice(0, table.num_rows - 1), path)
    record = read_json(shard_record_path(path), "record")
    atomic_write_json(shard_record_path(path), {**record, "sha256": file_sha256(path)})


def _record_without_file(path):
    os.remove(path)


def _emptied(path):
    open(path, "wb").close()


def _one_byte_changed(path):
    """Same length, one byte in the middle flipped: only the checksum can tell."""
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(path, "wb").write(bytes(data))


def _record_garbled(path):
    open(shard_record_path(path), "w").write('{"rows": 2, "sha2')  # the record itself cut off


def _record_removed(path):
    os.remove(shard_record_path(path))  # killed between the rename and the record


def _record_rows_as_text(path):
    record = read_json(shard_record_path(path), "record")
    atomic_write_json(shard_record_path(path), {**record, "rows": str(record["rows"])})


# #22 class 7: every way a kept shard can be half-written or not match what was recorded when it was written.
DAMAGE = {"cut off mid-file": (_cut_off, "its checksum does not match its record"),
          "wrong row count": (_fewer_rows, "holds 1 rows, its record says 2"),
          "record without its file": (_record_without_file, "its record exists but the file is missing"),
          "emptied": (_emptied, "its checksum does not match its record"),
          "one byte changed": (_one_byte_changed, "its checksum does not match its record"),
          "record garbled": (_record_garbled, "cannot read the shard record"),
          "record removed": (_record_removed, "no record (written by an older or interrupted run)"),
          "record rows as text": (_record_rows_as_text, "its record's row count '2' is not a number of rows")}


@pytest.mark.parametrize("damage", DAMAGE, ids=list(DAMAGE))
def test_embed_resume_recomputes_a_bad_shard_and_names_it(tiny_model, tmp_path, damage, caplog):
    pd.DataFrame({"smiles": LIBRARY}).to_csv(tmp_path / "lib.csv", index=False)
    out = tmp_path / "out"
    _embed(tiny_model, tmp_path / "lib.csv", out)
    shard = out / "molecules" / "shard-00001.parquet"
    good = {p.name: p.read_bytes() for p in (out / "molecules").iterdir()}
    kept = (out / "molecules" / "shard-00002.parquet").stat().st_mtime_ns
    spoil, reason = DAMAGE[damage]
    spoil(shard)
    with caplog.at_level(logging.WARNING, logger="cloome_hf.inference.store"):
        _embed(tiny_model, tmp_path / "lib.csv", out)
    assert f"shard-00001.parquet: {reason}" in caplog.text
    assert {p.name: p.read_bytes() for p in (out / "molecules").iterdir()} == good  # recomputed, identical
    assert (out / "molecules" / "shard-00002.parquet").stat().st_mtime_ns == kept  # good shards are kept


def test_embed_resume_recomputes_a_shard_of_another_run(tiny_model, tmp_path, caplog):
    pd.DataFrame({"smiles": LIBRARY}).to_csv(tmp_path / "lib.csv", index=False)
    pd.DataFrame({"smiles": LIBRARY[::-1]}).to_csv(tmp_path / "other.csv", index=False)
    _embed(tiny_model, tmp_path / "lib.csv", tmp_path / "out")
    _embed(tiny_model, tmp_path / "other.csv", tmp_path / "other")
    good = (tmp_path / "out" / "molecules" / "shard-00000.parquet").read_bytes()
    for made in ("molecules/shard-00000.parquet", ".records/molecules/shard-00000.parquet.json"):
        shutil.copy(tmp_path / "other" / made, tmp_path / "out" / made)  # the file and its record
    with caplog.at_level(logging.WARNING, logger="cloome_hf.inference.store"):
        _embed(tiny_model, tmp_path / "lib.csv", tmp_path / "out")
    assert "shard-00000.parquet: written by another run" in caplog.text
    assert (tmp_path / "out" / "molecules" / "shard-00000.parquet").read_bytes() == good


def _prepared(folder):
    return {p.name: pq.read_table(p).to_pandas() for p in sorted((folder / "data").iterdir())}


@pytest.mark.parametrize("damage", DAMAGE, ids=list(DAMAGE))
def test_prepare_resume_recomputes_a_bad_shard_and_names_it(layout, tmp_path, damage, caplog):
    out = tmp_path / "out"
    prepare_dataset(_source(layout), out, shard_size=4, progress=False)
    good = _prepared(out)
    shard = out / "data" / "train-00001-of-00003.parquet"
    spoil, reason = DAMAGE[damage]
    if damage == "wrong row count":
        reason = "holds 3 rows, its record says 4"
    elif damage == "record rows as text":
        reason = "its record's row count '4' is not a number of rows"
    spoil(shard)
    with caplog.at_level(logging.WARNING, logger="cloome_hf.data.prepare"):
        report = prepare_dataset(_source(layout), out, shard_size=4, progress=False)
    assert f"train-00001-of-00003.parquet: {reason}" in caplog.text
    assert report["shards_reused"] == 2 and report["complete"]
    after = _prepared(out)
    assert list(after) == list(good)
    for name in good:
        pd.testing.assert_frame_equal(after[name], good[name])


def test_prepare_resume_recomputes_a_shard_of_another_run(layout, tmp_path, caplog):
    other = write_synthetic_layout(tmp_path / "other_layout", "bray_npz", num_molecules=5, sites_per_molecule=2,
                                   num_plates=1, image_size=(24, 24), seed=1)
    prepare_dataset(_source(layout), tmp_path / "out", shard_size=4, progress=False)
    good = _prepared(tmp_path / "out")
    prepare_dataset(_source(other), tmp_path / "other", shard_size=4, progress=False)
    for made in ("data/train-00000-of-00003.parquet", ".records/data/train-00000-of-00003.parquet.json"):
        shutil.copy(tmp_path / "other" / made, tmp_path / "out" / made)
    with caplog.at_level(logging.WARNING, logger="cloome_hf.data.prepare"):
        prepare_dataset(_source(layout), tmp_path / "out", shard_size=4, progress=False)
    assert "train-00000-of-00003.parquet: written by another run" in caplog.text
    pd.testing.assert_frame_equal(_prepared(tmp_path / "out")["train-00000-of-00003.parquet"],
                                  good["train-00000-of-00003.parquet"])
