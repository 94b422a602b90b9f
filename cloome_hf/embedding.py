"""Turn images and molecules into L2-normalised CLOOME embeddings (shared by search, pipelines and embed.py)."""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _batches(items, batch_size: int):
    """Split a processor image input (a list of sites or a 4-D batch array/tensor) into batch-sized pieces."""
    if isinstance(items, (np.ndarray, torch.Tensor)) and items.ndim == 3:
        items = items[None]  # one (C, H, W) site
    elif isinstance(items, (str, os.PathLike, dict)):
        items = [items]  # one site given as a path or a channel mapping
    for start in range(0, len(items), batch_size):
        yield items[start:start + batch_size]


@torch.no_grad()
def image_embeddings_from_pixels(model, pixel_values: torch.Tensor, autocast_dtype: torch.dtype | None = None):
    """(N, C, H, W) pixel values -> (N, projection_dim) float32 L2-normalised torch tensor (on CPU)."""
    device = _device(model)
    with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        feats = model.get_image_features(pixel_values.to(device)).pooler_output
    return F.normalize(feats.float(), dim=-1).cpu()


@torch.no_grad()
def molecule_embeddings_from_fingerprints(model, fingerprints: torch.Tensor, autocast_dtype=None):
    """(N, F) fingerprints -> (N, projection_dim) float32 L2-normalised torch tensor (on CPU)."""
    device = _device(model)
    with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        feats = model.get_molecule_features(fingerprints.to(device)).pooler_output
    return F.normalize(feats.float(), dim=-1).cpu()


def encode_images(model, processor, images: Any, batch_size: int = 64, autocast_dtype=None) -> np.ndarray:
    """Processor image inputs (paths, channel dicts, arrays; one site or many) -> (N, D) float32 numpy.

    The model must be in eval mode (BatchNorm running statistics); unreadable or malformed images raise the
    image processor's ValueError."""
    out = [image_embeddings_from_pixels(model, processor(images=b, return_tensors="pt")["pixel_values"],
                                        autocast_dtype) for b in _batches(images, batch_size)]
    if not out:
        raise ValueError("no images given")
    return torch.cat(out).numpy()


def encode_molecules(model, processor, smiles: Sequence[str], batch_size: int = 256, autocast_dtype=None) -> np.ndarray:
    """SMILES -> (N, D) float32 numpy. An invalid SMILES raises the featurizer's ValueError naming it."""
    if isinstance(smiles, str):
        smiles = [smiles]
    smiles = list(smiles)
    if not smiles:
        raise ValueError("no SMILES given")
    fingerprints = torch.from_numpy(processor.featurizer(smiles))  # validates every SMILES up front
    out = [molecule_embeddings_from_fingerprints(model, fingerprints[s:s + batch_size], autocast_dtype)
           for s in range(0, len(smiles), batch_size)]
    return torch.cat(out).numpy()
