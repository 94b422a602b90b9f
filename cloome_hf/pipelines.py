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
:class:`cloome_hf.search.CloomeIndex`, its saved folder, or an embeddings dataset (see ``scripts/embed.py``).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import Pipeline
from transformers.pipelines import PIPELINE_REGISTRY

from .modeling_cloome import CloomeModel

FEATURE_TASK = "cell-painting-feature-extraction"
RETRIEVAL_TASK = "molecule-image-retrieval"
DEFAULT_BATCH_SIZE = 64


class _CloomePipeline(Pipeline):
    """Batches by calling the processor on a whole chunk of inputs: CLOOME's processor takes lists natively,
    and transformers' collate-based batching needs a tokenizer or feature extractor to pad with."""

    _load_processor = True
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = False
    _load_video_processor = False

    @staticmethod
    def _is_batch(inputs) -> bool:
        if isinstance(inputs, (np.ndarray, torch.Tensor)):
            return inputs.ndim == 4
        return isinstance(inputs, (list, tuple))

    def __call__(self, inputs, batch_size: int | None = None, **kwargs):
        single = not self._is_batch(inputs)
        items = [inputs] if single else inputs
        if len(items) == 0:
            raise ValueError("empty input list")
        pre, fwd, post = self._sanitize_parameters(**kwargs)
        pre, fwd, post = ({**self._preprocess_params, **pre}, {**self._forward_params, **fwd},
                          {**self._postprocess_params, **post})
        size = batch_size or self._batch_size or DEFAULT_BATCH_SIZE
        outputs: list[Any] = []
        for start in range(0, len(items), size):
            outputs.extend(self.run_single(items[start:start + size], pre, fwd, post))
        return outputs[0] if single else outputs


class CellPaintingFeatureExtractionPipeline(_CloomePipeline):
    """Cell Painting sites -> CLOOME image embeddings, ``(projection_dim,)`` float32 numpy per site.

    Call parameters: ``normalize`` (default True: L2-normalised, as stored by ``scripts/embed.py``),
    ``batch_size``."""

    def _sanitize_parameters(self, normalize: bool | None = None, **kwargs):
        if kwargs:
            raise ValueError(f"unknown {FEATURE_TASK} parameter(s): {sorted(kwargs)}")
        return {}, {}, ({"normalize": normalize} if normalize is not None else {})

    def preprocess(self, sites):
        if isinstance(sites, (np.ndarray, torch.Tensor)) and sites.ndim == 4:
            return self.processor(images=sites, return_tensors="pt")
        return self.processor(images=list(sites), return_tensors="pt")

    def _forward(self, model_inputs):
        return {"features": self.model.get_image_features(model_inputs["pixel_values"].to(self.model.dtype)).pooler_output}

    def postprocess(self, model_outputs, normalize: bool = True):
        feats = model_outputs["features"].float()
        if normalize:
            feats = F.normalize(feats, dim=-1)
        return list(feats.cpu().numpy())


class MoleculeImageRetrievalPipeline(_CloomePipeline):
    """SMILES -> the ``top_k`` closest images of an index: one list of ``{"score", "rank", **metadata}`` per SMILES.

    Args (construction): ``index``: a :class:`~cloome_hf.search.CloomeIndex`, a saved index folder, or an
    image-embeddings dataset (path / ``datasets.Dataset``) to build an exact index from."""

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
        return {"features": self.model.get_molecule_features(model_inputs["fingerprints"]).pooler_output}

    def postprocess(self, model_outputs, top_k: int = 10):
        queries = F.normalize(model_outputs["features"].float(), dim=-1).cpu().numpy()
        table = self.index.images.search_table(queries, k=top_k)
        hits = table.drop(columns=["query_index"]).to_dict("records")
        per_query: list[list[dict]] = [[] for _ in range(len(queries))]
        for q, hit in zip(table["query_index"].to_numpy(), hits):
            per_query[q].append(hit)
        return per_query


def _as_index(index):
    from .search import CLOOME_INDEX_FILE, CloomeIndex, EmbeddingIndex

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
