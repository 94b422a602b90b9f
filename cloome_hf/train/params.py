"""Arguments of ``cloome train``: three dataclasses parsed by ``HfArgumentParser``, filled in from a recipe.

    cloome train --output_dir runs/demo                                  # embedded synthetic data, CPU
    accelerate launch -m cloome_hf.cli train --recipe bioactivity --dataset data/bray --output_dir runs/bio
    cloome train --config train.yaml --learning_rate 1e-4                # config file + CLI overrides

Every hyper-parameter left unset comes from ``--recipe`` (old spelling ``--preset``; a recipe of :mod:`cloome_hf.recipes`: ``retrieval``,
``zero-shot`` and ``bioactivity`` are the paper's, ``demo`` (default) is CPU-sized); the resolved values are
printed at start and saved in ``training_config.json``. The groups shared with the other commands (``--model``,
``--dataset``, the synthetic data, ``--output_dir``) are those of :mod:`cloome_hf.cli.arguments`; the classes here
extend them. The output folder ends up ``from_pretrained``-ready
(model, processor, model card; the best validation model in ``best/``), with checkpoints in ``checkpoints/``
(``--resume_from_checkpoint latest``), ``train_log.jsonl`` and ``all_results.json``.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from typing import Any

from ..configuration_cloome import CONCENTRATION_ENCODINGS
from ..losses import available_losses
from ..recipes import get_recipe, recipe_names
from ..cli.arguments import (CommandParser, DatasetArguments, ModelSourceArguments, ResumableOutputArguments,
                             SyntheticDataArguments, image_size_pair)
from ..cli.arguments import arg as argument_field
from ..safe_io import read_json

_FROM_RECIPE_HELP = " (default: from --recipe)"


def _field(default=None, help="", from_recipe=True, **kw):
    """:func:`cloome_hf.cli.arguments.arg`, whose help says when the recipe fills the value in."""
    return argument_field(default, help + (_FROM_RECIPE_HELP if from_recipe else ""), **kw)


@dataclass
class ModelArguments(ModelSourceArguments):
    """``--model`` (a saved CLOOME folder or Hub id, e.g. the converted published weights): start from it instead of
    a fresh model."""

    _argument_group_name = "model"

    backbone: str | None = _field(help="'cloome_resnet50', a timm model name, or a transformers model folder / Hub id "
                                       "(e.g. facebook/dinov2-giant; see cloome_hf.vision_towers)")
    channel_strategy: str | None = _field(help="how the tower sees the channels: stem, per_channel or channel_tokens",
                                          choices=["stem", "per_channel", "channel_tokens"])
    freeze_image_tower: bool | None = _field(help="freeze the image tower (kept in eval mode); the heads and the "
                                                  "per_channel pooling train")
    unfreeze_last: int = _field(0, help="with --freeze_image_tower: train the tower's last N blocks", from_recipe=False)
    bag_pooling: str | None = _field(help="with --bag_by well / molecule_dose: how a bag's site features are pooled "
                                          "(default mean)", choices=["mean", "attention"])
    tower_preprocessing: str | None = _field(help="the tower's input convention as JSON (rescale_factor, image_mean, "
                                                  "image_std, input_size), for a tower whose files do not state it")
    trust_remote_code: bool = _field(False, help="allow a remote-code image or molecule tower (e.g. "
                                                 "recursionpharma/OpenPhenom) to run its own code", from_recipe=False)
    vision_layers: list[int] | None = _field(help="bottleneck blocks per ResNet stage", nargs="+")
    base_width: int | None = _field(help="ResNet stem width (64 published)")
    head_pool_size: int | None = _field(help="ResNet head pool window (7 published)")
    molecule_hidden_size: int | None = _field(help="width of the molecule MLP")
    molecule_num_layers: int | None = _field(help="hidden layers of the molecule MLP")
    projection_dim: int | None = _field(help="joint embedding dimension (512 published)")
    loss: str | None = _field(help="contrastive objective (cloome_hf.losses)",
                              choices=list(available_losses(include_aliases=True)))
    init_inverse_temperature: float | None = _field(help="initial logit multiplier: tau^-1 of the softmax losses "
                                                    "(14.3 retrieval, 30 bioactivity), SigLIP's t of the sigmoid "
                                                    "ones; unset in the recipe: the loss's own (14.3; 10 for siglip "
                                                    "and s2l)")
    learnable_temperature: bool = _field(True, help="train it (tau^-1 of the softmax losses clamped to [1, 100]; "
                                         "the sigmoid losses' t is not clamped)", from_recipe=False)
    hopfield_beta: float | None = _field(help="Hopfield retrieval beta of InfoLOOB (22 published)")
    cwcl_threshold: float | None = _field(help="loss cwcl: Tanimoto similarity from which two molecules are partial "
                                          "positives (default 0.7)", from_recipe=False)
    s2l_phenomic_model: str | None = _field(help="loss s2l: a saved CLOOME folder whose (frozen) image embeddings "
                                            "give the soft labels; default the trained model's own, detached",
                                            from_recipe=False)
    concentration_encoding: str | None = _field(help="encode the dose (the dataset's 'concentration' column) in "
                                                "the molecule tower; default none (the published architecture)",
                                                from_recipe=False, choices=list(CONCENTRATION_ENCODINGS))
    concentration_buckets: list[float] | None = _field(help="bucket edges (uM) of --concentration_encoding "
                                                       "one_hot (default 0.03 0.1 0.3 1 3 10)", from_recipe=False,
                                                       nargs="+")
    molecule_encoder: str | None = _field(help="the molecule tower: mlp (the published fingerprint MLP), gnn (a graph "
                                          "network over the molecular graph) or transformers (a chemical language "
                                          "model, --molecule_model); unset in the recipe: mlp",
                                          choices=["mlp", "gnn", "transformers"])
    gnn_layer: str | None = _field(help="--molecule_encoder gnn: message passing gin, gine or nnconv (default gine)",
                                   choices=["gin", "gine", "nnconv"])
    gnn_readout: str | None = _field(help="--molecule_encoder gnn: readout sum, mean or attention (default sum)",
                                     choices=["sum", "mean", "attention"])
    atom_features: list[str] | None = _field(help="--molecule_encoder gnn: atom features (default all of "
                                             "cloome_hf.featurization_graph.ATOM_FEATURES)", from_recipe=False, nargs="+")
    bond_features: list[str] | None = _field(help="--molecule_encoder gnn: bond features (default all)", from_recipe=False,
                                             nargs="+")
    molecule_model: str | None = _field(help="--molecule_encoder transformers: a text encoder folder or Hub id with "
                                        "its tokenizer (e.g. seyonec/ChemBERTa-zinc-base-v1; remote code such as "
                                        "ibm/MoLFormer-XL-both-10pct with --trust_remote_code true)")
    token_pooling: str | None = _field(help="--molecule_encoder transformers: cls or mean (default cls)",
                                       choices=["cls", "mean"])
    max_sequence_length: int | None = _field(help="--molecule_encoder transformers: most tokens per molecule "
                                             "(default the tower's limit); longer ones are refused unless "
                                             "--truncation true", from_recipe=False)
    truncation: bool = _field(False, help="--molecule_encoder transformers: cut molecules longer than the limit "
                              "(with a warning) instead of refusing them", from_recipe=False)
    fingerprint_kind: str | None = _field(help="molecule featurisation",
                                          choices=["morgan", "morgan_count", "rdkit_count", "morgan_rdkit_max"])
    fingerprint_size: int | None = _field(help="fingerprint length")


@dataclass
class DataArguments(DatasetArguments, SyntheticDataArguments):
    _argument_group_name = "data"

    validation_fraction: float = _field(0.2, help="fraction of molecules held out for validation when the "
                                        "dataset has no 'validation' split", from_recipe=False)
    split_seed: int = _field(0, help="seed of the molecule split", from_recipe=False)
    image_size: list[int] | None = _field(help="training image size [height width] (one value = square): a "
                                          "random crop window, or with random_resized_crop_scale the size the "
                                          "random resized crop of the whole site is resampled to", nargs="+")
    random_resized_crop_scale: list[float] | None = _field(help="area range of random resized crops of the "
                                                           "whole site (empty = plain random crop)", nargs="*")
    augment: bool | None = _field(help="random crops, flips and 90-degree rotations")
    include_controls: bool = _field(False, help="train on the negative controls (DMSO) too; by default they "
                                    "are left out of training and validation (sites without a structure are "
                                    "never trained on)", from_recipe=False)
    unique_molecules_per_batch: bool = _field(True, help="never put two sites of one molecule in a batch "
                                              "(they would be false negatives)", from_recipe=False)
    dataloader_num_workers: int = _field(0, help="DataLoader worker processes (persistent, one thread each)",
                                         from_recipe=False)
    bag_by: str | None = _field(help="the training unit: a site (default), or a bag of the sites of a well or of a "
                                     "molecule x dose (pooled by --bag_pooling; the batch size counts bags, and no "
                                     "two bags of one molecule share a batch)",
                                choices=["site", "well", "molecule_dose"])
    max_bag_sites: int | None = _field(help="with --bag_by: at most this many sites of a bag per epoch, drawn anew "
                                            "each epoch (default all)", from_recipe=False)
    image_features: str | None = _field(help="a store of `cloome embed --features backbone`: train on its cached "
                                             "tower features instead of running the frozen tower", from_recipe=False)
    augment_on_device: bool | None = _field(None, help="the loader hands over uint8 sites and the training step "
                                            "crops, flips, turns, resizes and normalises them on the accelerator "
                                            "(the same augmentation and seeds: the same pixels within float "
                                            "rounding); frees the loader's CPUs. Default: on when training on "
                                            "CUDA, off elsewhere; --no_augment_on_device or --augment_on_device "
                                            "false turns it off (the resolved value is in training_config.json)",
                                            from_recipe=False)


@dataclass
class TrainArguments(ResumableOutputArguments):
    _argument_group_name = "training"

    recipe: str | None = _field(help="recipe filling unset hyper-parameters (default 'demo')", from_recipe=False,
                                choices=list(recipe_names()), old=("--preset",))
    config: str | None = _field(help="YAML or JSON file of arguments; explicit CLI arguments override it",
                                from_recipe=False)
    per_device_train_batch_size: int | None = _field(help="batch per process (global = x processes)")
    per_device_eval_batch_size: int = _field(64, help="validation batch per process", from_recipe=False)
    learning_rate: float | None = _field(help="peak AdamW learning rate")
    weight_decay: float | None = _field(help="decoupled weight decay of parameters with >= 2 dims")
    adam_beta1: float | None = _field(help="AdamW beta1")
    adam_beta2: float | None = _field(help="AdamW beta2")
    adam_epsilon: float | None = _field(help="AdamW epsilon")
    max_grad_norm: float = _field(0.0, help="clip the gradient norm (0 = no clipping)", from_recipe=False)
    num_train_epochs: int | None = _field(help="epochs (ignored when --max_steps > 0)")
    max_steps: int = _field(-1, help="total optimiser steps (overrides epochs when > 0)", from_recipe=False)
    warmup_steps: int | None = _field(help="linear warm-up steps")
    restart_epochs: int | None = _field(help="cosine hard restart every N epochs after warm-up (0 = none)")
    mixed_precision: str | None = _field(help="'no', 'fp16' or 'bf16' (default: accelerate config)",
                                         from_recipe=False, choices=["no", "fp16", "bf16"])
    gradient_checkpointing: bool = _field(False, help="recompute activations in backward", from_recipe=False)
    torch_compile: bool = _field(False, help="torch.compile the model", from_recipe=False)
    channels_last: bool = _field(False, help="channels-last memory format (faster convs on GPU)", from_recipe=False)
    sync_batchnorm: bool = _field(False, help="batch-norm statistics over the global batch", from_recipe=False)
    seed: int = _field(42, help="seed of initialisation, data order and augmentation", from_recipe=False)
    logging_steps: int = _field(10, help="log every N steps", from_recipe=False)
    eval_steps: int = _field(0, help="validate every N steps (0 = every epoch) and at the end", from_recipe=False)
    save_steps: int = _field(0, help="checkpoint every N steps (0 = every epoch) and at the end", from_recipe=False)
    save_total_limit: int = _field(2, help="checkpoints to keep (0 = all)", from_recipe=False)
    resume_from_checkpoint: str | None = _field(help="checkpoint folder, or 'latest' in output_dir", from_recipe=False)
    allow_changed_settings: bool = _field(False, help="resume although the batch size, schedule, recipe, data or "
                                          "model differ from the checkpoint's (refused otherwise)", from_recipe=False)
    report_to: str = _field("none", help="accelerate trackers: tensorboard, trackio, wandb, all or none",
                            from_recipe=False)
    audit_log: bool = _field(False, help="write each process's sample ids per step and a final parameter "
                             "digest to output_dir/audit/ (checks data sharding and replica consistency)",
                             from_recipe=False)


ARGUMENT_CLASSES = (ModelArguments, DataArguments, TrainArguments)


def _read_config_file(path: str) -> dict[str, Any]:
    if not path.endswith((".yaml", ".yml")):
        return read_json(path, "training config file")
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            values = yaml.safe_load(f) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise ValueError(f"cannot read the training config file {path}: {err}") from err
    if not isinstance(values, dict):
        raise ValueError(f"config file {path!r} must hold a mapping of argument names to values")
    return values


#: ``cloome train``'s own defaults of shared fields: the embedded synthetic data, sized for the demo recipe.
TRAIN_DEFAULTS = {"dataset": "synthetic", "synthetic_molecules": 1200, "synthetic_sites_per_molecule": 2}


def parse_args(argv: list[str] | None = None):
    """``(model_args, data_args, train_args, recipe_values_used)`` with every recipe field resolved."""
    parser = CommandParser("train", ARGUMENT_CLASSES, description=__doc__)
    parser.set_defaults(**TRAIN_DEFAULTS)
    argv = _boolean_flags(parser.new_spellings(list(sys.argv[1:] if argv is None else argv)))
    config_path = _config_path(argv)
    if config_path:
        values = {parser.old_spellings.get(f"--{k}", f"--{k}")[2:]: v for k, v in _read_config_file(config_path).items()}
        known = {f.name for cls in ARGUMENT_CLASSES for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"config file {config_path!r} has unknown arguments {unknown}")
        parser.set_defaults(**values)
    model_args, data_args, train_args = parser.parse_groups(argv)
    if not train_args.output_dir:
        raise ValueError("--output_dir is required")
    recipe = get_recipe(train_args.recipe).values()
    used = {}
    for args in (model_args, data_args, train_args):
        for name, value in recipe.items():
            if hasattr(args, name) and getattr(args, name) is None:
                setattr(args, name, value)
                used[name] = value
    if data_args.image_size is not None:
        data_args.image_size = list(image_size_pair(data_args.image_size))
    data_args.synthetic_image_size = list(image_size_pair(data_args.synthetic_image_size, "--synthetic_image_size"))
    if data_args.bag_by not in (None, "site") and model_args.bag_pooling is None:
        model_args.bag_pooling = "mean"
    return model_args, data_args, train_args, used


#: Booleans whose default is decided at run time (``None`` until then). ``HfArgumentParser`` gives an optional
#: boolean neither the bare ``--NAME`` form nor ``--no_NAME``; :func:`_boolean_flags` spells both out.
NEGATABLE_FLAGS = ("augment_on_device",)


def _boolean_flags(argv: list[str]) -> list[str]:
    """``--NAME`` (without a value) -> ``--NAME true`` and ``--no_NAME`` -> ``--NAME false``, for
    :data:`NEGATABLE_FLAGS`."""
    out = []
    for i, arg in enumerate(argv):
        name = arg[5:] if arg.startswith("--no_") else arg[2:] if arg.startswith("--") else None
        if name not in NEGATABLE_FLAGS:
            out.append(arg)
        elif arg.startswith("--no_"):
            out += [f"--{name}", "false"]
        else:
            has_value = i + 1 < len(argv) and not argv[i + 1].startswith("-")
            out += [arg] if has_value else [arg, "true"]
    return out


def resolve_augment_on_device(requested: bool | None, device_type: str) -> bool:
    """``--augment_on_device`` as the run uses it: what was asked, else on for a CUDA device (the accelerator
    augments a batch in a fraction of the loader's CPU time, and the loader hands over a quarter of the bytes),
    off elsewhere (on the CPU the loader's workers are the parallel part)."""
    return (device_type == "cuda") if requested is None else bool(requested)


def _config_path(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return None


def resolved_arguments(model_args, data_args, train_args) -> dict[str, Any]:
    """All arguments as one JSON-ready dict (what ``training_config.json`` records)."""
    return {k: v for args in (model_args, data_args, train_args) for k, v in dataclasses.asdict(args).items()}


__all__ = ["ARGUMENT_CLASSES", "NEGATABLE_FLAGS", "DataArguments", "ModelArguments", "TrainArguments",
           "parse_args", "resolve_augment_on_device", "resolved_arguments"]
