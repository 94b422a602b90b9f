"""Chemical <-> image search over CLOOME embedding databases, built on FAISS.

The paper's use case: embed every Cell Painting image once, then answer

* "which images look like what this molecule would do?"  -> :meth:`CloomeIndex.search_images`
* "which molecules could cause this phenotype?"          -> :meth:`CloomeIndex.search_molecules`
* "which images look like this one?" (MoA by neighbours) -> :meth:`CloomeIndex.search_similar_images`

Embeddings are L2-normalised, so the FAISS inner product is the cosine similarity CLOOME was trained with.
Exact search (``IndexFlatIP``) is the default; ``index_type="ivf"`` (``IndexIVFFlat``) or ``"hnsw"``
(``IndexHNSWFlat``) trade a little recall for speed on >= 1 M rows, and :meth:`EmbeddingIndex.recall_at_k`
measures that recall against exact search.

On-disk layout of a saved :class:`EmbeddingIndex` folder::

    index.faiss          faiss.write_index of the FAISS index
    metadata.parquet     one row per indexed vector (no embedding column)
    index_config.json    index type and parameters, dimension, number of rows

A saved :class:`CloomeIndex` is ``images/`` (+ optional ``molecules/``) such folders plus ``cloome_index.json``
naming the model that produced the embeddings.
"""

from __future__ import annotations

import math
import os
from typing import Any, Sequence

import faiss
import numpy as np
import pandas as pd

from ..finite import require_finite_rows
from ..safe_io import atomic_write_json, read_json, require_keys, temporary_name
from .store import embeddings_from_arrow, read_embeddings


INDEX_TYPES = ("flat", "ivf", "hnsw")
_FAISS_CLASSES = {"flat": faiss.IndexFlat, "ivf": faiss.IndexIVFFlat, "hnsw": faiss.IndexHNSWFlat}
INDEX_FILE = "index.faiss"
METADATA_FILE = "metadata.parquet"
CONFIG_FILE = "index_config.json"
CLOOME_INDEX_FILE = "cloome_index.json"
_ADD_CHUNK = 65536


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation to contiguous float32 (zero rows stay zero). x: (N, D) -> (N, D)."""
    x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    if x.ndim != 2:
        raise ValueError(f"embeddings must be a 2-D (N, D) array, got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


class EmbeddingIndex:
    """A FAISS inner-product index over L2-normalised embeddings plus a metadata table.

    Args:
        embeddings: (N, D) array (float16/32/64); normalised to unit length on the way in.
        metadata: optional DataFrame with N rows (sample_key, plate, well, ...), returned with every hit.
        index_type: ``"flat"`` (exact, default), ``"ivf"`` or ``"hnsw"`` (approximate).
        nlist: IVF cells; default ``sqrt(N)`` clamped to [1, N // 39] (FAISS wants >= 39 points a cell).
        nprobe: IVF cells visited per query.
        hnsw_m, ef_construction, ef_search: HNSW graph degree and beam widths.
        seed: k-means seed for IVF training.
    """

    def __init__(
        self,
        embeddings: np.ndarray,
        metadata: pd.DataFrame | None = None,
        index_type: str = "flat",
        nlist: int | None = None,
        nprobe: int = 16,
        hnsw_m: int = 32,
        ef_construction: int = 80,
        ef_search: int = 128,
        seed: int = 0,
    ):
        if index_type not in INDEX_TYPES:
            raise ValueError(f"index_type must be one of {INDEX_TYPES}, got {index_type!r}")
        embeddings = np.asarray(embeddings)
        if embeddings.ndim != 2 or len(embeddings) == 0:
            raise ValueError(f"embeddings must be a non-empty 2-D (N, D) array, got shape {embeddings.shape}")
        n, self.dim = embeddings.shape
        if metadata is None:
            metadata = pd.DataFrame(index=range(n))
        if len(metadata) != n:
            raise ValueError(f"metadata has {len(metadata)} rows but there are {n} embeddings")
        self.metadata = metadata.reset_index(drop=True)
        key_column = next((c for c in ("sample_key", "inchikey", "smiles") if c in self.metadata.columns), None)
        require_finite_rows(embeddings, "the embeddings to index",
                            None if key_column is None else self.metadata[key_column])
        self.config: dict[str, Any] = {"index_type": index_type, "dim": self.dim, "num_rows": n}
        if index_type == "flat":
            self.index = faiss.IndexFlatIP(self.dim)
        elif index_type == "ivf":
            nlist = nlist or int(math.sqrt(n))
            nlist = max(1, min(nlist, n // 39 or 1))
            quantizer = faiss.IndexFlatIP(self.dim)
            self.index = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
            # k-means on 64 points a cell keeps training cost independent of N (FAISS warns below 39).
            rng = np.random.default_rng(seed)
            sample = np.arange(n) if n <= 64 * nlist else np.sort(rng.choice(n, 64 * nlist, replace=False))
            self.index.cp.seed = seed
            self.index.train(l2_normalize(embeddings[sample]))
            self.index.nprobe = min(nprobe, nlist)
            self.config.update(nlist=nlist, nprobe=self.index.nprobe, seed=seed)
        else:
            self.index = faiss.IndexHNSWFlat(self.dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            self.index.hnsw.efConstruction = ef_construction
            self.index.hnsw.efSearch = ef_search
            self.config.update(hnsw_m=hnsw_m, ef_construction=ef_construction, ef_search=ef_search)
        # normalise and add in chunks so peak memory is the index plus one chunk, not a second full copy
        for start in range(0, n, _ADD_CHUNK):
            self.index.add(l2_normalize(embeddings[start:start + _ADD_CHUNK]))

    @classmethod
    def _from_parts(cls, index, metadata: pd.DataFrame, config: dict) -> "EmbeddingIndex":
        obj = cls.__new__(cls)
        obj.index, obj.metadata, obj.config, obj.dim = index, metadata, config, config["dim"]
        return obj

    @classmethod
    def from_dataset(cls, dataset, embedding_column: str = "embedding", **kwargs) -> "EmbeddingIndex":
        """Build from an embeddings dataset: a ``datasets.Dataset``, a pandas DataFrame, or a path to a
        ``save_to_disk`` folder / Parquet file / folder of Parquet files (as written by ``scripts/embed.py``).
        Every column except ``embedding_column`` becomes metadata."""
        table = read_embeddings(dataset, embedding_column)
        if embedding_column not in table.column_names:
            raise ValueError(f"column {embedding_column!r} not in the embeddings dataset (has {table.column_names})")
        embeddings = embeddings_from_arrow(table.column(embedding_column))
        meta = table.drop_columns([embedding_column])
        metadata = meta.to_pandas() if meta.num_columns else pd.DataFrame(index=range(len(embeddings)))
        return cls(embeddings, metadata, **kwargs)

    def __len__(self) -> int:
        return self.index.ntotal

    def search(self, queries: np.ndarray, k: int = 10, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by cosine similarity. queries: (Q, D) -> (scores (Q, k) float32, ids (Q, k) int64), best first.

        ``rows``: search only these row ids (a metadata filter: plate, perturbation type, dose); FAISS skips the
        others inside the search, so the hits are the top-k of the allowed rows (for IVF, of its probed cells).
        ids are -1 (score -inf) where fewer than k rows were found."""
        require_finite_rows(np.asarray(queries), "the search queries")
        q = l2_normalize(queries)
        if q.shape[1] != self.dim:
            raise ValueError(f"query dimension {q.shape[1]} does not match the index dimension {self.dim}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if rows is None:
            return self.index.search(q, min(k, len(self)))
        selector = faiss.IDSelectorBatch(np.ascontiguousarray(rows, dtype=np.int64))
        params = (faiss.SearchParametersIVF(sel=selector, nprobe=self.index.nprobe)
                  if isinstance(self.index, faiss.IndexIVF) else faiss.SearchParameters(sel=selector))
        return self.index.search(q, min(k, len(self)), params=params)

    def search_table(self, queries: np.ndarray, k: int = 10, query_info: pd.DataFrame | None = None,
                     rows: np.ndarray | None = None) -> pd.DataFrame:
        """Search and return a long table: one row per (query, hit) with ``query_index``, ``rank`` (0 = best),
        ``score`` (cosine), ``query_*`` columns from ``query_info`` and the hit's metadata columns. ``rows``: as
        for :meth:`search`."""
        scores, ids = self.search(queries, k, rows)
        q_idx, rank = np.divmod(np.arange(ids.size), ids.shape[1])
        flat_ids, flat_scores = ids.ravel(), scores.ravel()
        found = flat_ids >= 0
        out = pd.DataFrame({"query_index": q_idx[found], "rank": rank[found], "score": flat_scores[found]})
        if query_info is not None:
            for col in query_info.columns:
                out[f"query_{col}"] = query_info[col].to_numpy()[out["query_index"].to_numpy()]
        hits = self.metadata.iloc[flat_ids[found]].reset_index(drop=True)
        out["row"] = flat_ids[found]
        return pd.concat([out, hits], axis=1)

    def recall_at_k(self, queries: np.ndarray, k: int = 10, exact_ids: np.ndarray | None = None) -> float:
        """Fraction of the exact top-k that this index returns, averaged over queries.

        exact_ids: (Q, k) ids of the true top-k if already known (e.g. from a flat index over the same rows);
        otherwise exact brute-force search runs here on the stored vectors. For ``index_type="flat"`` the
        recall is 1.0 up to float ties."""
        if exact_ids is None:
            _, exact_ids = faiss.knn(l2_normalize(queries), self.vectors(), k, metric=faiss.METRIC_INNER_PRODUCT)
        exact_ids = np.asarray(exact_ids)[:, :k]
        _, got = self.search(queries, k)
        hits = sum(len(set(t) & set(g[g >= 0])) for t, g in zip(exact_ids, got))
        return hits / exact_ids.size

    def vectors(self) -> np.ndarray:
        """The stored (normalised) vectors, (N, D) float32: a view for flat/HNSW, a copy for IVF."""
        n, d = len(self), self.dim
        if isinstance(self.index, faiss.IndexIVF):
            invlists = self.index.invlists
            out = np.empty((n, d), dtype=np.float32)
            for lst in range(self.index.nlist):
                size = invlists.list_size(lst)
                if size == 0:
                    continue
                ids = faiss.rev_swig_ptr(invlists.get_ids(lst), size).copy()
                codes = faiss.rev_swig_ptr(invlists.get_codes(lst), size * self.index.code_size)
                out[ids] = codes.view(np.float32).reshape(size, d)
            return out
        flat = faiss.downcast_index(self.index.storage) if isinstance(self.index, faiss.IndexHNSW) else self.index
        return faiss.rev_swig_ptr(flat.get_xb(), n * d).reshape(n, d)

    def save(self, directory: str | os.PathLike) -> None:
        """Write the folder (see the module docstring); each file atomically, the config last."""
        os.makedirs(directory, exist_ok=True)
        index_path, metadata_path = os.path.join(directory, INDEX_FILE), os.path.join(directory, METADATA_FILE)
        faiss.write_index(self.index, temporary_name(index_path))
        os.replace(temporary_name(index_path), index_path)
        self.metadata.to_parquet(temporary_name(metadata_path), index=False)
        os.replace(temporary_name(metadata_path), metadata_path)
        atomic_write_json(os.path.join(directory, CONFIG_FILE), self.config)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "EmbeddingIndex":
        """Load a saved folder; ``ValueError`` naming it when its files disagree: the FAISS index's vector count,
        dimension, type or metric against ``index_config.json``, or the metadata rows against the vectors."""
        for name in (INDEX_FILE, METADATA_FILE, CONFIG_FILE):
            if not os.path.isfile(os.path.join(directory, name)):
                raise ValueError(f"{directory!s} is not a saved EmbeddingIndex: {name} is missing")
        config_path = os.path.join(directory, CONFIG_FILE)
        config = read_json(config_path, "index config")
        require_keys(config, ("index_type", "dim", "num_rows"), config_path, "index config")
        kind = config["index_type"]
        if kind not in INDEX_TYPES:
            raise ValueError(f"{config_path}: unknown index_type {kind!r}; expected one of {INDEX_TYPES}")
        require_keys(config, {"ivf": ("nprobe",), "hnsw": ("ef_search",)}.get(kind, ()), config_path, "index config")
        index_path, metadata_path = os.path.join(directory, INDEX_FILE), os.path.join(directory, METADATA_FILE)
        try:
            index = faiss.read_index(index_path)
        except RuntimeError as err:  # FAISS reports a damaged file as a RuntimeError
            raise ValueError(f"cannot read the FAISS index {index_path}: {err}") from err
        try:
            metadata = pd.read_parquet(metadata_path)
        except Exception as err:  # noqa: BLE001 - a damaged Parquet file raises ArrowInvalid, OSError, ...
            raise ValueError(f"cannot read the index metadata {metadata_path}: {type(err).__name__}: {err}") from err
        if not len(metadata.columns):  # an index without metadata: Parquet keeps no row count for no columns
            metadata = pd.DataFrame(index=range(index.ntotal))
        problems = []
        if not isinstance(index, _FAISS_CLASSES[kind]) or index.metric_type != faiss.METRIC_INNER_PRODUCT:
            problems.append(f"{INDEX_FILE} is a {type(index).__name__} (metric {index.metric_type}), not the "
                            f"inner-product {kind!r} index the config names")
        if index.d != config["dim"]:
            problems.append(f"{INDEX_FILE} has dimension {index.d}, the config {config['dim']}")
        if index.ntotal != config["num_rows"]:
            problems.append(f"{INDEX_FILE} holds {index.ntotal} vectors, the config {config['num_rows']}")
        if len(metadata) != index.ntotal:
            problems.append(f"{METADATA_FILE} has {len(metadata)} rows for {index.ntotal} vectors")
        if problems:
            raise ValueError(f"the saved index {directory!s} is inconsistent (tampered with, or files of two "
                             f"indexes): {'; '.join(problems)}")
        if isinstance(index, faiss.IndexIVF):
            index.nprobe = config["nprobe"]  # nprobe is a search-time setting, not serialised by FAISS
        if isinstance(index, faiss.IndexHNSW):
            index.hnsw.efSearch = config["ef_search"]
        loaded = cls._from_parts(index, metadata, config)
        key_column = next((c for c in ("sample_key", "inchikey", "smiles") if c in metadata.columns), None)
        require_finite_rows(loaded.vectors(), f"the saved index {directory!s}",
                            None if key_column is None else metadata[key_column])
        return loaded


class CloomeIndex:
    """Chemical <-> image search: a CLOOME model + processor, an image-embedding index and optionally a
    molecule-library index.

    Args:
        images: EmbeddingIndex over image embeddings (site metadata).
        molecules: optional EmbeddingIndex over a molecule library's embeddings (smiles, inchikey, ...).
        model: a CloomeModel (needed only to embed raw SMILES / images at query time).
        processor: a CloomeProcessor (turns SMILES / images into model inputs, with its clear errors).
        model_id: name recorded on save so :meth:`load` can reload the model.
        revision: Hub revision of ``model_id`` that made the embeddings (recorded and used on reload).
        batch_size: encoder batch size; a 1,000-query call is answered in one call, encoded in batches.
    """

    def __init__(self, images: EmbeddingIndex, molecules: EmbeddingIndex | None = None, model=None, processor=None,
                 model_id: str | None = None, revision: str | None = None, batch_size: int = 256):
        self.images, self.molecules = images, molecules
        # A model loaded with from_pretrained knows where it came from; save() records it for load(load_model=True).
        model_id = model_id or (getattr(model, "name_or_path", None) or None)
        self.model, self.processor, self.model_id, self.batch_size = model, processor, model_id, batch_size
        self.revision = revision

    @classmethod
    def from_store(cls, store: str | os.PathLike, model_id: str | None = None, **index_kwargs) -> "CloomeIndex":
        """Build from a ``cloome embed`` output folder or a Hub dataset id holding one
        (:func:`~cloome_hf.inference.store_location.store_folder`); the model and revision that made the embeddings
        are taken from its ``embedding_info.json`` (``model_id`` overrides the model, then without a revision)."""
        from .store import read_info
        from .store_location import store_folder

        store = store_folder(store)
        info = read_info(store)
        molecules = os.path.join(store, "molecules")
        revision = info.get("revision") if model_id is None else None
        return cls.from_datasets(os.path.join(store, "images"), molecules if os.path.isdir(molecules) else None,
                                 model_id=model_id or info.get("model_id"), revision=revision, **index_kwargs)

    def load_encoder(self) -> None:
        """Load the recorded model (at its recorded revision) and its processor, to encode raw queries."""
        if self.model_id is None:
            raise ValueError("no model to encode the queries with: this index records no model id")
        from ..processing_cloome import load_model_and_processor

        self.model, self.processor = load_model_and_processor(self.model_id, revision=self.revision)

    @classmethod
    def from_datasets(cls, image_embeddings, molecule_embeddings=None, model=None, processor=None,
                      model_id: str | None = None, revision: str | None = None, **index_kwargs) -> "CloomeIndex":
        """Build from embeddings datasets (anything :meth:`EmbeddingIndex.from_dataset` reads)."""
        images = EmbeddingIndex.from_dataset(image_embeddings, **index_kwargs)
        molecules = None
        if molecule_embeddings is not None:  # a library is small; exact search is always affordable
            molecules = EmbeddingIndex.from_dataset(molecule_embeddings)
        return cls(images, molecules, model=model, processor=processor, model_id=model_id, revision=revision)

    # ----- query encoding -----------------------------------------------------------------------------
    def _require_encoder(self):
        if self.model is None or self.processor is None:
            raise ValueError("this CloomeIndex has no model/processor; pass model= and processor= or query embeddings")

    def encode_molecules(self, smiles: Sequence[str]) -> np.ndarray:
        """SMILES -> (N, projection_dim) L2-normalised float32. Invalid SMILES raise the featurizer's ValueError."""
        self._require_encoder()
        from .encode import encode_molecules

        return encode_molecules(self.model, self.processor, smiles, batch_size=self.batch_size)

    def encode_images(self, images) -> np.ndarray:
        """Processor image inputs -> (N, projection_dim) L2-normalised float32."""
        self._require_encoder()
        from .encode import encode_sites

        return encode_sites(self.model, self.processor, images, batch_size=self.batch_size)

    # ----- queries ------------------------------------------------------------------------------------
    def search_images(self, smiles: Sequence[str] | None = None, k: int = 10, query_embeds: np.ndarray | None = None,
                      rows: np.ndarray | None = None):
        """Molecule -> images: the k images closest to each query molecule (among ``rows``, if given). Returns a
        long DataFrame (query_index, rank, score, query_smiles, + image metadata)."""
        if isinstance(smiles, str):
            smiles = [smiles]
        q = query_embeds if query_embeds is not None else self.encode_molecules(smiles)
        info = pd.DataFrame({"smiles": list(smiles)}) if smiles is not None else None
        return self.images.search_table(q, k, info, rows=rows)

    def search_molecules(self, images=None, k: int = 10, query_embeds: np.ndarray | None = None):
        """Image -> molecules from the library: which molecules could cause this phenotype?"""
        if self.molecules is None:
            raise ValueError("this CloomeIndex has no molecule library; build it with molecule_embeddings=")
        q = query_embeds if query_embeds is not None else self.encode_images(images)
        return self.molecules.search_table(q, k)

    def search_similar_images(self, images=None, k: int = 10, query_embeds: np.ndarray | None = None,
                              rows: np.ndarray | None = None):
        """Image -> images (mechanism of action by neighbours), among ``rows`` if given."""
        q = query_embeds if query_embeds is not None else self.encode_images(images)
        return self.images.search_table(q, k, rows=rows)

    # ----- persistence --------------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike) -> None:
        self.images.save(os.path.join(directory, "images"))
        if self.molecules is not None:
            self.molecules.save(os.path.join(directory, "molecules"))
        atomic_write_json(os.path.join(directory, CLOOME_INDEX_FILE),
                          {"model_id": self.model_id, "revision": self.revision,
                           "has_molecules": self.molecules is not None})

    @classmethod
    def load(cls, directory: str | os.PathLike, model=None, processor=None, load_model: bool = False) -> "CloomeIndex":
        """Load a saved index. With ``load_model=True`` the recorded model id is loaded with from_pretrained."""
        path = os.path.join(directory, CLOOME_INDEX_FILE)
        if not os.path.isfile(path):
            raise ValueError(f"{directory!s} is not a saved CloomeIndex: {CLOOME_INDEX_FILE} is missing")
        info = read_json(path, "CloomeIndex file")
        require_keys(info, ("model_id", "has_molecules"), path, "CloomeIndex file")
        images = EmbeddingIndex.load(os.path.join(directory, "images"))
        molecules = EmbeddingIndex.load(os.path.join(directory, "molecules")) if info["has_molecules"] else None
        if molecules is not None and molecules.dim != images.dim:
            raise ValueError(f"the saved index {directory!s} pairs {images.dim}-dimensional image embeddings with "
                             f"{molecules.dim}-dimensional molecule embeddings: not one model's")
        index = cls(images, molecules, model=model, processor=processor, model_id=info.get("model_id"),
                    revision=info.get("revision"))
        if load_model and model is None:
            index.load_encoder()
        return index
