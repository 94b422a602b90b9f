"""The ``transformers`` molecule tower: any transformers text encoder (a chemical language model) by local folder or
Hub id, with its tokenizer.

RoBERTa-style models (``seyonec/ChemBERTa-zinc-base-v1``, ``DeepChem/ChemBERTa-77M-MLM``) load from their
``config.json``; a model whose config maps ``AutoModel`` to its own code (``ibm/MoLFormer-XL-both-10pct``) is remote
code and loads only with ``trust_remote_code=True``: without it the tower is refused after reading ``config.json`` as
JSON, before any of its code is imported. The pooled feature is the first token's last hidden state (``"cls"``) or
the mean over the attended tokens (``"mean"``).

The tower's ``config.json`` is recorded in ``molecule_config.tower_config``, so a saved CloomeModel rebuilds the
architecture without the network; its tokenizer is saved by the processor, beside it.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling

from .molecule_tower_mlp import CloomeConcentrationEncoding, with_dose
from .molecule_tower_registry import MoleculeTowerKind, register_molecule_tower
from .vision_tower_registry import mark_initialised

TOKEN_POOLINGS = ("cls", "mean")


def _refuse_remote_code(config) -> None:
    from .vision_tower_transformers import needs_remote_code

    if needs_remote_code(config.tower_config) and not config.trust_remote_code:
        raise ValueError(f"the molecule tower {config.transformers_model!r} is remote code (its config.json maps "
                         f"AutoModel to {(config.tower_config.get('auto_map') or {}).get('AutoModel')!r}); it is "
                         "loaded only with trust_remote_code=True, after you have read that code")


def _tower_classes(config):
    """(config class, model class): transformers' own, or, trusted, the tower's remote code."""
    from .vision_tower_transformers import needs_remote_code

    cfg = config.tower_config
    if needs_remote_code(cfg):
        _refuse_remote_code(config)
        from transformers.dynamic_module_utils import get_class_from_dynamic_module

        auto_map = cfg.get("auto_map") or {}
        return tuple(get_class_from_dynamic_module(auto_map[key], config.transformers_model)
                     for key in ("AutoConfig", "AutoModel"))
    from transformers import CONFIG_MAPPING, AutoModel

    config_class = CONFIG_MAPPING[cfg["model_type"]]
    return config_class, AutoModel._model_mapping[config_class]


def position_limit(tower_config: dict) -> int | None:
    """The most tokens the tower's position embeddings hold (RoBERTa reserves ``pad_token_id + 1`` of them)."""
    limit = tower_config.get("max_position_embeddings")
    if not isinstance(limit, int):
        return None
    if tower_config.get("model_type") in ("roberta", "camembert", "xlm-roberta"):
        limit -= int(tower_config.get("pad_token_id", 1)) + 1
    return limit


class TransformersMoleculeTower(nn.Module):
    """A transformers text encoder behind the molecule-tower signature."""

    def __init__(self, model: nn.Module, config):
        super().__init__()
        self.model = model
        self.pooling = config.token_pooling
        self.concentration_encoding = (CloomeConcentrationEncoding(config) if config.concentration_encoding
                                       else None)
        self.num_features = int(config.tower_config["hidden_size"]) + config.num_concentration_features
        self.max_length = config.max_sequence_length

    def num_molecules(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> int:
        if input_ids.ndim != 2 or input_ids.is_floating_point():
            raise ValueError(f"input_ids must be a (batch, tokens) integer tensor, got {tuple(input_ids.shape)} "
                             f"{input_ids.dtype}")
        if tuple(attention_mask.shape) != tuple(input_ids.shape):
            raise ValueError(f"attention_mask must have the shape of input_ids {tuple(input_ids.shape)}, got "
                             f"{tuple(attention_mask.shape)}")
        if self.max_length is not None and input_ids.shape[1] > self.max_length:
            raise ValueError(f"input_ids hold {input_ids.shape[1]} tokens, more than the molecule tower's limit of "
                             f"{self.max_length}")
        return input_ids.shape[0]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                concentrations: torch.Tensor | None = None,
                output_hidden_states: bool = False) -> BaseModelOutputWithPooling:
        self.num_molecules(input_ids, attention_mask)
        out = self.model(input_ids=input_ids.long(), attention_mask=attention_mask,
                         output_hidden_states=output_hidden_states, return_dict=True)
        last = out.last_hidden_state
        mask = attention_mask.to(last.dtype).unsqueeze(-1)
        if self.pooling == "mean":
            pooled = (last * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        else:  # the first attended token (position 0 with right padding)
            first = attention_mask.long().argmax(dim=1)
            pooled = last[torch.arange(last.shape[0], device=last.device), first]
        pooled = with_dose(self.concentration_encoding, pooled, concentrations)
        return BaseModelOutputWithPooling(last_hidden_state=last, pooler_output=pooled,
                                          hidden_states=getattr(out, "hidden_states", None))


def _resolve(config) -> None:
    from .vision_tower_transformers import read_tower_json

    if not isinstance(config.transformers_model, str) or not config.transformers_model:
        raise ValueError("encoder='transformers' needs transformers_model, a local folder or Hub id of a text "
                         f"encoder, got {config.transformers_model!r}")
    if config.token_pooling not in TOKEN_POOLINGS:
        raise ValueError(f"token_pooling must be one of {TOKEN_POOLINGS}, got {config.token_pooling!r}")
    if config.tower_config is None or config.tower_config.get("_cloome_source") != config.transformers_model:
        try:
            tower_config, _ = read_tower_json(config.transformers_model, "config.json", required=True)
        except LookupError as err:
            raise ValueError(f"molecule tower {config.transformers_model!r} was not found: {err}") from None
        config.tower_config = dict(tower_config, _cloome_source=config.transformers_model)
        _refuse_remote_code(config)  # (a saved model's is refused when it is built, unless trusted then)
    if not isinstance(config.tower_config.get("hidden_size"), int):
        raise ValueError(f"the molecule tower {config.transformers_model!r} states no hidden_size in its config")
    limit = position_limit(config.tower_config)
    if config.max_sequence_length is None:
        config.max_sequence_length = limit
    elif limit is not None and config.max_sequence_length > limit:
        raise ValueError(f"max_sequence_length={config.max_sequence_length} exceeds what the molecule tower "
                         f"{config.transformers_model!r} can read ({limit} tokens)")


def _build(config, load_weights: bool) -> TransformersMoleculeTower:
    config_class, model_class = _tower_classes(config)
    fields = {k: v for k, v in config.tower_config.items() if k != "_cloome_source"}
    tower_config = config_class.from_dict(fields)
    if config._attn_implementation_internal is not None:  # chosen for the whole CloomeModel (attn_implementation=)
        tower_config._attn_implementation = config._attn_implementation_internal
    model = model_class(tower_config, add_pooling_layer=False) if _takes_pooling(model_class) \
        else model_class(tower_config)
    # Under a meta-device context the model is a skeleton with no storage, filled afterwards (from_pretrained of a
    # saved CloomeModel, or to_empty + init_weights): there is nothing to load the pretrained weights into.
    if load_weights and not torch.empty(0).is_meta:
        pretrained = model_class.from_pretrained(config.transformers_model,
                                                 trust_remote_code=config.trust_remote_code)
        missing, _ = model.load_state_dict(pretrained.state_dict(), strict=False)
        if missing:
            raise ValueError(f"the molecule tower {config.transformers_model!r} lacks weights {missing[:8]}")
        mark_initialised(model)
    return TransformersMoleculeTower(model, config)


def _takes_pooling(model_class) -> bool:
    import inspect

    return "add_pooling_layer" in inspect.signature(model_class.__init__).parameters


def _featurizer(config, tokenizer=None, **options):
    from transformers import AutoTokenizer

    from .featurization_tokens import TokenFeaturizer

    if tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(config.transformers_model,
                                                  trust_remote_code=config.trust_remote_code)
    keep = {k: v for k, v in options.items() if k in ("parallel_threshold", "num_workers", "canonicalize")}
    return TokenFeaturizer(tokenizer, max_length=config.max_sequence_length or tokenizer.model_max_length,
                           truncation=config.truncation, **keep)


def _problems(featurizer, config) -> list[str]:
    problems = []
    vocab = config.tower_config.get("vocab_size")
    if isinstance(vocab, int) and len(featurizer.tokenizer) > vocab:
        problems.append(f"the processor's tokenizer has {len(featurizer.tokenizer)} tokens but the molecule tower's "
                        f"embedding holds {vocab}")
    if config.max_sequence_length is not None and featurizer.max_length > config.max_sequence_length:
        problems.append(f"the processor allows {featurizer.max_length} tokens but the molecule tower reads at most "
                        f"{config.max_sequence_length}")
    if featurizer.truncation != config.truncation:
        problems.append(f"the processor's truncation={featurizer.truncation} differs from the model's "
                        f"truncation={config.truncation}")
    return problems


register_molecule_tower(MoleculeTowerKind(
    name="transformers",
    description="a transformers text encoder by folder or Hub id (RoBERTa-style chemical LMs; remote code with "
                "trust_remote_code=True), CLS or mean pooled",
    input_names=("input_ids", "attention_mask"),
    resolve=_resolve,
    build=_build,
    featurizer=_featurizer,
    check_featurizer=_problems,
))

__all__ = ["TOKEN_POOLINGS", "TransformersMoleculeTower", "position_limit"]
