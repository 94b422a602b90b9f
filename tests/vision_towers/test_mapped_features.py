"""The cached-feature reader maps the store's Arrow copy instead of loading it: it gathers the rows asked for, and
neither Arrow's memory pool nor the process's own memory grows with the table."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from cloome_hf.inference.store import write_shard
from cloome_hf.vision_towers.mapped_features import CACHE_FOLDER, MappedFeatures

ROWS, DIM, SHARDS = 9000, 2048, 3  # 37 MB of fp16 features: a float32 copy would be 74 MB


def write_store(folder, rows=ROWS, dim=DIM, shards=SHARDS, seed=0):
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    written = {}
    for s in range(shards):
        keys = [f"P{s}-A{i:05d}-1" for i in range(rows // shards)]
        values = rng.standard_normal((len(keys), dim)).astype(np.float16)
        write_shard(str(folder / "images" / f"shard-{s:05d}.parquet"), {"sample_key": keys}, values, "float16")
        written.update(zip(keys, values))
    return written


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    folder = tmp_path_factory.mktemp("features")
    return folder, write_store(folder)


def test_reader_gathers_the_rows_asked_for(store):
    folder, written = store
    table = MappedFeatures(folder)
    assert len(table) == ROWS and table.dim == DIM and table.dtype == np.float16
    keys = list(written)
    picked = [keys[i] for i in np.random.default_rng(1).choice(len(keys), 300, replace=False)]
    got = table.gather(table.rows_of(picked))
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, np.stack([written[k] for k in picked]).astype(np.float32))
    with pytest.raises(KeyError, match="no-such-site"):
        table.rows_of([keys[0], "no-such-site"])
    assert all(f.startswith(os.path.join(str(folder), CACHE_FOLDER)) for f in table.arrow_files)


# Run in a fresh process: memory the test process freed earlier would hide a copy (malloc keeps it).
STREAM_ONE_EPOCH = """
import json, sys
import numpy as np, pyarrow as pa
from cloome_hf.vision_towers.mapped_features import MappedFeatures

def anonymous_memory():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("RssAnon:"))

anon_before, pool_before = anonymous_memory(), pa.total_allocated_bytes()
table = MappedFeatures(sys.argv[1])
keys = [k.decode() for k in table.sorted_keys]
order = np.random.default_rng(0).permutation(len(keys))
peak = 0
for start in range(0, len(keys), 256):  # one epoch of batches, in random order
    batch = table.gather(table.rows_of([keys[i] for i in order[start:start + 256]]))
    assert np.isfinite(batch).all()
    peak = max(peak, anonymous_memory() - anon_before)
print(json.dumps({"peak": peak, "pool": pa.total_allocated_bytes() - pool_before, "nbytes": table.nbytes}))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="RssAnon is read from /proc (Linux)")
def test_reader_streams_the_table_without_holding_it(store):
    folder, _ = store
    MappedFeatures(folder)  # the one-off Arrow conversion, outside the measurement
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run([sys.executable, "-c", STREAM_ONE_EPOCH, str(folder)], capture_output=True, text=True,
                         env=env, check=True)
    measured = json.loads(out.stdout.strip().splitlines()[-1])
    assert measured["nbytes"] == ROWS * DIM * 2
    assert measured["pool"] < measured["nbytes"] / 50  # the features are mapped, not read into Arrow's pool
    # a copy would hold 37 MB (fp16) or 74 MB (float32); what grows is the key index, batches, allocator pools
    assert measured["peak"] < measured["nbytes"] / 2


def test_rewritten_shard_is_converted_again_and_a_duplicate_key_refused(tmp_path):
    written = write_store(tmp_path, rows=40, dim=8, shards=2)
    first = MappedFeatures(tmp_path)
    key = next(iter(written))
    os.utime(tmp_path / "images" / "shard-00000.parquet", ns=(1, 1))  # as if written again
    write_shard(str(tmp_path / "images" / "shard-00000.parquet"), {"sample_key": [key]},
                np.full((1, 8), 3.0, dtype=np.float16), "float16")
    again = MappedFeatures(tmp_path)
    assert len(again) == 21 and again.gather(again.rows_of([key]))[0].tolist() == [3.0] * 8
    assert sorted(os.listdir(tmp_path / CACHE_FOLDER)) != sorted(os.path.basename(f) for f in first.arrow_files)
    assert len(os.listdir(tmp_path / CACHE_FOLDER)) == 2  # the stale copy is gone
    write_shard(str(tmp_path / "images" / "shard-00002.parquet"), {"sample_key": [key]},
                np.zeros((1, 8), dtype=np.float16), "float16")
    with pytest.raises(ValueError, match=f"holds sample_key {key!r} more than once"):
        MappedFeatures(tmp_path)
