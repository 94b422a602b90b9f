"""prepare: parallel Parquet shards, same rows as direct loading and as streaming, resumable, reports skips."""

import json
import multiprocessing
import os

import datasets
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from cloome_hf.data import decode_row, load_cell_painting, open_source, prepare_dataset, write_synthetic_layout
from cloome_hf.data.__main__ import main as data_main


@pytest.fixture(scope="module")
def npz_layout(tmp_path_factory):
    root = tmp_path_factory.mktemp("npz_layout")
    return write_synthetic_layout(root, "bray_npz", num_molecules=7, sites_per_molecule=2, num_plates=2,
                                  image_size=(32, 40), seed=3)


def _table(folder):
    files = sorted(os.listdir(os.path.join(folder, "data")))
    return pd.concat([pq.read_table(os.path.join(folder, "data", f)).to_pandas() for f in files], ignore_index=True)


def test_prepare_parallel_equals_direct_and_streaming(tmp_path, monkeypatch, npz_layout):
    # datasets sleeps 5 s after a threaded Parquet stream ends (an Arrow shutdown workaround); not needed here
    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0)
    source = open_source("bray_npz", index=npz_layout["index"], root=npz_layout["root"])
    report = prepare_dataset(source, tmp_path / "out", shard_size=4, num_proc=2, progress=False)
    assert report["complete"] and report["num_written"] == 14 and report["num_shards"] == 4
    files = sorted(os.listdir(tmp_path / "out" / "data"))
    assert files == [f"train-{i:05d}-of-00004.parquet" for i in range(4)]
    prepared = load_cell_painting(tmp_path / "out", split="train", cache_dir=str(tmp_path / "cache"))
    direct = load_cell_painting(npz_layout["index"], root=npz_layout["root"], split="train",
                                cache_dir=str(tmp_path / "cache"))
    streamed = list(load_cell_painting(tmp_path / "out", split="train", streaming=True))
    assert prepared.column_names == direct.column_names
    assert prepared.to_list() == direct.to_list() == streamed  # same rows, same order, same bytes
    # images are what np.load gives for each site
    for row in prepared:
        with np.load(os.path.join(npz_layout["root"], f"{row['sample_key']}.npz")) as f:
            np.testing.assert_array_equal(decode_row(row), f["sample"].transpose(2, 0, 1))
    with open(tmp_path / "out" / "cloome_data.json") as f:
        assert json.load(f)["channels"] == ["Mito", "ERSyto", "ERSytoBleed", "Ph_golgi", "Hoechst"]


def test_prepare_resumes_after_interruption(tmp_path, npz_layout):
    def source():
        return open_source("bray_npz", index=npz_layout["index"], root=npz_layout["root"])

    once = tmp_path / "once"
    prepare_dataset(source(), once, shard_size=3, progress=False)
    out = tmp_path / "resumed"
    first = prepare_dataset(source(), out, shard_size=3, num_proc=2, max_shards=2, progress=False)
    assert not first["complete"] and first["shards_done"] == 2
    done = sorted(os.listdir(out / "data"))
    mtimes = {f: os.stat(out / "data" / f).st_mtime_ns for f in done}
    # a worker killed mid-write leaves only a temporary file, never a shard
    (out / "data" / "train-00004-of-00005.parquet.tmp999").write_bytes(b"partial")
    second = prepare_dataset(source(), out, shard_size=3, num_proc=2, progress=False)
    assert second["complete"] and second["shards_reused"] == 2 and second["num_written"] == 14
    assert {f: os.stat(out / "data" / f).st_mtime_ns for f in done} == mtimes  # finished shards were kept
    assert not (out / "data" / "train-00004-of-00005.parquet.tmp999").exists()
    pd.testing.assert_frame_equal(_table(out), _table(once))
    with pytest.raises(ValueError, match=r"different settings \(num_shards, shard_size\)"):
        prepare_dataset(source(), out, shard_size=4, progress=False)


def test_prepare_skips_and_reports_bad_sites(tmp_path, npz_layout):
    index = pd.read_csv(npz_layout["index"])
    index.loc[1, "SMILES"] = "not_a_smiles"
    index.to_csv(tmp_path / "index.csv", index=False)
    os.makedirs(tmp_path / "npz")
    for name in os.listdir(npz_layout["root"]):
        if not name.startswith(index.SAMPLE_KEY[4]):
            os.symlink(os.path.join(npz_layout["root"], name), tmp_path / "npz" / name)
    report = data_main(["prepare", "--kind", "bray_npz", "--index", str(tmp_path / "index.csv"),
                        "--root", str(tmp_path / "npz"), "--output_dir", str(tmp_path / "out"),
                        "--shard_size", "5", "--errors", "skip", "--max_skipped_fraction", "0.5"])
    assert report["num_written"] == 12 and report["num_skipped"] == 2
    skipped = {s["sample_key"]: s["reason"] for s in report["skipped"]}
    assert skipped[index.SAMPLE_KEY[1]] == "invalid SMILES 'not_a_smiles'"
    assert "not found" in skipped[index.SAMPLE_KEY[4]]
    with open(tmp_path / "out" / "prepare_report.json") as f:
        assert json.load(f)["num_skipped"] == 2
    assert sorted(_table(tmp_path / "out").sample_key) == sorted(set(index.SAMPLE_KEY) - set(skipped))


def test_cli_synthetic_parquet_loads(tmp_path):
    out = data_main(["synthetic", "--output_dir", str(tmp_path / "syn"), "--num_molecules", "3",
                     "--sites_per_molecule", "2", "--num_plates", "1", "--image_size", "24", "32"])
    ds = load_cell_painting(tmp_path / "syn", split="train", cache_dir=str(tmp_path / "cache"))
    assert os.path.exists(out["parquet"]) and len(ds) == 6 and ds[0]["image_shape"] == [5, 24, 32]
    with pytest.raises(SystemExit):
        data_main(["--help"])


# ---------------------------------------------------------------- JUMP plates over several processes
@pytest.fixture(scope="module")
def jump_plates(tmp_path_factory):
    from cpg0016_layout import write_cpg0016

    root = tmp_path_factory.mktemp("jump_plates")
    layout = write_cpg0016(root / "mirror")
    layout["file_table"].to_csv(root / "load_data_with_illum.csv", index=False)
    layout["wells"].to_csv(root / "well.csv", index=False)
    layout["compounds"].to_csv(root / "compound.csv", index=False)
    return root


def _prepare_cli(root, out, extra, env):
    """One process of a split run: the command line of ``python -m cloome_hf.data prepare`` (in a forked child,
    which skips the interpreter start-up but is a process of its own)."""
    os.environ.update(env)
    data_main(["prepare", "--kind", "jump", "--load_data", str(root / "load_data_with_illum.csv"),
               "--wells", str(root / "well.csv"), "--compounds", str(root / "compound.csv"),
               "--root", str(root / "mirror"), "--output_dir", str(out), "--shard_size", "3", *extra])


def test_prepare_split_over_two_processes_writes_the_shards_of_one(tmp_path, jump_plates):
    root = jump_plates
    single = prepare_dataset(open_source("jump", load_data=root / "load_data_with_illum.csv", wells=root / "well.csv",
                                         compounds=root / "compound.csv", root=root / "mirror"),
                             tmp_path / "one", shard_size=3, progress=False)
    assert single["complete"] and single["num_shards"] == 6 and single["num_written"] == 16
    assert single["perturbation_types"] == {"trt": 4, "negcon": 4, "poscon": 4, "unknown": 4}
    assert single["num_without_structure"] == 4
    # two processes at once on one folder: one told by flags, one by the RANK / WORLD_SIZE of accelerate launch
    fork = multiprocessing.get_context("fork")
    processes = [fork.Process(target=_prepare_cli, args=(root, tmp_path / "two", flags, env)) for flags, env in
                 ((["--process_index", "0", "--num_processes", "2"], {}), ([], {"RANK": "1", "WORLD_SIZE": "2"}))]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=300)
        assert process.exitcode == 0
    assert sorted(os.listdir(tmp_path / "two" / "data")) == sorted(os.listdir(tmp_path / "one" / "data"))
    for name in os.listdir(tmp_path / "one" / "data"):
        assert pq.read_table(tmp_path / "two" / "data" / name).equals(pq.read_table(tmp_path / "one" / "data" / name))
    with open(tmp_path / "two" / "prepare_report.json") as f:
        report = json.load(f)
    assert report["complete"] and report["num_written"] == 16 and report["perturbation_types"]["negcon"] == 4
    assert set(_table(tmp_path / "two").perturbation_type) == {"trt", "negcon", "poscon", "unknown"}
    # resumable per process: a rerun of process 1 keeps its three shards and writes nothing
    rerun = prepare_dataset(open_source("jump", load_data=root / "load_data_with_illum.csv", wells=root / "well.csv",
                                        compounds=root / "compound.csv", root=root / "mirror"),
                            tmp_path / "two", shard_size=3, progress=False, process_index=1, num_processes=2)
    assert rerun["shards_reused"] == 3 and rerun["process_complete"] and rerun["complete"]


def test_process_shares_are_disjoint_and_refuse_bad_ranks(tmp_path, npz_layout, monkeypatch):
    def source():
        return open_source("bray_npz", index=npz_layout["index"], root=npz_layout["root"])

    owned = []
    for rank in range(3):
        out = tmp_path / f"rank{rank}"
        report = prepare_dataset(source(), out, shard_size=2, progress=False, process_index=rank, num_processes=3)
        owned.append({int(n.split("-")[1]) for n in os.listdir(out / "data")})
        assert report["process_complete"] and not report["complete"]
    assert owned == [{0, 3, 6}, {1, 4}, {2, 5}]
    with pytest.raises(ValueError, match=r"process_index must lie in \[0, num_processes\), got 3 of 3"):
        prepare_dataset(source(), tmp_path / "bad", process_index=3, num_processes=3, progress=False)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="RANK / WORLD_SIZE must be integers"):
        prepare_dataset(source(), tmp_path / "bad", progress=False)
