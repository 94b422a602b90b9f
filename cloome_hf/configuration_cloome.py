"""CLOOME configuration: plain data describing the two encoders and the contrastive objective."""

from __future__ import annotations

import math
from typing import Any

from transformers import PreTrainedConfig

from . import config_bounds as bounds
from .losses import CWCL_THRESHOLD, available_losses, get_loss

CLOOME_RESNET50 = "cloome_resnet50"
#: How a tower sees the C channels of a site (see :mod:`cloome_hf.vision_towers.channels`).
CHANNEL_STRATEGIES = ("stem", "per_channel", "channel_tokens")
#: How the molecule tower may take the dose: a one-hot of log-concentration buckets, or log10(c / 1 uM) itself.
CONCENTRATION_ENCODINGS = ("one_hot", "linear")
#: Bucket edges (uM) of the one-hot dose encoding: half-log steps, so the usual dose series (e.g. LINCS's 0.04,
#: 0.12, 0.37, 1.11, 3.33, 10 uM) fall into distinct buckets.
DEFAULT_CONCENTRATION_BUCKETS = (0.03, 0.1, 0.3, 1.0, 3.0, 10.0)


class CloomeVisionConfig(PreTrainedConfig):
    """Configuration of the image encoder.

    Args:
        backbone: ``"cloome_resnet50"`` for the published CLOOME ResNet (anti-aliased, 7x7 average-pool
            head), or the name of any timm model (built with ``in_chans=num_channels, num_classes=0``).
        num_channels: number of Cell Painting channels in ``pixel_values`` (5 for Bray 2017 / JUMP).
        layers: bottleneck blocks per stage of ``cloome_resnet50`` (``[3, 4, 6, 3]`` is ResNet-50).
        image_size: ``[height, width]`` the model is trained for (520 x 696 is a full Bray 2017 site).
        timm_pretrained: load ImageNet weights for a timm backbone (needs network access).
        base_width: channels of the ``cloome_resnet50`` stem (64 published; smaller widths give fast
            CPU-sized models, the feature dimension is ``32 * base_width``).
        head_pool_size: window of the ``cloome_resnet50`` head's stride-1 average pool (7 published); the
            input must be large enough for the final feature map to hold one window.
        channel_names: the name of each input channel, in the order of ``pixel_values`` (default: the canonical
            CLOOME order for 5 channels, ``channel_0`` ... otherwise); sites are matched to it by name.
        channel_strategy: ``"stem"``, ``"per_channel"`` or ``"channel_tokens"`` (see
            :mod:`cloome_hf.vision_towers.channels`); one the tower cannot run is refused here.
        stem_init: how ``stem`` adapts a pretrained transformers patch embedding to ``num_channels`` (and
            ``channel_tokens`` to one channel): ``"average"`` (mean over the pretrained channels, scaled so that a
            replicated channel is answered as the pretrained tower answers it) or ``"reinit"``.
        channel_pooling_layers / channel_pooling_heads: the ``per_channel`` cross-channel transformer (heads
            ``None``: the largest of 8, 4, 2, 1 dividing the feature size).
        tower_weights: a timm tower's pretrained weights: a local file or a Hub id.
        tower_preprocessing: the tower's input convention (``rescale_factor``, ``image_mean``, ``image_std``,
            ``input_size``); read from the tower's saved files when not given (see
            :mod:`cloome_hf.vision_towers.preprocessing`).
        tower_config: the ``config.json`` of a transformers tower, recorded when the backbone is resolved so that
            a saved model rebuilds without the network.
        tower_kind: the registered kind that resolved ``backbone`` (recorded).
        trust_remote_code: allow a remote-code tower's code to run. Never saved: pass it again when loading.
        bag_pooling: ``None`` (the unit is a site), ``"mean"`` or ``"attention"``: how a bag of sites (a well, a
            molecule x dose; ``get_image_features(..., bag_sizes=...)``) is pooled into one image feature before
            the projection head (see :mod:`cloome_hf.bag_pooling`).
    """

    model_type = "cloome_vision_model"
    base_config_key = "vision_config"

    def __init__(
        self,
        backbone: str = CLOOME_RESNET50,
        num_channels: int = 5,
        layers: list[int] | tuple[int, ...] = (3, 4, 6, 3),
        image_size: list[int] | tuple[int, int] | int = (520, 696),
        timm_pretrained: bool = False,
        base_width: int = 64,
        head_pool_size: int = 7,
        channel_names: list[str] | None = None,
        channel_strategy: str = "stem",
        stem_init: str = "average",
        channel_pooling_layers: int = 1,
        channel_pooling_heads: int | None = None,
        tower_weights: str | None = None,
        tower_preprocessing: dict | None = None,
        tower_config: dict | None = None,
        tower_kind: str | None = None,
        trust_remote_code: bool = False,
        bag_pooling: str | None = None,
        **kwargs,
    ):
        bounds.check_base_kwargs("vision_config.", kwargs)
        super().__init__(**kwargs)
        if bag_pooling not in (None, "mean", "attention"):
            raise ValueError(f"bag_pooling must be None, 'mean' or 'attention', got {bag_pooling!r}")
        self.bag_pooling = bag_pooling
        if not isinstance(backbone, str) or not backbone:
            raise ValueError(f"backbone must be a non-empty string, got {backbone!r}")
        if isinstance(image_size, int) and not isinstance(image_size, bool):
            image_size = [image_size, image_size]
        self.backbone = backbone
        self.num_channels = num_channels
        self.layers = list(layers) if isinstance(layers, (list, tuple)) else layers
        self.image_size = list(image_size) if isinstance(image_size, (list, tuple)) else image_size
        self.timm_pretrained = bool(timm_pretrained)
        self.base_width = base_width
        self.head_pool_size = head_pool_size
        self.channel_strategy = channel_strategy
        self.channel_pooling_layers = channel_pooling_layers
        self.channel_pooling_heads = channel_pooling_heads
        bounds.check_vision_sizes(self)  # before anything sized by them is made
        self.channel_names = _checked_channel_names(channel_names, num_channels)
        if channel_strategy not in CHANNEL_STRATEGIES:
            raise ValueError(f"channel_strategy must be one of {CHANNEL_STRATEGIES}, got {channel_strategy!r}")
        if stem_init not in ("average", "reinit"):
            raise ValueError(f"stem_init must be 'average' or 'reinit', got {stem_init!r}")
        if tower_weights is not None and (not isinstance(tower_weights, str) or not tower_weights):
            raise ValueError(f"tower_weights must be a file or a Hub id, got {tower_weights!r}")
        self.stem_init = stem_init
        self.tower_weights = tower_weights
        self.tower_preprocessing = tower_preprocessing
        self.tower_config = tower_config
        self.tower_kind = tower_kind
        self.trust_remote_code = bool(trust_remote_code)
        if backbone != CLOOME_RESNET50 or channel_strategy != "stem" or tower_preprocessing is not None:
            from .vision_tower_kinds import resolve_tower_kind

            resolve_tower_kind(self)  # the tower exists, its convention is known, it runs the channel strategy
        elif self.tower_kind is None:
            self.tower_kind = CLOOME_RESNET50
        bounds.check_tower_config(self.tower_config, backbone)

    def to_dict(self) -> dict[str, Any]:
        # Consent to run remote code is the loader's, never the saved file's.
        output = super().to_dict()
        output.pop("trust_remote_code", None)
        return output


def _checked_channel_names(names, num_channels: int) -> list[str]:
    """Canonical channel names, one per channel and distinct."""
    from .channels import CHANNELS, canonical_channel_name

    if names is None:
        return list(CHANNELS) if num_channels == len(CHANNELS) else [f"channel_{i}" for i in range(num_channels)]
    if isinstance(names, str) or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"channel_names must be a list of channel names, got {names!r}")
    canonical = [canonical_channel_name(n) for n in names]
    if len(canonical) != num_channels or len(set(canonical)) != len(canonical):
        raise ValueError(f"channel_names must name each of the num_channels={num_channels} channels once, got "
                         f"{list(names)}")
    return canonical


class CloomeMoleculeConfig(PreTrainedConfig):
    """Configuration of the molecule encoder (and optionally the dose it is given at).

    Args:
        encoder: the molecule tower, a name of :mod:`cloome_hf.molecule_tower_registry`: ``"mlp"`` (the published
            MLP over a fingerprint), ``"gnn"`` (a graph network over the molecular graph) or ``"transformers"`` (a
            chemical language model).
        fingerprint_size: length of the input fingerprint (1024 Morgan bits, or 8192 Morgan/RDKit counts); ``mlp``.
        hidden_size: units of every hidden layer (``mlp``, ``gnn``; a transformers tower has its own).
        num_hidden_layers: number of Linear -> BatchNorm1d -> ReLU blocks before the projection (``mlp``), of
            message-passing layers (``gnn``).
        gnn_layer: ``"gin"``, ``"gine"`` or ``"nnconv"`` (see :mod:`cloome_hf.molecule_tower_gnn`).
        gnn_readout: ``"sum"``, ``"mean"`` or ``"attention"``.
        atom_features / bond_features: the graph features (names of :mod:`cloome_hf.featurization_graph`; default
            all of them); ``graph_feature_values`` replaces the values a feature may take (e.g. ``{"element": [...]}``).
        graph_schema: the recorded feature schema (made from the three above when not given; a saved model keeps it).
        transformers_model: the text encoder of a ``transformers`` tower, a local folder or Hub id.
        token_pooling: ``"cls"`` or ``"mean"``.
        max_sequence_length: the most tokens per molecule (default: the tower's position limit).
        truncation: cut longer molecules (with a warning) instead of refusing them.
        tower_config: the transformers tower's ``config.json``, recorded so that a saved model rebuilds offline.
        trust_remote_code: allow a remote-code transformers tower's code to run. Never saved.
        concentration_encoding: ``None`` (the published architecture: no dose input), ``"one_hot"`` (a one-hot of
            the log-concentration bucket) or ``"linear"`` (``log10(c / 1 uM)`` and a known-dose flag), concatenated
            to the fingerprint (see :class:`~cloome_hf.modeling_cloome.CloomeConcentrationEncoding`).
        concentration_buckets: ascending bucket edges in uM of the one-hot encoding (default
            :data:`DEFAULT_CONCENTRATION_BUCKETS`); ``len + 1`` buckets. Only with ``"one_hot"``.
    """

    model_type = "cloome_molecule_model"
    base_config_key = "molecule_config"

    def __init__(self, fingerprint_size: int = 1024, hidden_size: int = 1024, num_hidden_layers: int = 4,
                 concentration_encoding: str | None = None, concentration_buckets: list[float] | None = None,
                 encoder: str = "mlp", gnn_layer: str = "gine", gnn_readout: str = "sum",
                 atom_features: list[str] | None = None, bond_features: list[str] | None = None,
                 graph_feature_values: dict | None = None, graph_schema: dict | None = None,
                 transformers_model: str | None = None, token_pooling: str = "cls",
                 max_sequence_length: int | None = None, truncation: bool = False, tower_config: dict | None = None,
                 trust_remote_code: bool = False, **kwargs):
        bounds.check_base_kwargs("molecule_config.", kwargs)
        super().__init__(**kwargs)
        self.fingerprint_size = fingerprint_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        if concentration_encoding is not None and concentration_encoding not in CONCENTRATION_ENCODINGS:
            raise ValueError(f"concentration_encoding must be None or one of {CONCENTRATION_ENCODINGS}, got "
                             f"{concentration_encoding!r}")
        bounds.check_concentration_buckets(concentration_buckets)
        if concentration_encoding == "one_hot":
            concentration_buckets = _checked_buckets(
                DEFAULT_CONCENTRATION_BUCKETS if concentration_buckets is None else concentration_buckets)
        elif concentration_buckets is not None:
            raise ValueError(f"concentration_buckets apply to concentration_encoding='one_hot' only, not "
                             f"{concentration_encoding!r}")
        self.concentration_encoding = concentration_encoding
        self.concentration_buckets = concentration_buckets
        from .featurization_graph import DEFAULT_ATOM_FEATURES, DEFAULT_BOND_FEATURES
        from .molecule_tower_kinds import get_molecule_tower

        self.encoder = encoder
        self.gnn_layer, self.gnn_readout = gnn_layer, gnn_readout
        self.atom_features = list(DEFAULT_ATOM_FEATURES if atom_features is None else atom_features)
        self.bond_features = list(DEFAULT_BOND_FEATURES if bond_features is None else bond_features)
        self.graph_feature_values, self.graph_schema = graph_feature_values, graph_schema
        self.transformers_model, self.token_pooling = transformers_model, token_pooling
        self.max_sequence_length, self.truncation = max_sequence_length, bool(truncation)
        self.tower_config, self.trust_remote_code = tower_config, bool(trust_remote_code)
        bounds.check_molecule_sizes(self)  # before the tower's config is read: a hostile one may be large
        get_molecule_tower(encoder).resolve(self)  # an unknown encoder is refused, naming the registered ones
        bounds.check_molecule_sizes(self)  # and after: the tower's config.json, now recorded

    def to_dict(self) -> dict[str, Any]:
        # Consent to run remote code is the loader's, never the saved file's.
        output = super().to_dict()
        output.pop("trust_remote_code", None)
        return output

    @property
    def num_concentration_features(self) -> int:
        """Inputs the dose adds to the fingerprint: 0, the number of buckets, or 2 (log-dose and known-dose flag)."""
        if self.concentration_encoding == "one_hot":
            return len(self.concentration_buckets) + 1
        return 2 if self.concentration_encoding == "linear" else 0


def _checked_buckets(edges) -> list[float]:
    values = [float(v) for v in edges] if isinstance(edges, (list, tuple)) else None
    if not values or not all(math.isfinite(v) and v > 0 for v in values) or any(
            b <= a for a, b in zip(values, values[1:])):
        raise ValueError(f"concentration_buckets must be a non-empty ascending list of positive concentrations "
                         f"(uM), got {edges!r}")
    return values


class CloomeConfig(PreTrainedConfig):
    """Configuration of a CLOOME model: both encoders plus the shared embedding space and objective.

    Args:
        vision_config: dict or :class:`CloomeVisionConfig`.
        molecule_config: dict or :class:`CloomeMoleculeConfig`.
        projection_dim: dimension ``d`` of the joint embedding space (512 in the paper).
        logit_scale_init_value: initial ``logit_scale``, the log of the logit multiplier: ``ln(1/tau)`` for the
            softmax losses (``ln 14.3`` for the retrieval model, ``ln 30`` for the bioactivity model), SigLIP's
            ``t'`` for the sigmoid losses. ``None``: the loss's own (``ln 14.3``; ``ln 10`` for siglip / s2l).
        learnable_logit_scale: train ``logit_scale`` (clamped per loss, see
            :meth:`~cloome_hf.modeling_cloome.CloomeModel.clamp_logit_scale`) or keep it fixed.
        loss: a name of :func:`cloome_hf.losses.available_losses` (aliases included): ``"infonce"`` (CLIP),
            ``"cloob"`` / ``"infoloob"`` (InfoLOOB with Hopfield retrieval), ``"siglip"``, ``"s2l"`` (MolPhenix)
            or ``"cwcl"`` (chemically weighted CWCL).
        hopfield_beta: inverse temperature ``beta`` of the Hopfield retrieval (22 for the bioactivity model).
        logit_bias_init_value: initial ``logit_bias`` ``b`` of the sigmoid losses (``None``: SigLIP's -10); the
            model has a ``logit_bias`` parameter only for them, so it must stay ``None`` for the others.
        cwcl_threshold: Tanimoto similarity from which two molecules are partial positives of ``"cwcl"``.
    """

    model_type = "cloome"
    sub_configs = {"vision_config": CloomeVisionConfig, "molecule_config": CloomeMoleculeConfig}

    def __init__(
        self,
        vision_config: dict | CloomeVisionConfig | None = None,
        molecule_config: dict | CloomeMoleculeConfig | None = None,
        projection_dim: int = 512,
        logit_scale_init_value: float | None = None,
        learnable_logit_scale: bool = True,
        loss: str = "infonce",
        hopfield_beta: float = 22.0,
        logit_bias_init_value: float | None = None,
        cwcl_threshold: float = CWCL_THRESHOLD,
        **kwargs,
    ):
        if vision_config is None:
            vision_config = CloomeVisionConfig()
        elif isinstance(vision_config, dict):
            vision_config = CloomeVisionConfig(**vision_config)
        if molecule_config is None:
            molecule_config = CloomeMoleculeConfig()
        elif isinstance(molecule_config, dict):
            molecule_config = CloomeMoleculeConfig(**molecule_config)
        self.vision_config = vision_config
        self.molecule_config = molecule_config

        bounds.check_base_kwargs("", kwargs)
        bounds.checked_int("projection_dim", projection_dim, bounds.MAX_WIDTH)
        if loss not in available_losses(include_aliases=True):
            raise ValueError(f"loss must be one of {available_losses(include_aliases=True)}, got {loss!r}")
        objective = get_loss(loss)
        if "fingerprints" in objective.required and molecule_config.encoder != "mlp":
            raise ValueError(f"loss {loss!r} weighs pairs by the molecules' fingerprints, which the "
                             f"{molecule_config.encoder!r} molecule tower does not take; use it with encoder='mlp'")
        if not (isinstance(hopfield_beta, (int, float)) and math.isfinite(hopfield_beta) and hopfield_beta > 0):
            raise ValueError(f"hopfield_beta must be a positive finite number, got {hopfield_beta!r}")
        if isinstance(cwcl_threshold, bool) or not isinstance(cwcl_threshold, (int, float)) or not (
                0 < cwcl_threshold <= 1):
            raise ValueError(f"cwcl_threshold is a Tanimoto similarity in (0, 1], got {cwcl_threshold!r}")
        self.projection_dim = projection_dim
        self.logit_scale_init_value = _checked_logit_scale(logit_scale_init_value, objective)
        self.learnable_logit_scale = bool(learnable_logit_scale)
        self.loss = loss
        self.hopfield_beta = float(hopfield_beta)
        self.logit_bias_init_value = _checked_logit_bias(logit_bias_init_value, objective)
        self.cwcl_threshold = float(cwcl_threshold)
        bounds.check_model_sizes(self)  # the whole model's parameters, before any module is built
        super().__init__(**kwargs)


def _checked_logit_scale(value: float | None, objective) -> float:
    """The loss's initial ``logit_scale`` for ``None``; otherwise ``value``, inside the range it is clamped to."""
    if value is None:
        return objective.logit_scale_init
    bounds = objective.logit_scale_range
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or (
            bounds is not None and not bounds[0] <= value <= bounds[1]):
        where = "a finite number" if bounds is None else f"in [{bounds[0]:g}, ln 100 = {bounds[1]:.4f}]"
        raise ValueError(f"logit_scale_init_value of loss {objective.name!r} must lie {where}, got {value!r}")
    return float(value)


def _checked_logit_bias(value: float | None, objective) -> float | None:
    """The loss's initial ``logit_bias`` (``None`` for losses without one); a value for those is refused."""
    if objective.logit_bias_init is None:
        if value is not None:
            raise ValueError(f"loss {objective.name!r} has no logit bias; logit_bias_init_value must be None, got "
                             f"{value!r}")
        return None
    if value is None:
        return objective.logit_bias_init
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"logit_bias_init_value must be a finite number, got {value!r}")
    return float(value)


__all__ = ["CONCENTRATION_ENCODINGS", "CloomeConfig", "CloomeMoleculeConfig", "CloomeVisionConfig", "CLOOME_RESNET50",
           "DEFAULT_CONCENTRATION_BUCKETS"]
