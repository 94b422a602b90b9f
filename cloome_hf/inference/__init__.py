"""Inference: the one encoder path, embedding stores and FAISS search.

* :mod:`.encode` - sites / datasets / molecules -> L2-normalised embeddings (every command embeds through it);
* :mod:`.store` - the Parquet embedding stores ``cloome embed`` writes, and their one reader;
* :mod:`.search` - FAISS indexes over stores: molecule -> images, image -> molecules, image -> images.
"""

from .encode import Embeddings, embed_fingerprints, embed_pixel_values, encode_dataset, encode_molecules, encode_sites
from .search import CloomeIndex, EmbeddingIndex
from .store import load_store, read_embeddings, read_info

__all__ = ["CloomeIndex", "EmbeddingIndex", "Embeddings", "embed_fingerprints", "embed_pixel_values",
           "encode_dataset", "encode_molecules", "encode_sites", "load_store", "read_embeddings", "read_info"]
