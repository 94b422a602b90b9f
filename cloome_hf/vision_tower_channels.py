"""Channel strategies: how a tower pretrained on k channels sees a Cell Painting site of C named channels.

* ``stem``: the tower's first layer takes the C channels (the CLOOME ResNet and timm's ``in_chans``; for a
  transformers model the patch embedding is averaged over its pretrained channels, or re-initialised);
* ``per_channel``: each channel goes alone through the tower, replicated to its k input channels, and a small
  transformer across the C channel embeddings, each tagged with a learned embedding of its channel name, pools
  them through a class token (CellCLIP's design);
* ``channel_tokens`` (channel-as-token patch embedding, ChannelViT / OpenPhenom style): each channel is cut into
  patches alone by a one-channel patch embedding (the pretrained one summed over its input channels, so a channel
  is answered as the pretrained tower answers it replicated to RGB), every patch token gets the tower's position
  embedding of its place *and* a learned embedding of its channel's name, and the transformer attends across all
  C x P tokens and one class token, whose output is the site's feature. It needs a ViT-like tower whose
  ``embeddings`` module returns ``[CLS, patches]`` (transformers ViT and DINOv2); other towers are refused when the
  config is made.

Channels are matched by name before any of this (``CloomeModel.get_image_features(..., channel_names=...)``
re-orders a site to the config's ``channel_names``), so every strategy embeds a site identically whatever order its
channels come in.

Cached features (``cloome embed --features backbone``) are what :func:`tower_features` returns: ``(N, D)`` under
``stem``, ``(N, C, D)`` under ``per_channel`` (the pooling is trained, so it stays out of the cache);
:func:`pool_tower_features` turns them into the ``(N, num_features)`` input of the projection head.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling


def _num_heads(dim: int, wanted: int | None) -> int:
    if wanted is not None:
        if dim % wanted:
            raise ValueError(f"channel_pooling_heads={wanted} must divide the tower's feature size {dim}")
        return wanted
    return next(h for h in (8, 4, 2, 1) if dim % h == 0)


class CrossChannelPooling(nn.Module):
    """``(N, C, D)`` per-channel embeddings -> ``(N, D)``: a class token and the C embeddings plus their channel-name
    embeddings through a pre-norm transformer encoder (no positional encoding: the channel names are the only
    order), the class token's output, layer-normed."""

    def __init__(self, num_channels: int, dim: int, num_layers: int, num_heads: int | None):
        super().__init__()
        self.channel_embeddings = nn.Parameter(torch.randn(num_channels, dim) * 0.02)
        self.class_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, _num_heads(dim, num_heads), dim_feedforward=2 * dim, dropout=0.0,
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        tokens = features + self.channel_embeddings.to(features.dtype)
        tokens = torch.cat([self.class_token.to(features.dtype).expand(len(features), -1, -1), tokens], dim=1)
        return self.norm(self.encoder(tokens)[:, 0])


class PerChannelTower(nn.Module):
    """The ``per_channel`` strategy around a tower of ``tower_channels`` inputs.

    ``last_hidden_state`` is the ``(N, C, D)`` per-channel tower embeddings, ``pooler_output`` their ``(N, D)``
    pooling; ``hidden_states`` are the tower's, over the ``N * C`` single-channel images.
    """

    def __init__(self, tower: nn.Module, config, tower_channels: int):
        super().__init__()
        self.tower = tower
        self.tower_channels = tower_channels
        self.num_features = tower.num_features
        self.channel_pooling = CrossChannelPooling(config.num_channels, tower.num_features,
                                                   config.channel_pooling_layers, config.channel_pooling_heads)

    def tower_features(self, pixel_values: torch.Tensor, output_hidden_states: bool = False):
        n, c, h, w = pixel_values.shape
        single = pixel_values.reshape(n * c, 1, h, w).expand(-1, self.tower_channels, -1, -1)
        out = self.tower(single, output_hidden_states)
        return out.pooler_output.reshape(n, c, -1), out.hidden_states

    def pool(self, features: torch.Tensor) -> torch.Tensor:
        return self.channel_pooling(features)

    def forward(self, pixel_values: torch.Tensor, output_hidden_states: bool = False) -> BaseModelOutputWithPooling:
        per_channel, hidden_states = self.tower_features(pixel_values, output_hidden_states)
        return BaseModelOutputWithPooling(last_hidden_state=per_channel, pooler_output=self.pool(per_channel),
                                          hidden_states=hidden_states)


class ChannelTokensTower(nn.Module):
    """The ``channel_tokens`` strategy around a ViT-like ``tower`` built for one input channel (its ``model``'s
    ``embeddings`` turns ``(n, 1, H, W)`` into ``(n, 1 + P, D)``: class token, then P patch tokens with their
    position embeddings).

    The C channels of a site go through those embeddings as C one-channel images; a forward hook on the
    embeddings then regroups them into one sequence per site, ``[CLS, P tokens of channel 0 + e_0, ...]``, where
    ``e_c`` is the learned embedding of the c-th name of ``config.channel_names``, and the rest of the tower runs on
    that sequence. ``pooler_output`` is the class token's output, ``last_hidden_state`` all ``1 + C * P`` tokens.
    The attributes ``model`` and ``normalize`` are the tower's (``--unfreeze_last`` finds its blocks there).
    """

    def __init__(self, tower: nn.Module, config):
        super().__init__()
        self.model = tower.model
        self.normalize = tower.normalize
        self.num_features = tower.num_features
        self.num_channels = config.num_channels
        self.channel_embeddings = nn.Parameter(torch.randn(config.num_channels, tower.num_features) * 0.02)

    def _site_tokens(self, num_sites: int):
        def hook(module, args, tokens: torch.Tensor) -> torch.Tensor:
            per_channel = tokens.reshape(num_sites, self.num_channels, *tokens.shape[1:])
            patches = per_channel[:, :, 1:] + self.channel_embeddings.to(tokens.dtype)[None, :, None]
            return torch.cat([per_channel[:, 0, :1], patches.flatten(1, 2)], dim=1)

        return hook

    def forward(self, pixel_values: torch.Tensor, output_hidden_states: bool = False) -> BaseModelOutputWithPooling:
        n, c, h, w = pixel_values.shape
        if c != self.num_channels:
            raise ValueError(f"channel_tokens tower takes {self.num_channels} channels, got pixel_values of shape "
                             f"{tuple(pixel_values.shape)}")
        single = self.normalize(pixel_values.reshape(n * c, 1, h, w))
        handle = self.model.embeddings.register_forward_hook(self._site_tokens(n))
        try:
            out = self.model(pixel_values=single, output_hidden_states=output_hidden_states, return_dict=True)
        finally:
            handle.remove()
        last = out.last_hidden_state
        return BaseModelOutputWithPooling(last_hidden_state=last, pooler_output=last[:, 0],
                                          hidden_states=getattr(out, "hidden_states", None))


def build_channel_strategy(kind, config, load_weights: bool) -> nn.Module:
    """The tower of ``kind`` under ``config.channel_strategy``."""
    if config.channel_strategy == "stem":
        return kind.build(config, config.num_channels, load_weights)
    if config.channel_strategy == "per_channel":
        channels = kind.pretrained_in_channels(config)
        return PerChannelTower(kind.build(config, channels, load_weights), config, channels)
    if config.channel_strategy == "channel_tokens":
        return ChannelTokensTower(kind.build(config, 1, load_weights), config)
    raise ValueError(f"channel_strategy {config.channel_strategy!r} has no implementation")


def tower_features(vision_model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """What a frozen tower contributes per site, before anything trained: ``(N, D)`` or ``(N, C, D)``."""
    if isinstance(vision_model, PerChannelTower):
        return vision_model.tower_features(pixel_values)[0]
    return vision_model(pixel_values).pooler_output


def pool_tower_features(vision_model: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """:func:`tower_features` -> the ``(N, num_features)`` input of the projection head."""
    return vision_model.pool(features) if isinstance(vision_model, PerChannelTower) else features


def tower_module(vision_model: nn.Module) -> nn.Module:
    """The pretrained tower inside ``vision_model`` (what ``--freeze_image_tower`` freezes): without the
    ``per_channel`` pooling, which is always trained."""
    return vision_model.tower if isinstance(vision_model, PerChannelTower) else vision_model


__all__ = ["ChannelTokensTower", "CrossChannelPooling", "PerChannelTower", "build_channel_strategy", "pool_tower_features",
           "tower_features", "tower_module"]
