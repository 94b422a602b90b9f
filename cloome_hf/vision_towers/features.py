"""Cached tower features: what ``cloome embed --features backbone`` writes, and the one reader training uses.

A feature store is an embedding store (:mod:`cloome_hf.inference.store`) whose ``embedding`` column holds each
site's frozen-tower features (:func:`~cloome_hf.inference.encode.backbone_features`) and whose
``embedding_info.json`` records, under ``tower``, what made them: the tower (backbone, kind, channel strategy and
names), a digest of its weights, and the preprocessing (the tower's convention and the processor's settings). A
model whose tower or preprocessing differs in any of these is refused by name: its features would be other
features.

The store is read as memory-mapped Arrow (:class:`~cloome_hf.vision_towers.mapped_features.MappedFeatures`):
training gathers the rows of each batch from the mapped files, so a cache larger than memory (1M sites x 1,536
fp16 values is 3 GB) streams instead of loading (``benchmarks/bench_tower_cache.py`` measures it).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..vision_tower_channels import PerChannelTower, tower_module
from .mapped_features import CACHE_FOLDER, MappedFeatures

#: The processor settings that change what a tower computes (file reading options do not).
_PROCESSOR_KEYS = ("channel_order", "do_rescale_to_uint8", "intensity_clip_fraction", "intensity_scale",
                   "do_center_crop", "crop_size", "do_normalize", "image_mean", "image_std", "do_per_image_standardize")


def tower_weights_digest(model) -> str:
    """SHA-256 of the image tower's parameters and buffers (not the channel pooling nor the heads)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(tower_module(model.vision_model).state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def feature_shape(model) -> list[int]:
    """Shape of one site's cached features: ``[D]``, or ``[C, D]`` under ``per_channel``."""
    vision = model.config.vision_config
    dim = tower_module(model.vision_model).num_features
    return [vision.num_channels, dim] if isinstance(model.vision_model, PerChannelTower) else [dim]


def tower_identity(model, image_processor) -> dict[str, Any]:
    """Everything that determines a site's tower features, JSON-ready."""
    vision = model.config.vision_config
    settings = image_processor.to_dict()
    return json.loads(json.dumps({
        "backbone": vision.backbone, "tower_kind": vision.tower_kind, "channel_strategy": vision.channel_strategy,
        "channel_names": vision.channel_names, "tower_preprocessing": vision.tower_preprocessing,
        "tower_weights": tower_weights_digest(model), "feature_shape": feature_shape(model),
        "processor": {k: settings.get(k) for k in _PROCESSOR_KEYS},
    }, default=str))


def check_feature_store(store: str | os.PathLike, model, image_processor) -> dict[str, Any]:
    """The store's info, after checking its features are ``model``'s tower's under ``image_processor``;
    ``ValueError`` naming the store and each differing field otherwise."""
    from ..inference.store import read_info

    info = read_info(store)
    if info.get("features") != "backbone" or "tower" not in info:
        raise ValueError(f"{os.fspath(store)} is not a tower-feature store (write one with `cloome embed "
                         "--features backbone`)")
    mine, theirs = tower_identity(model, image_processor), info["tower"]
    changed = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
    if changed:
        detail = "; ".join(f"{k}: store {theirs.get(k)!r}, model {mine.get(k)!r}"[:300] for k in changed)
        raise ValueError(f"the feature store {os.fspath(store)} was made with another tower or preprocessing "
                         f"({', '.join(changed)} differ: {detail}); embed it again with this model's tower")
    return info


class CachedTowerFeatures:
    """A feature store's site features, memory-mapped, looked up by ``sample_key``.

    Args:
        store: the store folder (``images/*.parquet`` and ``embedding_info.json``) or a Hub dataset id
            (:func:`~cloome_hf.inference.store_location.store_folder`).
        model / image_processor: the model to train and its image processor; the store must match them
            (:func:`check_feature_store`).
    """

    def __init__(self, store: str | os.PathLike, model, image_processor, cache_dir: str | os.PathLike | None = None):
        from ..inference.store_location import beside_snapshot, store_folder

        store = store_folder(store, "feature store")
        info = check_feature_store(store, model, image_processor)
        self.store = os.fspath(store)
        self.shape = list(info["tower"]["feature_shape"])
        if cache_dir is None:  # a store downloaded from the Hub: its Arrow copies go beside the snapshot
            cache_dir = beside_snapshot(self.store, CACHE_FOLDER)
        self.table = MappedFeatures(store, cache_dir)
        if self.table.dim != int(np.prod(self.shape)):
            raise ValueError(f"the feature store {self.store} holds {self.table.dim} values per site, but its info "
                             f"says feature_shape {self.shape}")

    def __len__(self) -> int:
        return len(self.table)

    def features(self, sample_keys: Sequence[str]) -> torch.Tensor:
        """``(len(sample_keys), *feature_shape)`` float32 features; ``ValueError`` naming a key the store lacks."""
        try:
            rows = self.table.rows_of(sample_keys)
        except KeyError as err:
            missing = err.args[0]
            raise ValueError(f"the feature store {self.store} has no features for sample_key(s) {missing}"
                             f"{' ...' if len(missing) == 5 else ''}; embed the training dataset into it") from None
        values = self.table.gather(rows)
        return torch.from_numpy(values.reshape(len(sample_keys), *self.shape))


__all__ = ["CachedTowerFeatures", "check_feature_store", "feature_shape", "tower_identity", "tower_weights_digest"]
