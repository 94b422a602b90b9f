"""The ``transformers`` tower kind: any transformers vision model, by local folder or Hub id.

ViT, DINOv2 and the other ``AutoModel`` vision models load from their ``config.json`` and weights; a model whose
config maps ``AutoModel`` to its own code (``auto_map``, e.g. recursionpharma/OpenPhenom) is remote code and loads
only with ``trust_remote_code=True``: without it the tower is refused after reading ``config.json`` as JSON, before
any of its code is imported.

The tower's ``config.json`` is stored in ``vision_config.tower_config``, so a saved CloomeModel rebuilds the
architecture without the network (its weights are in the CloomeModel's own safetensors). A remote-code tower needs
its code again at load time (the local folder or the Hub cache) and ``trust_remote_code=True`` again.
"""

from __future__ import annotations

import json
import os

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling

from .vision_tower_preprocessing import TowerNormalize, checked_tower_preprocessing, preprocessing_from_processor
from .vision_tower_registry import VisionTowerKind, mark_initialised, register_tower_kind

CONFIG_FILE = "config.json"
PROCESSOR_FILE = "preprocessor_config.json"


def _read_json_file(source: str, filename: str, required: bool) -> tuple[dict | None, str]:
    """``filename`` of a local folder or Hub repo as a dict (``None`` when absent and not ``required``), and where
    it was read. ``LookupError`` saying what was tried when the source is neither a folder nor reachable."""
    if os.path.isdir(source):
        path = os.path.join(source, filename)
        if not os.path.isfile(path):
            if required:
                raise LookupError(f"the local folder {source!r} has no {filename}")
            return None, f"the local folder {source!r}"
        with open(path, encoding="utf-8") as handle:
            return json.load(handle), path
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    try:
        path = hf_hub_download(source, filename)
    except EntryNotFoundError as err:
        if isinstance(err, LocalEntryNotFoundError):  # offline and not cached: unreachable, not absent
            return _unreachable(source, err, required)
        if required:
            raise LookupError(f"the Hub repo {source!r} has no {filename}") from None
        return None, f"the Hub repo {source!r}"
    except Exception as err:  # unknown repo, invalid id, gated, no network: every way the Hub says no
        return _unreachable(source, err, required)
    with open(path, encoding="utf-8") as handle:
        return json.load(handle), f"the Hub repo {source!r}"


#: Public name of the reader, for the molecule towers' transformers kind.
read_tower_json = _read_json_file


def _unreachable(source: str, err: Exception, required: bool) -> tuple[None, str]:
    if not required:
        return None, f"the Hub repo {source!r}"
    reason = str(err).splitlines()[0] if str(err) else ""
    raise LookupError(f"not a local folder (no folder {os.path.abspath(source)!r}), and not reachable as a Hub model "
                      f"id ({type(err).__name__}: {reason})") from None


def needs_remote_code(tower_config: dict) -> bool:
    """Whether ``tower_config`` (a ``config.json`` dict) maps its model to code outside transformers."""
    from transformers import CONFIG_MAPPING

    auto_map = tower_config.get("auto_map") or {}
    return "AutoModel" in auto_map or tower_config.get("model_type") not in CONFIG_MAPPING


def _refuse_remote_code(config) -> None:
    if needs_remote_code(config.tower_config) and not config.trust_remote_code:
        raise ValueError(f"the vision tower {config.backbone!r} is remote code (its config.json maps AutoModel to "
                         f"{(config.tower_config.get('auto_map') or {}).get('AutoModel')!r}); it is loaded only with "
                         "trust_remote_code=True, after you have read that code")


#: The transformers model types whose ``embeddings`` return ``[CLS, patches]``, which ``channel_tokens`` regroups.
CHANNEL_TOKEN_MODEL_TYPES = ("vit", "dinov2")


def _refuse_channel_tokens(config) -> None:
    model_type = config.tower_config.get("model_type")
    if config.channel_strategy == "channel_tokens" and model_type not in CHANNEL_TOKEN_MODEL_TYPES:
        raise ValueError(f"channel_strategy 'channel_tokens' is not supported by the transformers tower "
                         f"{config.backbone!r} (model_type {model_type!r}): it needs a ViT-like tower whose "
                         f"embeddings return [CLS, patches], model_type one of {list(CHANNEL_TOKEN_MODEL_TYPES)}; "
                         "use 'stem' or 'per_channel'")


def _claims(config) -> bool:
    return True  # the last kind: a folder or Hub id, or the error that says neither


def _resolve(config) -> None:
    if config.tower_config is not None and config.tower_config.get("_cloome_source") == config.backbone:
        _refuse_channel_tokens(config)
        if config.tower_preprocessing is not None:  # a saved model: nothing to fetch, but its file is checked
            config.tower_preprocessing = checked_tower_preprocessing(config.tower_preprocessing, config.backbone)
        return
    tower_config, where = _read_json_file(config.backbone, CONFIG_FILE, required=True)
    config.tower_config = dict(tower_config, _cloome_source=config.backbone)
    _refuse_remote_code(config)
    _refuse_channel_tokens(config)
    if config.tower_preprocessing is not None:
        config.tower_preprocessing = checked_tower_preprocessing(config.tower_preprocessing, config.backbone)
    else:
        processor, where = _read_json_file(config.backbone, PROCESSOR_FILE, required=False)
        config.tower_preprocessing = preprocessing_from_processor(processor, config.backbone, where)


def _tower_classes(config):
    """The (config class, model class) of the tower: transformers' own, or, trusted, the tower's remote code."""
    cfg = config.tower_config
    if needs_remote_code(cfg):
        _refuse_remote_code(config)
        from transformers.dynamic_module_utils import get_class_from_dynamic_module

        auto_map = cfg.get("auto_map") or {}
        return tuple(get_class_from_dynamic_module(auto_map[key], config.backbone) for key in ("AutoConfig",
                                                                                              "AutoModel"))
    from transformers import CONFIG_MAPPING, AutoModel

    config_class = CONFIG_MAPPING[cfg["model_type"]]
    return config_class, AutoModel._model_mapping[config_class]


def _original_channels(config) -> int:
    return int(config.tower_config.get("num_channels", 3))


def _adapted_stem(weight: torch.Tensor, in_channels: int, how: str) -> torch.Tensor:
    """The patch embedding's ``(out, k, p, p)`` weight for ``in_channels`` inputs: the mean over the pretrained
    channels, repeated and scaled by ``k / in_channels`` (timm's rule: a channel replicated C times gives the
    pretrained response to it replicated k times), or a fresh initialisation (``"reinit"``)."""
    shape = (weight.shape[0], in_channels, *weight.shape[2:])
    if how == "reinit":
        fresh = torch.empty(shape, dtype=weight.dtype)
        nn.init.kaiming_uniform_(fresh, a=5**0.5)
        return fresh
    return weight.mean(dim=1, keepdim=True).expand(shape) * (weight.shape[1] / in_channels)


def _pretrained_state(config, model_class, in_channels: int) -> dict[str, torch.Tensor]:
    """The tower's pretrained weights, with the first convolution adapted to ``in_channels``."""
    pretrained = model_class.from_pretrained(config.backbone)
    state = pretrained.state_dict()
    original = _original_channels(config)
    if in_channels != original:
        name = next(n for n, m in pretrained.named_modules() if isinstance(m, nn.Conv2d) and m.in_channels == original)
        state[f"{name}.weight"] = _adapted_stem(state[f"{name}.weight"], in_channels, config.stem_init)
    return state


class TransformersTower(nn.Module):
    """A transformers vision model behind the tower signature: the tower's normalisation, then the model; the
    pooled feature is the first token of ``last_hidden_state`` (CLS, after the final norm: DINOv2's own
    ``pooler_output``, ViT's without its randomly initialised tanh pooler), or the flattened ``pooler_output`` of a
    convolutional model."""

    def __init__(self, model: nn.Module, preprocessing, in_channels: int, num_features: int):
        super().__init__()
        self.model = model
        self.normalize = TowerNormalize(preprocessing, in_channels)
        self.num_features = num_features

    def forward(self, pixel_values: torch.Tensor, output_hidden_states: bool = False) -> BaseModelOutputWithPooling:
        out = self.model(pixel_values=self.normalize(pixel_values), output_hidden_states=output_hidden_states,
                         return_dict=True)
        last = getattr(out, "last_hidden_state", None)
        if last is None:
            raise ValueError(f"the vision tower {type(self.model).__name__} returned {type(out).__name__} without a "
                             "last_hidden_state; it cannot be used as a CLOOME image tower")
        pooled = last[:, 0] if last.ndim == 3 else out.pooler_output.flatten(1)
        return BaseModelOutputWithPooling(last_hidden_state=last, pooler_output=pooled,
                                          hidden_states=getattr(out, "hidden_states", None))


def _feature_size(config) -> int:
    cfg = config.tower_config
    size = cfg.get("hidden_size") or (cfg.get("hidden_sizes") or [None])[-1]
    if not isinstance(size, int):
        raise ValueError(f"the vision tower {config.backbone!r} states no hidden_size / hidden_sizes in its config, "
                         "so its feature size is unknown")
    return size


def _build(config, in_channels: int, load_weights: bool) -> TransformersTower:
    config_class, model_class = _tower_classes(config)
    fields = {k: v for k, v in config.tower_config.items() if k != "_cloome_source"}
    tower_config = config_class.from_dict(dict(fields, num_channels=in_channels))
    model = model_class(tower_config)
    if load_weights:
        model.load_state_dict(_pretrained_state(config, model_class, in_channels))
        mark_initialised(model)
    return TransformersTower(model, config.tower_preprocessing, in_channels, _feature_size(config))


register_tower_kind(VisionTowerKind(
    name="transformers",
    description="a transformers model folder or Hub id (AutoModel: ViT, DINOv2, ...; remote code with "
                "trust_remote_code=True)",
    claims=_claims,
    resolve=_resolve,
    build=_build,
    pretrained_in_channels=_original_channels,
    channel_strategies=("stem", "per_channel", "channel_tokens"),
))

__all__ = ["CHANNEL_TOKEN_MODEL_TYPES", "TransformersTower", "needs_remote_code", "read_tower_json"]
