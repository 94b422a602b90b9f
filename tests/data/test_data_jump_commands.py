"""JUMP plates through the commands: `cloome prepare` -> `cloome train` leaves the negative controls (and the sites
without a structure) out of the training batches unless --include_controls, and `cloome embed` reads a load_data
table directly (local FileName_ form, and s3:// URLs from a local moto server) into a store that keeps every
site with its perturbation_type, resumably. Any image size: 1080 x 1080 sites through the training loader's
random crop and through the processor. Expectations are computed independently: stored sites with
tests/cpg0016_layout.py (raw / illum, then the 8-bit rule written out), embeddings with the model called
directly, crops from pixel coordinates encoded in the site itself."""

import json
import os
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch
from cpg0016_layout import (
    ALOXISTATIN,
    BUCKET,
    COMPOUND,
    COMPOUNDS,
    DMSO,
    PLATES,
    REAGENT,
    SOURCE,
    expected_site,
    load_data_key,
    write_cpg0016,
)
from uint8_rule import reference_uint8

from cloome_hf import cli
from cloome_hf.inference.encode import SITE_METADATA
from cloome_hf.channels import CHANNELS, CLOOME_CHANNEL_MEAN
from cloome_hf.inference import store

PLATE1, PLATE2 = list(PLATES)
EXTRA = ["CCO", "CCCCO", "c1ccccc1O", "CC(=O)Nc1ccc(O)cc1", "CCN(CC)CC", "ClCCl", "OC(=O)CCC(=O)O"]
EXTRA_IDS = [f"JCP2022_91{i:04d}" for i in range(len(EXTRA))]
# one site per well: four wells of tests/cpg0016_layout.py's kinds plus seven more compounds, on both plates
WELLS = {"A01": COMPOUND, "A02": DMSO, "A03": ALOXISTATIN, "A04": REAGENT,
         **{f"B{i + 1:02d}": j for i, j in enumerate(EXTRA_IDS)}}
TYPE_OF = {COMPOUND: "trt", DMSO: "negcon", ALOXISTATIN: "poscon", REAGENT: "unknown",
           **dict.fromkeys(EXTRA_IDS, "trt")}
TINY_TRAIN = ["--image_size", "32", "--vision_layers", "1", "1", "1", "1", "--base_width", "8",
              "--head_pool_size", "1", "--molecule_hidden_size", "32", "--projection_dim", "16",
              "--fingerprint_size", "128", "--per_device_eval_batch_size", "16", "--audit_log"]


def key(plate, well):
    return f"{SOURCE}-{plate}-{well}-1"


def keys_of(plate, kinds):
    return {key(plate, w) for w, j in WELLS.items() if TYPE_OF[j] in kinds}


@pytest.fixture(scope="module")
def plates(tmp_path_factory):
    """Two plates in the cpg0016 layout under a local mirror; the load_data tables (FileName_ form) per plate
    and for both, and cpg0016's compound / well / plate tables."""
    root = tmp_path_factory.mktemp("jump")
    layout = write_cpg0016(root / "mirror", shape=(40, 40), sites=1, wells=WELLS)
    tables = root / "tables"
    os.makedirs(tables)
    table = layout["file_table"]
    for plate in PLATES:
        table[table.Metadata_Plate == plate].to_csv(tables / f"{plate}.csv", index=False)
    table.to_csv(tables / "load_data_with_illum.csv.gz", index=False)
    compounds = pd.concat([COMPOUNDS, pd.DataFrame({"Metadata_JCP2022": EXTRA_IDS, "Metadata_InChIKey": "",
                                                    "Metadata_SMILES": EXTRA})], ignore_index=True)
    layout["compounds"] = compounds
    compounds.to_csv(tables / "compound.csv.gz", index=False)
    layout["wells"].to_csv(tables / "well.csv.gz", index=False)
    layout["plates"].to_csv(tables / "plate.csv.gz", index=False)
    return dict(layout, root=root, mirror=root / "mirror", tables=tables)


def _table_args(plates):
    t = plates["tables"]
    return ["--root", str(plates["mirror"]), "--compounds", str(t / "compound.csv.gz"), "--wells",
            str(t / "well.csv.gz")]


@pytest.fixture(scope="module")
def prepared(plates):
    """`cloome prepare`: plate 1 as the train split, plate 2 as the validation split of one folder."""
    out = plates["root"] / "prepared"
    for plate, split in ((PLATE1, "train"), (PLATE2, "validation")):
        report = cli.run(["prepare", "--kind", "jump", "--load_data", str(plates["tables"] / f"{plate}.csv"),
                          *_table_args(plates), "--plates", str(plates["tables"] / "plate.csv.gz"),
                          "--output_dir", str(out), "--split", split, "--errors", "raise"])
        assert report["num_written"] == len(WELLS)
    return out


def _train(prepared, out, *extra):
    from cloome_hf.train import loop

    loop.main(["--output_dir", str(out), "--dataset", str(prepared), *TINY_TRAIN, *extra])
    with open(out / "audit" / "rank0.jsonl") as f:
        steps = [json.loads(line) for line in f if '"rows"' in line]
    with open(out / "all_results.json") as f:
        return [k for s in steps for k in s["rows"]], json.load(f)


@pytest.fixture(scope="module")
def trained(plates, prepared):
    """Six steps of 3 sites: two epochs over the 9 trainable sites of plate 1 (a tenth site would be the one
    a batch of an epoch leaves out, so two epochs would show it with 99 % probability)."""
    out = plates["root"] / "trained"
    return out, *_train(prepared, out, "--per_device_train_batch_size", "3", "--max_steps", "6")


def test_training_batches_leave_controls_and_structureless_sites_out(trained):
    _, seen, results = trained
    trainable = keys_of(PLATE1, {"trt", "poscon"})
    assert Counter(seen) == dict.fromkeys(trainable, 2)  # each trainable site once per epoch
    assert not set(seen) & keys_of(PLATE1, {"negcon", "unknown"})  # DMSO and the reagent never
    for split, plate in (("train", PLATE1), ("validation", PLATE2)):
        assert results[f"sites/{split}/num_sites"] == len(keys_of(plate, {"trt", "poscon"}))
        assert results[f"sites/{split}/num_negative_controls_left_out"] == len(keys_of(plate, {"negcon"}))
        assert results[f"sites/{split}/num_without_structure_left_out"] == len(keys_of(plate, {"unknown"}))


def test_include_controls_keeps_dmso_in_the_batches(plates, prepared):
    seen, results = _train(prepared, plates["root"] / "with_controls", "--include_controls",
                           "--per_device_train_batch_size", "5", "--max_steps", "2")
    assert sorted(seen) == sorted(keys_of(PLATE1, {"trt", "poscon", "negcon"}))  # the reagent still never
    assert results["sites/train/num_negative_controls_left_out"] == 0
    assert results["sites/validation/num_sites"] == len(keys_of(PLATE2, {"trt", "poscon", "negcon"}))


def test_a_split_of_controls_only_is_refused(prepared, tmp_path):
    import datasets

    from cloome_hf.data import load_cell_painting
    from cloome_hf.featurization_cloome import MoleculeFeaturizer
    from cloome_hf.train.data import load_training_data
    from cloome_hf.train.params import parse_args

    ds = load_cell_painting(prepared, cache_dir=str(tmp_path / "cache"))
    controls = ds["validation"].filter(lambda t: t in ("negcon", "unknown"), input_columns=["perturbation_type"])
    datasets.DatasetDict({"train": ds["train"], "validation": controls}).save_to_disk(str(tmp_path / "ds"))
    _, data_args, _, _ = parse_args(["--output_dir", str(tmp_path), "--dataset", str(tmp_path / "ds")])
    with pytest.raises(ValueError, match="split 'validation' of .* has no site to train on"):
        load_training_data(data_args, MoleculeFeaturizer(fingerprint_size=64), print)


# ---------------------------------------------------------------- cloome embed straight from a load_data table
def _embed(model, dataset, out, *extra):
    return cli.run(["embed", "--model", str(model), "--dataset", str(dataset), "--output_dir", str(out),
                    "--batch_size", "4", "--shard_size", "5", *extra])


@pytest.fixture(scope="module")
def embedded(plates, trained):
    out = plates["root"] / "embedded"
    _embed(trained[0], plates["tables"] / "load_data_with_illum.csv.gz", out, *_table_args(plates))
    return out


def _reference_embeddings(model_dir, layout, sample_keys):
    """The model called directly on the independently computed sites."""
    from cloome_hf import CloomeModel
    from cloome_hf.processing_cloome import CloomeProcessor

    model, processor = CloomeModel.from_pretrained(model_dir).eval(), CloomeProcessor.from_pretrained(model_dir)
    sites = []
    for k in sample_keys:
        _, plate, well, site = k.split("-")
        sites.append(expected_site(layout, plate, well, int(site)))
    with torch.no_grad():
        features = model.get_image_features(processor(images=sites, return_tensors="pt")["pixel_values"]).pooler_output
    return torch.nn.functional.normalize(features, dim=-1).numpy()


def test_embed_reads_a_load_data_table_and_keeps_every_site_with_its_type(plates, trained, embedded):
    from cloome_hf.inference.search import CloomeIndex

    images = store.load_store(embedded)["images"].to_pandas()
    assert sorted(images.sample_key) == sorted(key(p, w) for p in PLATES for w in WELLS)  # DMSO, reagent too
    assert list(images.columns) == list(SITE_METADATA) + ["perturbation_type", "Metadata_Batch", "Metadata_Source",
                                                          "embedding"]
    for row in images.itertuples():
        assert row.perturbation_type == TYPE_OF[WELLS[row.well]]
    assert (images.perturbation_type == "negcon").sum() == 2 and (images.smiles[images.well == "A04"] == "").all()
    np.testing.assert_allclose(np.stack(images.embedding), _reference_embeddings(trained[0], plates,
                                                                                 images.sample_key), atol=1e-5)
    index = CloomeIndex.from_store(embedded)
    assert sorted(index.images.metadata.perturbation_type) == sorted(images.perturbation_type)
    assert sorted(os.listdir(embedded / "images")) == [f"shard-{i:05d}.parquet" for i in range(5)]


def test_table_embedding_resumes_reading_only_the_missing_shards(plates, trained, embedded, monkeypatch, tmp_path):
    from cloome_hf.data.sources import SiteSource

    out, table = tmp_path / "resumed", tmp_path / "load_data_with_illum.csv.gz"
    table.write_bytes((plates["tables"] / "load_data_with_illum.csv.gz").read_bytes())
    real_write, real_read = store.write_shard, SiteSource.read_image
    written, read = [], []

    def crash_on_third(path, *a):
        written.append(path)
        if len(written) == 3:
            raise KeyboardInterrupt("simulated kill")
        real_write(path, *a)

    def counting_read(self, i):
        read.append(i)
        return real_read(self, i)

    monkeypatch.setattr(store, "write_shard", crash_on_third)
    monkeypatch.setattr(SiteSource, "read_image", counting_read)
    with pytest.raises(KeyboardInterrupt):
        _embed(trained[0], table, out, *_table_args(plates))
    assert sorted(os.listdir(out / "images")) == ["shard-00000.parquet", "shard-00001.parquet"]  # no temp cache
    monkeypatch.setattr(store, "write_shard", real_write)
    read.clear()
    _embed(trained[0], table, out, *_table_args(plates))
    assert sorted(read) == list(range(10, 22))  # shards 2-4 only: 5 + 5 + 2 sites
    pd.testing.assert_frame_equal(store.load_store(out)["images"].to_pandas(),
                                  store.load_store(embedded)["images"].to_pandas())
    with pytest.raises(ValueError, match="different settings.*table_options"):
        _embed(trained[0], table, out, *_table_args(plates), "--illumination", "false")
    pd.read_csv(table).iloc[1:].to_csv(table, index=False)  # the same path and settings, other rows
    with pytest.raises(ValueError, match="different settings.*dataset_digest"):
        _embed(trained[0], table, out, *_table_args(plates))


def test_table_options_are_refused_for_other_datasets(plates, prepared, trained, tmp_path):
    with pytest.raises(ValueError, match=r"compounds apply to index / load_data tables.*prepared"):
        _embed(trained[0], prepared, tmp_path / "o", "--compounds", str(plates["tables"] / "compound.csv.gz"))
    with pytest.raises(SystemExit):  # argparse: not a JSON object
        _embed(trained[0], prepared, tmp_path / "o", "--storage_options", "[1]")


def test_embed_from_s3_urls_equals_the_local_table(plates, trained, embedded, tmp_path):
    from local_servers import moto_s3_server, upload_folder

    bucket = tmp_path / "bucket"
    os.makedirs(bucket / os.path.dirname(load_data_key(PLATE1, "x")))
    url_table = load_data_key(PLATE1, "load_data_with_illum.parquet")  # both plates' rows, URL_ form
    plates["url_table"].to_parquet(bucket / url_table, index=False)
    for name in ("compound.csv.gz", "well.csv.gz"):
        (bucket / name).write_bytes((plates["tables"] / name).read_bytes())
    with moto_s3_server() as endpoint:
        upload_folder(endpoint, plates["mirror"], BUCKET)
        upload_folder(endpoint, bucket, BUCKET)
        out = tmp_path / "from_s3"
        _embed(trained[0], f"s3://{BUCKET}/{url_table}", out, "--compounds", f"s3://{BUCKET}/compound.csv.gz",
               "--wells", f"s3://{BUCKET}/well.csv.gz", "--read_threads", "4",
               "--storage_options", json.dumps({"client_kwargs": {"endpoint_url": endpoint}}))
    got, expected = (store.load_store(o)["images"].to_pandas() for o in (out, embedded))
    pd.testing.assert_frame_equal(got.drop(columns="embedding"), expected.drop(columns="embedding"))
    np.testing.assert_allclose(np.stack(got.embedding), np.stack(expected.embedding), atol=1e-6)
    assert "storage_options" not in json.loads((out / "embedding_info.json").read_text())["table_options"]


# ---------------------------------------------------------------- any image size: 1080 x 1080 sites
def _coded_sites(n, size=1080):
    """Sites whose channels spell out each pixel's (row, column) and the site's number, in the canonical order."""
    rows, cols = np.mgrid[0:size, 0:size]
    return [np.stack([rows % 256, rows // 256 + 1, cols % 256, cols // 256 + 1, np.full_like(rows, 100 + i)])
            .astype(np.uint8) for i in range(n)]


def _decode_coordinates(pixel_values):
    """(C, h, w) normalised pixel values -> (row, column, site number) maps of the stored site's pixels."""
    mean = np.asarray(CLOOME_CHANNEL_MEAN, dtype=np.float64).reshape(-1, 1, 1)
    x = np.rint(pixel_values.numpy().astype(np.float64) * mean + mean).astype(np.int64)  # x / m - 1, inverted
    return (x[1] - 1) * 256 + x[0], (x[3] - 1) * 256 + x[2], x[4]


def test_1080_sites_give_random_crops_of_the_training_size(tmp_path):
    import datasets

    from cloome_hf.data import FingerprintTable, features
    from cloome_hf.data.schema import dataset_description, encode_image
    from cloome_hf.featurization_cloome import MoleculeFeaturizer
    from cloome_hf.image_processing_cloome import CloomeImageProcessor
    from cloome_hf.train.data import TrainingData, training_loader
    from cloome_hf.train.params import parse_args

    sites = _coded_sites(2)
    smiles = ["CCO", "CCCCO"]
    encoded = [encode_image(s) for s in sites]
    ds = datasets.Dataset.from_dict(
        {"sample_key": ["s0", "s1"], "plate": ["p", "p"], "well": ["A01", "A02"], "site": [1, 1], "smiles": smiles,
         "inchikey": ["k0", "k1"], "image": [e[0] for e in encoded], "image_shape": [e[1] for e in encoded]},
        features=features(), info=datasets.DatasetInfo(description=dataset_description(CHANNELS),
                                                       features=features()))
    table = FingerprintTable.from_molecules(["k0", "k1"], smiles, MoleculeFeaturizer(fingerprint_size=64))
    _, data_args, _, _ = parse_args(["--output_dir", str(tmp_path), "--image_size", "520", "696"])
    assert data_args.augment and not data_args.random_resized_crop_scale  # the demo recipe: plain random crops
    loader = training_loader(TrainingData(ds, ds, table), data_args, CloomeImageProcessor(), global_batch=2, seed=0)
    corners = set()
    for epoch in range(3):
        loader.set_epoch(epoch)
        for batch in loader:
            assert batch["pixel_values"].shape == (2, 5, 520, 696)
            for pixels, sample in zip(batch["pixel_values"], batch["sample_key"]):
                rows, cols, number = _decode_coordinates(pixels)
                assert (number == 100 + int(sample[1])).all()  # the right site, every channel in place
                # a 520 x 696 window, flipped or turned by 180 degrees: rows change down, columns across
                assert (rows == rows[:, :1]).all() and (cols == cols[:1, :]).all()
                for steps in (np.diff(rows[:, 0]), np.diff(cols[0])):
                    assert len(steps) + 1 in (520, 696) and len(set(steps.tolist())) == 1 and abs(steps[0]) == 1
                assert 0 <= rows.min() and rows.max() < 1080 and 0 <= cols.min() and cols.max() < 1080
                corners.add((sample, int(rows.min()), int(cols.min())))
    assert len(corners) > 2  # the window moves between epochs: a random crop, not the centre


def test_1080_sites_through_the_processor():
    from cloome_hf.image_processing_cloome import CloomeImageProcessor

    processor = CloomeImageProcessor()  # the published 520 x 696 centre crop
    mean = np.asarray(CLOOME_CHANNEL_MEAN, dtype=np.float32).reshape(-1, 1, 1)
    site = _coded_sites(1)[0]
    out = processor(images=[site], return_tensors="pt")["pixel_values"]
    top, left = (1080 - 520) // 2, (1080 - 696) // 2
    expected = site[:, top:top + 520, left:left + 696].astype(np.float32) / mean - 1
    np.testing.assert_allclose(out[0].numpy(), expected, rtol=1e-6, atol=1e-6)
    whole = processor(images=[site], do_center_crop=False, return_tensors="pt")["pixel_values"]
    np.testing.assert_allclose(whole[0].numpy(), site.astype(np.float32) / mean - 1, rtol=1e-6, atol=1e-6)
    # a raw 16-bit 1080 x 1080 site: the 8-bit rule over the whole site, then the crop
    raw = np.random.default_rng(0).integers(200, 9000, size=(5, 1080, 1080)).astype(np.uint16)
    expected = np.stack([reference_uint8(c) for c in raw])[:, top:top + 520, left:left + 696] / mean - 1
    got = processor(images=[raw], return_tensors="pt")["pixel_values"][0].numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
