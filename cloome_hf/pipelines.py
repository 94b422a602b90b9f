"""transformers pipelines for CLOOME, registered with ``PIPELINE_REGISTRY`` on import.

    >>> import cloome_hf.pipelines  # registers the two tasks
    >>> from transformers import pipeline
    >>> extractor = pipeline("cell-painting-feature-extraction", model="path/to/cloome")
    >>> extractor("site.npz")                      # one site -> (projection_dim,) float32, L2-normalised
    >>> extractor([site_a, site_b], batch_size=32)  # a list of sites -> list of arrays
    >>> retriever = pipeline("molecule-image-retrieval", model="path/to/cloome", index="path/to/index")
    >>> retriever("CC(=O)Oc1ccccc1C(=O)O", top_k=5)  # -> [{"score", "rank", "sample_key", "plate", ...}, ...]

Inputs of ``cell-painting-feature-extraction`` are the image inputs of ``CloomeImageProcessor`` (a path to an
``.npz``/``.tif``/``.npy`` site, a ``{channel: path_or_array}`` mapping, a C x H x W array); a top-level list
(or a 4-D array) is always a batch of sites, so a site given as a list of per-channel paths must be wrapped
in a list. ``molecule-image-retrieval`` takes a SMILES or a list of SMILES and an ``index``: a
:class:`cloome_hf.inference.search.CloomeIndex`, its saved folder, or an embeddings dataset (see ``cloome embed``).
"""

from __future__ import annotations

import os

import torch
from transformers import Pipeline
from transformers.pipelines import PIPELINE_REGISTRY

from .inference.encode import is_dataset, embed_fingerprints, embed_pixel_values, encode_molecules, encode_sites
from .modeling_cloome import CloomeModel

FEATURE_TASK = "cell-painting-feature-extraction"
RETRIEVAL_TASK = "molecule-image-retrieval"
DEFAULT_BATCH_SIZE = 64


class _CloomePipeline(Pipeline):
    """Inputs go to the one encoder path (:mod:`cloome_hf.inference.encode`) in batches: CLOOME's processor takes
    lists natively, and transformers' collate-based batching needs a tokenizer or feature extractor to pad with."""

    _load_processor = True
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = False
    _load_video_processor = False

    def _call_params(self, batch_size, kwargs) -> tuple[int, dict]:
        _, _, post = self._sanitize_parameters(**kwargs)
        return batch_size or self._batch_size or DEFAULT_BATCH_SIZE, {**self._postprocess_params, **post}


class CellPaintingFeatureExtractionPipeline(_CloomePipeline):
    """Cell Painting sites -> CLOOME image embeddings: one ``(projection_dim,)`` float32 unit vector per site, as
    ``cloome embed`` stores them.

    Inputs: one site or a batch of sites in any form the processor reads, or a ``datasets.Dataset`` in the common
    schema (its recorded channel order is mapped to the model's). Call parameter: ``batch_size``."""

    def _sanitize_parameters(self, **kwargs):
        if kwargs:
            raise ValueError(f"unknown {FEATURE_TASK} parameter(s): {sorted(kwargs)}")
        return {}, {}, {}

    def preprocess(self, sites):
        return self.processor(images=sites, return_tensors="pt")

    def _forward(self, model_inputs):
        return {"embeddings": embed_pixel_values(self.model, model_inputs["pixel_values"])}

    def postprocess(self, model_outputs):
        return list(model_outputs["embeddings"].numpy())

    def __call__(self, inputs, batch_size: int | None = None, **kwargs):
        size, _ = self._call_params(batch_size, kwargs)
        # a top-level list, a 4-D array or a dataset is a batch of sites; anything else is one site
        single = not (isinstance(inputs, (list, tuple)) or is_dataset(inputs) or getattr(inputs, "ndim", 0) == 4)
        embeddings = encode_sites(self.model, self.processor, inputs, batch_size=size)
        return embeddings[0] if single else list(embeddings)


class MoleculeImageRetrievalPipeline(_CloomePipeline):
    """SMILES -> the ``top_k`` closest images of an index: one list of ``{"score", "rank", **metadata}`` per SMILES.

    Args (construction): ``index``: a :class:`~cloome_hf.inference.search.CloomeIndex`, a saved index folder, or
    an image-embeddings dataset (path / ``datasets.Dataset`` / DataFrame) to build an exact index from."""

    def __init__(self, *args, index=None, **kwargs):
        if index is None:
            raise ValueError(f"the {RETRIEVAL_TASK} pipeline needs index= (a CloomeIndex, its folder or embeddings)")
        self.index = _as_index(index)
        super().__init__(*args, **kwargs)

    def _sanitize_parameters(self, top_k: int | None = None, **kwargs):
        if kwargs:
            raise ValueError(f"unknown {RETRIEVAL_TASK} parameter(s): {sorted(kwargs)}")
        return {}, {}, ({"top_k": top_k} if top_k is not None else {})

    def preprocess(self, smiles):
        return self.processor(smiles=list(smiles), return_tensors="pt")  # invalid SMILES -> ValueError naming it

    def _forward(self, model_inputs):
        return {"embeddings": embed_fingerprints(self.model, **dict(model_inputs))}  # whatever the molecule tower

    def postprocess(self, model_outputs, top_k: int = 10):
        table = self.index.images.search_table(model_outputs["embeddings"].numpy(), k=top_k)
        hits = table.drop(columns=["query_index"]).to_dict("records")
        per_query: list[list[dict]] = [[] for _ in range(len(model_outputs["embeddings"]))]
        for q, hit in zip(table["query_index"].to_numpy(), hits):
            per_query[q].append(hit)
        return per_query

    def __call__(self, inputs, batch_size: int | None = None, **kwargs):
        size, post = self._call_params(batch_size, kwargs)
        single = isinstance(inputs, str)
        embeddings = torch.from_numpy(encode_molecules(self.model, self.processor, inputs, batch_size=size))
        hits = self.postprocess({"embeddings": embeddings}, **post)
        return hits[0] if single else hits


def _as_index(index):
    from .inference.search import CLOOME_INDEX_FILE, CloomeIndex, EmbeddingIndex

    if isinstance(index, CloomeIndex):
        return index
    if isinstance(index, EmbeddingIndex):
        return CloomeIndex(index)
    if isinstance(index, (str, os.PathLike)) and os.path.isfile(os.path.join(index, CLOOME_INDEX_FILE)):
        return CloomeIndex.load(index)
    return CloomeIndex.from_datasets(index)


PIPELINE_REGISTRY.register_pipeline(FEATURE_TASK, pipeline_class=CellPaintingFeatureExtractionPipeline,
                                    pt_model=CloomeModel, type="image")
PIPELINE_REGISTRY.register_pipeline(RETRIEVAL_TASK, pipeline_class=MoleculeImageRetrievalPipeline,
                                    pt_model=CloomeModel, type="multimodal")
