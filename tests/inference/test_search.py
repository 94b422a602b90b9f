"""CloomeIndex / EmbeddingIndex: exact search vs a numpy reference, approximate recall, persistence, tables."""

import numpy as np
import pandas as pd
import pytest

from cloome_hf.inference.search import CloomeIndex, EmbeddingIndex
from cloome_hf.inference.store import embeddings_from_arrow


def _clustered(n, d, n_clusters=50, seed=0):
    """Clustered unit vectors (like real embeddings) so approximate indexes have structure to exploit."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_clusters, d))
    x = centers[rng.integers(n_clusters, size=n)] + 0.3 * rng.normal(size=(n, d))
    return x.astype(np.float32)


def _numpy_topk(db, queries, k):
    """Independent reference: cosine similarity by numpy, full argsort."""
    db = db / np.linalg.norm(db, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    sims = q.astype(np.float64) @ db.astype(np.float64).T
    ids = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, ids, axis=1), ids


@pytest.fixture(scope="module")
def data():
    db = _clustered(4000, 24)
    queries = _clustered(300, 24, seed=1)[:, :] + 0.1
    meta = pd.DataFrame({"sample_key": [f"site{i}" for i in range(len(db))], "plate": np.arange(len(db)) % 7})
    return db, queries, meta


def test_exact_search_equals_numpy_topk(data):
    db, queries, meta = data
    index = EmbeddingIndex(db, meta)
    scores, ids = index.search(queries, k=10)
    ref_scores, ref_ids = _numpy_topk(db, queries, 10)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)
    # ids agree except where float32 vs float64 rounding swaps two near-tied neighbours
    swapped = ids != ref_ids
    assert swapped.mean() < 0.01
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    true_sims = np.take_along_axis(unit(queries).astype(np.float64) @ unit(db).T.astype(np.float64), ids, axis=1)
    np.testing.assert_allclose(true_sims, ref_scores, atol=1e-5)  # every returned id is a genuine top-k hit


@pytest.mark.parametrize("index_type", ["ivf", "hnsw"])
def test_approximate_recall_matches_independent_count(data, index_type):
    db, queries, meta = data
    index = EmbeddingIndex(db, meta, index_type=index_type, nprobe=4)
    _, ref_ids = _numpy_topk(db, queries, 10)
    _, got = index.search(queries, 10)
    expected = np.mean([len(set(r) & set(g)) / 10 for r, g in zip(ref_ids, got)])
    recall = index.recall_at_k(queries, k=10)
    assert recall == pytest.approx(expected)
    assert 0.5 < recall <= 1.0  # clustered data: a working ANN index finds most true neighbours
    # the stored vectors are recoverable (recall needs them): equal to the normalised inputs
    np.testing.assert_allclose(index.vectors(), db / np.linalg.norm(db, axis=1, keepdims=True), atol=1e-6)


def test_ivf_recall_grows_with_nprobe(data):
    db, queries, meta = data
    low = EmbeddingIndex(db, meta, index_type="ivf", nlist=64, nprobe=1).recall_at_k(queries)
    full = EmbeddingIndex(db, meta, index_type="ivf", nlist=64, nprobe=64).recall_at_k(queries)
    assert low < full and full == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("index_type", ["flat", "ivf", "hnsw"])
def test_save_load_round_trip(data, tmp_path, index_type):
    db, queries, meta = data
    index = EmbeddingIndex(db, meta, index_type=index_type, nprobe=3, ef_search=20)
    index.save(tmp_path / "ix")
    loaded = EmbeddingIndex.load(tmp_path / "ix")
    for a, b in zip(index.search(queries, 5), loaded.search(queries, 5)):
        np.testing.assert_array_equal(a, b)
    pd.testing.assert_frame_equal(loaded.metadata, meta)
    assert loaded.config == index.config
    if index_type == "ivf":
        assert loaded.index.nprobe == 3
    if index_type == "hnsw":
        assert loaded.index.hnsw.efSearch == 20


def test_search_table_rows_and_metadata(data):
    db, queries, meta = data
    index = EmbeddingIndex(db, meta)
    table = index.search_table(queries[:3], k=4, query_info=pd.DataFrame({"smiles": ["C", "CC", "CCC"]}))
    assert len(table) == 12
    assert list(table.columns[:5]) == ["query_index", "rank", "score", "query_smiles", "row"]
    _, ref_ids = _numpy_topk(db, queries[:3], 4)
    np.testing.assert_array_equal(table["row"].to_numpy(), ref_ids.ravel())
    assert table["sample_key"].tolist() == [f"site{i}" for i in ref_ids.ravel()]
    assert table["query_smiles"].tolist() == ["C"] * 4 + ["CC"] * 4 + ["CCC"] * 4
    assert table["rank"].tolist() == [0, 1, 2, 3] * 3


def test_one_call_answers_1000_queries(data):
    db, _, meta = data
    queries = _clustered(1000, 24, seed=3)
    table = EmbeddingIndex(db, meta).search_table(queries, k=10)
    assert len(table) == 10_000 and table["query_index"].nunique() == 1000


def test_from_dataset_variants_and_float16(data, tmp_path):
    import datasets

    db, queries, meta = data
    df = meta.copy()
    df["embedding"] = list(db.astype(np.float16))
    ds = datasets.Dataset.from_pandas(df)
    ds.to_parquet(str(tmp_path / "emb.parquet"))
    ds.save_to_disk(str(tmp_path / "saved"))
    ref_ids = _numpy_topk(db.astype(np.float16).astype(np.float32), queries, 5)[1]
    for source in (ds, str(tmp_path / "emb.parquet"), str(tmp_path / "saved"), df):
        index = EmbeddingIndex.from_dataset(source)
        np.testing.assert_array_equal(index.search(queries, 5)[1], ref_ids)
        assert index.metadata["sample_key"].tolist() == meta["sample_key"].tolist()
    # a shuffled datasets view is indexed in its visible order
    shuffled = ds.shuffle(seed=0)
    index = EmbeddingIndex.from_dataset(shuffled)
    assert index.metadata["sample_key"].tolist() == shuffled["sample_key"]


def test_embeddings_from_arrow_errors():
    import pyarrow as pa

    with pytest.raises(ValueError, match="row 1 has length 2"):
        embeddings_from_arrow(pa.array([[1.0, 2.0, 3.0], [1.0, 2.0]]))
    with pytest.raises(ValueError, match="null"):
        embeddings_from_arrow(pa.array([[1.0], None]))


def test_bad_inputs_raise_value_errors(data):
    db, queries, meta = data
    with pytest.raises(ValueError, match="index_type"):
        EmbeddingIndex(db, index_type="lsh")
    with pytest.raises(ValueError, match="metadata has 3 rows"):
        EmbeddingIndex(db, meta.iloc[:3])
    index = EmbeddingIndex(db)
    with pytest.raises(ValueError, match="query dimension 5"):
        index.search(queries[:, :5])
    with pytest.raises(ValueError, match="embedding"):
        EmbeddingIndex.from_dataset(meta)


def test_cloome_index_queries_with_precomputed_embeddings(data, tmp_path):
    db, queries, meta = data
    library = pd.DataFrame({"smiles": [f"C{'C' * i}" for i in range(50)], "embedding": list(db[:50])})
    images = meta.assign(embedding=list(db))
    cindex = CloomeIndex.from_datasets(images, library, model_id="some/model")
    by_molecule = cindex.search_images(smiles=["CC", "CCC"], query_embeds=queries[:2], k=3)
    assert by_molecule["query_smiles"].tolist() == ["CC"] * 3 + ["CCC"] * 3
    np.testing.assert_array_equal(by_molecule["row"].to_numpy(), _numpy_topk(db, queries[:2], 3)[1].ravel())
    by_image = cindex.search_molecules(query_embeds=queries[:2], k=2)
    assert by_image["smiles"].tolist() == [library["smiles"][i] for i in _numpy_topk(db[:50], queries[:2], 2)[1].ravel()]
    similar = cindex.search_similar_images(query_embeds=db[:4], k=1)
    assert similar["row"].tolist() == [0, 1, 2, 3]  # each image is its own nearest neighbour
    cindex.save(tmp_path / "cindex")
    loaded = CloomeIndex.load(tmp_path / "cindex")
    assert loaded.model_id == "some/model"
    pd.testing.assert_frame_equal(loaded.search_molecules(query_embeds=queries[:2], k=2), by_image)
    with pytest.raises(ValueError, match="no model"):
        loaded.search_images(smiles=["CC"])
    with pytest.raises(ValueError, match="no molecule library"):
        CloomeIndex.from_datasets(images).search_molecules(query_embeds=queries[:1])
