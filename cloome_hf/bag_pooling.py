"""Well-level bags (multi-instance): a bag of sites' image features pooled into one feature per bag.

When the training unit is a well, or a molecule x dose, instead of a site (``cloome train --bag_by``), a batch
holds the sites of each bag one after the other and ``bag_sizes`` says how many each bag has. The tower's per-site
features ``(N, D)`` (before the projection head) are pooled into ``(B, D)`` by ``vision_config.bag_pooling``:

* ``mean``: the bag's average (MolPhenix averages the embeddings of a well's sites);
* ``attention``: attention-based multiple-instance pooling (Ilse et al. 2018), weights
  ``softmax_i(w^T tanh(V h_i))`` over the bag's sites, so informative sites can count more than empty ones.

Both are invariant to the order of a bag's sites and give a bag of one site its site's feature, so a model
trained on bags embeds a single site as it is (what ``get_image_features`` without ``bag_sizes`` does).
"""

from __future__ import annotations

import torch
from torch import nn

BAG_POOLINGS = ("mean", "attention")


def checked_bag_sizes(bag_sizes: torch.Tensor, num_sites: int) -> torch.Tensor:
    """``bag_sizes`` as a long tensor; ``ValueError`` unless it is 1-D, every size >= 1 and they sum to
    ``num_sites``."""
    if not isinstance(bag_sizes, torch.Tensor):
        bag_sizes = torch.as_tensor(bag_sizes)
    if bag_sizes.ndim != 1 or bag_sizes.is_floating_point() or not len(bag_sizes):
        raise ValueError(f"bag_sizes must be a 1-D integer tensor of sites per bag, got {bag_sizes!r}")
    if int(bag_sizes.min()) < 1 or int(bag_sizes.sum()) != num_sites:
        raise ValueError(f"bag_sizes {bag_sizes.tolist()} must be >= 1 each and sum to the {num_sites} sites given")
    return bag_sizes.long()


class BagPooling(nn.Module):
    """``(N, D)`` site features and ``(B,)`` ``bag_sizes`` (sites of a bag consecutive) -> ``(B, D)``."""

    def __init__(self, mode: str, dim: int, hidden: int = 128):
        super().__init__()
        if mode not in BAG_POOLINGS:
            raise ValueError(f"bag_pooling must be one of {BAG_POOLINGS}, got {mode!r}")
        self.mode = mode
        if mode == "attention":
            self.attention = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, features: torch.Tensor, bag_sizes: torch.Tensor) -> torch.Tensor:
        sizes = checked_bag_sizes(bag_sizes, len(features)).to(features.device)
        bag_of_site = torch.repeat_interleave(torch.arange(len(sizes), device=features.device), sizes)
        if self.mode == "mean":
            weights = (1.0 / sizes.to(features.dtype))[bag_of_site]
        else:
            scores = self.attention(features).squeeze(-1).float()
            top = torch.full((len(sizes),), -torch.inf, device=scores.device).scatter_reduce(
                0, bag_of_site, scores, reduce="amax")
            exp = (scores - top[bag_of_site]).exp()
            total = torch.zeros(len(sizes), device=scores.device).index_add(0, bag_of_site, exp)
            weights = (exp / total[bag_of_site]).to(features.dtype)
        pooled = torch.zeros(len(sizes), features.shape[-1], dtype=features.dtype, device=features.device)
        return pooled.index_add(0, bag_of_site, features * weights[:, None])


__all__ = ["BAG_POOLINGS", "BagPooling", "checked_bag_sizes"]
