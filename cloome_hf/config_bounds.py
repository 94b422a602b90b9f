"""Bounds on every size a CLOOME config holds: what the architecture can mean, checked before any module is built.

A ``config.json`` is data from wherever the model came from. A size that is "valid" (a positive integer) but absurd
(a pooling window of 10**9, a million blocks in a stage, a million labels) would otherwise hang or exhaust memory
while the model is being built. Every size is therefore checked here, in microseconds, when the config is made (and
again when :class:`~cloome_hf.CloomeModel` is built from it, in case it was changed since), and refused with the
field's name. This module is the one home of those bounds; the configs and the model only call it.

The caps are generous multiples of the largest published values (noted beside each); the real limit is usually the
architecture's own: the head's pooling window must fit the feature map the image size gives, and the whole model
must stay under :data:`MAX_PARAMETERS`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

#: A site side in pixels: four times the largest Cell Painting site (2160 px, Opera Phenix) and then some.
MAX_IMAGE_SIDE = 8192
#: Channels of a site: Cell Painting has 5 (8 with JUMP's brightfield planes), multiplexed imaging about 60.
MAX_CHANNELS = 128
#: Blocks in one ResNet stage (ResNet-200 has 36) and layers of any stack (ViT-22B has 48; LLMs about 130).
MAX_BLOCKS_PER_STAGE = 64
MAX_LAYERS = 256
#: Widths: the ResNet stem (64 published; the feature size is 32x it), any hidden / embedding size (ViT-22B: 6144).
MAX_BASE_WIDTH = 512
MAX_WIDTH = 65536
#: Fingerprint length: 16x the largest published (8192 Morgan / RDKit counts).
MAX_FINGERPRINT_SIZE = 131072
#: Edges of the one-hot dose buckets (half-log steps from 1 nM to 10 mM are 15).
MAX_CONCENTRATION_BUCKETS = 64
#: Heads of an attention layer, labels of a (never used) classification head.
MAX_HEADS = 1024
MAX_LABELS = 4096
#: Tokens of one image in a transformers tower (ViT-B/16 at 224 px has 196; a 2160 px site at patch 14: ~24k).
MAX_TOKENS = 65536
#: Parameters of the whole model: 8.6 GB of float32 weights, about 35 GB to train with Adam, the most one
#: 80 GB accelerator holds with room for activations. Published CLOOME has 37 M.
MAX_PARAMETERS = 2**31


def checked_int(name: str, value: Any, high: int, low: int = 1, why: str = "") -> int:
    """``value`` if it is an integer (not a bool, float or string) in ``[low, high]``; else ``ValueError`` naming
    ``name`` and the range."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        reason = f" ({why})" if why else ""
        raise ValueError(f"{name} must be an integer in [{low}, {high}]{reason}, got {_short(value)}")
    return value


def checked_int_list(name: str, value: Any, high: int, length: int | None = None, max_length: int = MAX_LAYERS,
                     why: str = "") -> list[int]:
    """``value`` as a list of integers in ``[1, high]``: of exactly ``length`` entries, or of 1 to ``max_length``."""
    count_ok = isinstance(value, (list, tuple)) and (
        len(value) == length if length is not None else 1 <= len(value) <= max_length)
    if not count_ok:
        wanted = f"{length} entries" if length is not None else f"1 to {max_length} entries"
        raise ValueError(f"{name} must be a list of {wanted}, got {_short(value)}")
    return [checked_int(f"{name}[{i}]", v, high, why=why) for i, v in enumerate(value)]


def checked_number(name: str, value: Any, high: float, low: float = 0.0) -> float:
    """A finite number (not a bool) in ``(low, high]``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            math.isfinite(value) and low < value <= high):
        raise ValueError(f"{name} must be a number in ({low:g}, {high:g}], got {_short(value)}")
    return float(value)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:60]}... ({type(value).__name__} of {len(value)} entries)"


def check_base_kwargs(prefix: str, kwargs: Mapping[str, Any]) -> None:
    """The sizes :class:`~transformers.PreTrainedConfig` itself expands: ``num_labels`` / ``id2label`` become a
    dict of that many labels before anything else runs."""
    if kwargs.get("num_labels") is not None:
        checked_int(f"{prefix}num_labels", kwargs["num_labels"], MAX_LABELS, why="CLOOME has no classification head")
    for key in ("id2label", "label2id"):
        labels = kwargs.get(key)
        if labels is not None and (not isinstance(labels, Mapping) or len(labels) > MAX_LABELS):
            raise ValueError(f"{prefix}{key} must be a mapping of at most {MAX_LABELS} labels, got {_short(labels)}")


def check_vision_sizes(config) -> None:
    """Every size of a :class:`~cloome_hf.CloomeVisionConfig`, and the ``cloome_resnet50`` architecture they give."""
    checked_int("vision_config.num_channels", config.num_channels, MAX_CHANNELS)
    checked_int_list("vision_config.layers", config.layers, MAX_BLOCKS_PER_STAGE, length=4,
                     why="bottleneck blocks per ResNet stage")
    checked_int_list("vision_config.image_size", config.image_size, MAX_IMAGE_SIDE, length=2, why="[height, width]")
    checked_int("vision_config.base_width", config.base_width, MAX_BASE_WIDTH)
    checked_int("vision_config.channel_pooling_layers", config.channel_pooling_layers, MAX_LAYERS // 8)
    if config.channel_pooling_heads is not None:
        checked_int("vision_config.channel_pooling_heads", config.channel_pooling_heads, MAX_HEADS)
    if config.backbone != "cloome_resnet50":  # the window is unused; bounded all the same
        checked_int("vision_config.head_pool_size", config.head_pool_size, MAX_IMAGE_SIDE // 32)
        return
    from .vision_tower_resnet import resnet_output_size

    side = min(config.image_size)
    checked_int("vision_config.head_pool_size", config.head_pool_size, max(1, resnet_output_size(side)),
                why=f"the window must fit the {resnet_output_size(side)}-pixel feature map that image_size "
                    f"{list(config.image_size)} gives")


def _tower_value(name: str, key: str, value: Any) -> None:
    bound = _TOWER_SIZE_KEYS[key]
    if isinstance(bound, float):
        checked_number(name, value, bound)
    elif isinstance(value, (list, tuple)):
        checked_int_list(name, value, bound)
    else:
        checked_int(name, value, bound)


#: Sizes of a transformers tower's ``config.json`` (ViT, DINOv2, ConvNeXt, Swin, ResNet ...) and their caps; an int
#: cap takes an integer or a list of them, a float cap a number.
_TOWER_SIZE_KEYS: dict[str, int | float] = {
    "hidden_size": MAX_WIDTH, "intermediate_size": 4 * MAX_WIDTH, "embed_dim": MAX_WIDTH,
    "embedding_size": MAX_WIDTH, "hidden_sizes": MAX_WIDTH, "num_hidden_layers": MAX_LAYERS, "depths": MAX_LAYERS,
    "num_stages": MAX_BLOCKS_PER_STAGE, "num_attention_heads": MAX_HEADS, "num_heads": MAX_HEADS,
    "image_size": MAX_IMAGE_SIDE, "patch_size": MAX_IMAGE_SIDE, "window_size": MAX_IMAGE_SIDE,
    "encoder_stride": MAX_IMAGE_SIDE, "num_channels": MAX_CHANNELS, "num_register_tokens": MAX_HEADS,
    "max_position_embeddings": MAX_TOKENS, "mlp_ratio": 64.0,
}


def check_tower_config(tower_config: Any, backbone: str, prefix: str = "vision_config.tower_config") -> None:
    """The sizes of a transformers tower's recorded ``config.json``: each bounded, its tokens per image and its
    estimated parameters too (an image tower's by default; a molecule tower's with its ``prefix``)."""
    if tower_config is None:
        return
    if not isinstance(tower_config, Mapping):
        raise ValueError(f"{prefix} of tower {backbone!r} must be a config.json mapping, got {_short(tower_config)}")
    check_base_kwargs(f"{prefix}.", tower_config)
    for key in _TOWER_SIZE_KEYS:
        if tower_config.get(key) is not None:
            _tower_value(f"{prefix}.{key}", key, tower_config[key])
    image, patch = tower_config.get("image_size"), tower_config.get("patch_size")
    if image is not None and patch is not None:
        sides = [(i // p) for i, p in zip(_pair(image), _pair(patch))]
        if min(sides) < 1 or sides[0] * sides[1] > MAX_TOKENS:
            raise ValueError(f"{prefix}: image_size {image!r} in patches of {patch!r} gives {sides} patches; a "
                             f"tower needs 1 to {MAX_TOKENS} patches per image")
    check_parameter_budget(f"{prefix} of tower {backbone!r}", tower_parameter_estimate(tower_config))


def _pair(value) -> list[int]:
    return list(value) * (2 // len(value)) if isinstance(value, (list, tuple)) else [value, value]


def tower_parameter_estimate(tower_config: Mapping[str, Any]) -> int:
    """Parameters of a transformers tower, estimated from its widths and depth (the attention and MLP blocks)."""
    widths = tower_config.get("hidden_sizes") or [tower_config.get("hidden_size") or tower_config.get("embed_dim")
                                                  or 0]
    width = max(widths)
    depth = tower_config.get("num_hidden_layers") or sum(tower_config.get("depths") or [0])
    ratio = tower_config.get("mlp_ratio") or 4.0
    inner = tower_config.get("intermediate_size") or int(ratio * width)
    return int(depth * (4 * width * width + 2 * width * inner))


def check_molecule_sizes(config) -> None:
    """Every size of a :class:`~cloome_hf.CloomeMoleculeConfig`, whichever molecule tower it names (the graph
    schema's own sizes are checked where it is read, :func:`~cloome_hf.featurization_graph.checked_graph_schema`)."""
    checked_int("molecule_config.fingerprint_size", config.fingerprint_size, MAX_FINGERPRINT_SIZE)
    checked_int("molecule_config.hidden_size", config.hidden_size, MAX_WIDTH)
    checked_int("molecule_config.num_hidden_layers", config.num_hidden_layers, MAX_BLOCKS_PER_STAGE)
    if getattr(config, "max_sequence_length", None) is not None:
        checked_int("molecule_config.max_sequence_length", config.max_sequence_length, MAX_TOKENS)
    if getattr(config, "encoder", "mlp") == "transformers":
        check_tower_config(config.tower_config, config.transformers_model, prefix="molecule_config.tower_config")


def check_featurizer_parallelism(parallel_threshold: Any, num_workers: Any) -> None:
    """The process-pool settings every molecule featuriser's ``processor_config.json`` records."""
    checked_int("featurizer.parallel_threshold", parallel_threshold, 2**31, low=0)
    if num_workers is not None:
        checked_int("featurizer.num_workers", num_workers, 1024)


def check_concentration_buckets(edges: Any) -> None:
    if isinstance(edges, (list, tuple)) and len(edges) > MAX_CONCENTRATION_BUCKETS:
        raise ValueError(f"molecule_config.concentration_buckets must hold at most {MAX_CONCENTRATION_BUCKETS} "
                         f"edges, got {len(edges)}")


#: Bond features a graph tower's edge network reads when the schema is not known yet (the default schema has 14).
_ASSUMED_BOND_WIDTH = 16


def molecule_parameter_estimate(config) -> tuple[int, int]:
    """``(parameters, feature size)`` of the molecule tower: the MLP's exactly (a Linear and a BatchNorm1d per
    block), a graph network's and a transformers tower's by estimate."""
    encoder, width, depth = getattr(config, "encoder", "mlp"), config.hidden_size, config.num_hidden_layers
    doses = config.num_concentration_features
    if encoder == "transformers" and config.tower_config is not None:
        return tower_parameter_estimate(config.tower_config), int(config.tower_config.get("hidden_size") or 0) + doses
    if encoder == "gnn":
        # GIN / GINE: a two-layer MLP per layer; NNConv: an edge network of bond_width x width x width per layer
        per_layer = (_ASSUMED_BOND_WIDTH + 1) * width * width if config.gnn_layer == "nnconv" else 2 * width * width
        return depth * per_layer, width + doses
    sizes = [config.fingerprint_size + doses] + [width] * depth
    return sum(a * b + 3 * b for a, b in zip(sizes[:-1], sizes[1:])), width


def vision_parameter_estimate(vision) -> tuple[int, int | None]:
    """``(parameters, feature size)`` of the image tower where the config determines them (``cloome_resnet50``
    exactly, a transformers tower by estimate; a timm tower is a fixed named architecture: ``(0, None)``)."""
    if vision.backbone == "cloome_resnet50":
        from .vision_tower_resnet import resnet_parameter_count

        in_channels = 1 if vision.channel_strategy == "per_channel" else vision.num_channels
        count, features = resnet_parameter_count(vision.layers, vision.base_width, in_channels), 32 * vision.base_width
    elif vision.tower_config is not None:
        count = tower_parameter_estimate(vision.tower_config)
        hidden = vision.tower_config.get("hidden_sizes") or [vision.tower_config.get("hidden_size")]
        features = hidden[-1] if isinstance(hidden[-1], int) else None
    else:
        return 0, None
    if vision.channel_strategy == "per_channel" and features:  # the cross-channel transformer
        count += vision.channel_pooling_layers * 8 * features * features
    return count, features


def check_parameter_budget(what: str, count: int) -> None:
    if count > MAX_PARAMETERS:
        raise ValueError(f"{what} would have about {count:.3g} parameters, more than the {MAX_PARAMETERS:.3g} "
                         "(8.6 GB of float32 weights) a CLOOME model may have; reduce its widths or depths")


def check_model_sizes(config) -> None:
    """Every size of a :class:`~cloome_hf.CloomeConfig`, its towers' included, and the whole model's parameters:
    what :class:`~cloome_hf.CloomeModel` checks before it builds a single module."""
    vision, molecule = config.vision_config, config.molecule_config
    check_vision_sizes(vision)
    check_tower_config(vision.tower_config, vision.backbone)
    check_molecule_sizes(molecule)
    checked_int("projection_dim", config.projection_dim, MAX_WIDTH)
    vision_count, features = vision_parameter_estimate(vision)
    molecule_count, molecule_features = molecule_parameter_estimate(molecule)
    projections = ((features or 0) + molecule_features + 2) * config.projection_dim
    total = vision_count + molecule_count + projections
    check_parameter_budget("this config (vision_config.layers / base_width, molecule_config sizes, projection_dim)",
                           total)


__all__ = ["MAX_PARAMETERS", "check_base_kwargs", "check_model_sizes", "check_molecule_sizes",
           "check_featurizer_parallelism", "check_tower_config", "check_vision_sizes", "checked_int",
           "checked_int_list"]
