"""The registry of image-tower kinds: one record per kind, as timm's model registry.

Every tower, whatever its library, is built behind one signature::

    tower(pixel_values: (N, C, H, W) float, output_hidden_states: bool) -> BaseModelOutputWithPooling

with ``pooler_output`` ``(N, tower.num_features)`` and an integer attribute ``num_features``. ``CloomeModel`` only
ever calls that signature (through :func:`build_vision_model`), so a new tower kind is a new record here, never a
branch in the model.

A ``vision_config.backbone`` string is offered to the kinds in registration order; the first that claims it resolves
it (fills the tower's config and preprocessing into the :class:`~cloome_hf.CloomeVisionConfig`, so that a saved
model rebuilds without the network). The last kind, ``transformers``, claims everything and looks for a local folder
and then the Hub; what it could not find becomes an error naming all three things that were tried.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from .configuration_cloome import CHANNEL_STRATEGIES
from .vision_tower_channels import build_channel_strategy


@dataclass(frozen=True)
class VisionTowerKind:
    """One kind of image tower.

    Args:
        name: the kind's name (``vision_config.tower_kind`` records it).
        description: one line for error messages and docs.
        claims: ``claims(vision_config)``: whether ``vision_config.backbone`` names a tower of this kind (no I/O).
        resolve: ``resolve(vision_config)``: check the tower exists and record its config and preprocessing in
            ``vision_config``; raise ``LookupError`` (not found) or ``ValueError`` (refused).
        build: ``build(vision_config, in_channels, load_weights)`` -> the tower, taking ``in_channels`` inputs;
            ``load_weights`` False builds the architecture only (a saved CloomeModel holds the weights).
        pretrained_in_channels: ``pretrained_in_channels(vision_config)``: the input channels the tower was
            pretrained on, what one Cell Painting channel is replicated to under ``per_channel``.
        channel_strategies: the strategies the kind supports.
    """

    name: str
    description: str
    claims: Callable
    resolve: Callable
    build: Callable
    pretrained_in_channels: Callable
    channel_strategies: tuple[str, ...] = ("stem", "per_channel")


_KINDS: dict[str, VisionTowerKind] = {}
_LOAD_PRETRAINED_WEIGHTS = contextvars.ContextVar("cloome_load_pretrained_tower_weights", default=True)


def register_tower_kind(kind: VisionTowerKind) -> VisionTowerKind:
    """Add ``kind``; a name can be registered once. Kinds are tried in registration order."""
    if kind.name in _KINDS:
        raise ValueError(f"a vision tower kind named {kind.name!r} is already registered")
    _KINDS[kind.name] = kind
    return kind


def tower_kind_names() -> tuple[str, ...]:
    return tuple(_KINDS)


def get_tower_kind(name: str) -> VisionTowerKind:
    if name not in _KINDS:
        raise ValueError(f"unknown vision tower kind {name!r}; registered kinds: {list(_KINDS)}")
    return _KINDS[name]


def resolve_tower_kind(config) -> VisionTowerKind:
    """The kind of ``config.backbone``, resolved (``config`` is completed in place); refuses a channel strategy the
    kind cannot run. ``ValueError`` naming the backbone and everything tried when nothing claims it."""
    for kind in _KINDS.values():
        if not kind.claims(config):
            continue
        try:
            kind.resolve(config)
        except LookupError as err:
            known = [k.description for k in _KINDS.values() if k is not kind]
            raise ValueError(f"vision backbone {config.backbone!r} was not found: it is not a known tower name "
                             f"({'; '.join(known)}), {err}") from None
        if config.channel_strategy not in kind.channel_strategies:
            raise ValueError(f"channel_strategy {config.channel_strategy!r} is not supported by the {kind.name} tower "
                             f"{config.backbone!r}; it supports {list(kind.channel_strategies)}")
        config.tower_kind = kind.name
        return kind
    raise ValueError(f"no registered vision tower kind claims backbone {config.backbone!r}")


@contextlib.contextmanager
def without_pretrained_tower_weights():
    """Build towers as architectures only: for loading a saved CloomeModel, whose own weights replace them (and
    which must load without the network)."""
    token = _LOAD_PRETRAINED_WEIGHTS.set(False)
    try:
        yield
    finally:
        _LOAD_PRETRAINED_WEIGHTS.reset(token)


def loading_pretrained_tower_weights() -> bool:
    """Whether towers built now load their pretrained weights (False inside :func:`without_pretrained_tower_weights`,
    the image and the molecule towers alike)."""
    return _LOAD_PRETRAINED_WEIGHTS.get()


def mark_initialised(module: nn.Module) -> nn.Module:
    """Flag a tower's loaded weights so that ``PreTrainedModel.post_init`` does not re-initialise them."""
    for sub in module.modules():
        sub._is_hf_initialized = True
    for tensor in list(module.parameters()) + list(module.buffers()):
        tensor._is_hf_initialized = True
    return module


def build_vision_model(config) -> nn.Module:
    """``CloomeModel.vision_model`` for ``config`` (a :class:`~cloome_hf.CloomeVisionConfig`): the tower under the
    config's channel strategy, behind the one signature (see the module docstring)."""
    kind = resolve_tower_kind(config)
    return build_channel_strategy(kind, config, load_weights=_LOAD_PRETRAINED_WEIGHTS.get())


__all__ = ["CHANNEL_STRATEGIES", "VisionTowerKind", "build_vision_model", "get_tower_kind",
           "loading_pretrained_tower_weights", "mark_initialised", "register_tower_kind",
           "resolve_tower_kind", "tower_kind_names", "without_pretrained_tower_weights"]
