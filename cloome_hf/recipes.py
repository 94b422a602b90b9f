"""The registry of CLOOME recipes: one record per published (or demo) recipe, as timm's ``default_cfgs``.

A :class:`Recipe` holds everything that defines a recipe in one place: the model (architecture, objective,
molecule featurisation), the training hyper-parameters, the processor crop the published weights are used with,
the upstream checkpoint it converts from and the model-card text. Training (``cloome train --recipe``),
conversion (``cloome convert --recipe``) and the model cards all read these records.

    >>> from cloome_hf.recipes import get_recipe, recipe_names
    >>> recipe_names()
    ('bioactivity', 'cellclip-style', 'chemberta-style', 'demo', 'molphenix-style', 'retrieval', 'vit-finetune',
     'zero-shot')
    >>> get_recipe("bioactivity").model["loss"]
    'infoloob'

Values come from the paper (Sanchez-Fernandez et al. 2023, Methods) where it states them; the learning rate and
Adam betas/eps are the upstream code's RN50 defaults (ml-jku/cloome ``src/training/params.py``), and the
retrieval model's epoch count is not stated, so it reuses the bioactivity model's 63. ``demo`` is sized for the
embedded synthetic data on a laptop CPU.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping

from .channels import SITE_SIZE


@dataclass(frozen=True)
class Recipe:
    """One recipe.

    Args:
        name: registry key (``--recipe`` value).
        description: what the recipe is for, as the model card says it.
        model: architecture and objective, in the names of ``cloome train``'s model arguments (``backbone``,
            ``vision_layers``, ``base_width``, ``head_pool_size``, ``molecule_hidden_size``,
            ``molecule_num_layers``, ``projection_dim``, ``loss``, ``init_inverse_temperature`` (``None``: the
            loss's own initial scale, see :class:`~cloome_hf.losses.RegisteredLoss`), ``hopfield_beta``,
            ``fingerprint_kind``, ``fingerprint_size``).
        training: optimisation and augmentation, in the names of ``cloome train``'s arguments.
        inference_crop: ``(height, width)`` of the processor's centre crop for the published weights
            (``None``: the training image size, as for models trained with this package).
        checkpoint: file name of the upstream checkpoint (Hub repo ``anasanchezf/cloome``) the recipe converts.
    """

    name: str
    description: str
    model: Mapping[str, Any]
    training: Mapping[str, Any]
    inference_crop: tuple[int, int] | None = None
    checkpoint: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "model", MappingProxyType(dict(self.model)))
        object.__setattr__(self, "training", MappingProxyType(dict(self.training)))

    def values(self) -> dict[str, Any]:
        """Every hyper-parameter of the recipe in one flat dict (model and training arguments)."""
        return {**self.model, **self.training}


_RECIPES: dict[str, Recipe] = {}


def register_recipe(recipe: Recipe) -> Recipe:
    """Add ``recipe`` to the registry; a name can be registered once."""
    if recipe.name in _RECIPES:
        raise ValueError(f"a recipe named {recipe.name!r} is already registered")
    _RECIPES[recipe.name] = recipe
    return recipe


def get_recipe(name: str | None) -> Recipe:
    """The recipe ``name`` (``None`` = ``demo``); ``ValueError`` naming the registered ones otherwise."""
    name = name or "demo"
    if name not in _RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of {sorted(_RECIPES)}")
    return _RECIPES[name]


def recipe_names() -> tuple[str, ...]:
    return tuple(sorted(_RECIPES))


_PUBLISHED_MODEL = dict(
    backbone="cloome_resnet50", vision_layers=[3, 4, 6, 3], base_width=64, head_pool_size=7,
    molecule_hidden_size=1024, molecule_num_layers=4, projection_dim=512, hopfield_beta=22.0,
)
_PUBLISHED_TRAINING = dict(
    per_device_train_batch_size=256, learning_rate=5e-4, weight_decay=0.1, adam_beta1=0.9, adam_beta2=0.999,
    adam_epsilon=1e-8, warmup_steps=20_000, restart_epochs=7, num_train_epochs=63, augment=True,
)
_RETRIEVAL_MODEL = dict(_PUBLISHED_MODEL, loss="infonce", init_inverse_temperature=14.3,
                        fingerprint_kind="morgan_rdkit_max", fingerprint_size=8192)
_RETRIEVAL_TRAINING = dict(_PUBLISHED_TRAINING, image_size=[520, 520], random_resized_crop_scale=[])
_RETRIEVAL_FILE = "cloome-retrieval-zero-shot.pt"

register_recipe(Recipe(
    name="retrieval",
    description="the published retrieval / zero-shot model (`cloome-retrieval-zero-shot.pt`), set up for full "
                "520 x 696 sites and cross-modal retrieval",
    model=_RETRIEVAL_MODEL, training=_RETRIEVAL_TRAINING, inference_crop=SITE_SIZE, checkpoint=_RETRIEVAL_FILE,
))
register_recipe(Recipe(
    name="zero-shot",
    description="the published retrieval / zero-shot model (`cloome-retrieval-zero-shot.pt`), set up for "
                "520 x 520 centre crops, the zero-shot setting",
    model=_RETRIEVAL_MODEL, training=_RETRIEVAL_TRAINING, inference_crop=(520, 520), checkpoint=_RETRIEVAL_FILE,
))
register_recipe(Recipe(
    name="bioactivity",
    description="the published bioactivity model (`cloome-bioactivity.pt`), whose image embeddings are meant "
                "for activity prediction with a linear probe",
    model=dict(_PUBLISHED_MODEL, loss="infoloob", init_inverse_temperature=30.0, fingerprint_kind="morgan",
               fingerprint_size=1024),
    training=dict(_PUBLISHED_TRAINING, image_size=[320, 320], random_resized_crop_scale=[0.9, 1.0]),
    inference_crop=SITE_SIZE, checkpoint="cloome-bioactivity.pt",
))
register_recipe(Recipe(
    name="demo",
    description="the CPU-sized demo recipe: a small CLOOME ResNet trained on the embedded synthetic Cell Painting "
                "data in about two minutes",
    model=dict(backbone="cloome_resnet50", vision_layers=[1, 1, 1, 1], base_width=16, head_pool_size=2,
               molecule_hidden_size=256, molecule_num_layers=2, projection_dim=64, loss="infonce",
               init_inverse_temperature=None, hopfield_beta=22.0, fingerprint_kind="morgan",
               fingerprint_size=1024),
    training=dict(per_device_train_batch_size=32, learning_rate=2e-3, weight_decay=0.1, adam_beta1=0.9,
                  adam_beta2=0.999, adam_epsilon=1e-8, warmup_steps=20, restart_epochs=0, num_train_epochs=10,
                  augment=True, image_size=[64, 64], random_resized_crop_scale=[]),
))


# ---------------------------------------------------------------------------------- pretrained image towers
# Recipes after systems that use a pretrained tower instead of training the ResNet from scratch. Their towers are
# Hub ids (weights cannot be bundled); every model value a tower recipe leaves to the tower (vision_layers,
# base_width, head_pool_size) is the ResNet default and unused.
_TOWER_MODEL = dict(vision_layers=[3, 4, 6, 3], base_width=64, head_pool_size=7, molecule_hidden_size=1024,
                    molecule_num_layers=4, projection_dim=512, init_inverse_temperature=None, hopfield_beta=22.0,
                    fingerprint_kind="morgan", fingerprint_size=1024)
_FROZEN_TOWER_TRAINING = dict(per_device_train_batch_size=256, learning_rate=1e-4, weight_decay=0.1, adam_beta1=0.9,
                              adam_beta2=0.999, adam_epsilon=1e-8, warmup_steps=1000, restart_epochs=0,
                              num_train_epochs=50, augment=False, random_resized_crop_scale=[])

register_recipe(Recipe(
    name="cellclip-style",
    description="after CellCLIP (NeurIPS 2025): a frozen DINOv2 tower (pass `--backbone facebook/dinov2-giant`, the "
                "default) sees each Cell Painting channel alone, replicated to RGB (`per_channel`); a small "
                "transformer across the channel embeddings, tagged by channel name, pools them, and the pooling, "
                "the projection heads and the molecule MLP train with CWCL. Reproduces: the frozen per-channel "
                "DINOv2 features, cross-channel pooling and the CWCL objective; train on cached features with "
                "`cloome embed --features backbone` and `--image_features`. Does not reproduce: CellCLIP's text "
                "encoder for perturbation descriptions (the molecule side is CLOOME's fingerprint MLP), its exact "
                "pooling architecture and hyper-parameters, nor its reported numbers; the crop is a 224 px centre "
                "crop of the site (no resize).",
    model=dict(_TOWER_MODEL, backbone="facebook/dinov2-giant", channel_strategy="per_channel",
               freeze_image_tower=True, loss="cwcl"),
    training=dict(_FROZEN_TOWER_TRAINING, image_size=[224, 224]),
))
register_recipe(Recipe(
    name="molphenix-style",
    description="after MolPhenix (NeurIPS 2024): a frozen phenomics tower (pass `--backbone "
                "recursionpharma/OpenPhenom --trust_remote_code true`, remote code: read it first), the S2L loss "
                "and a one-hot dose encoding in the molecule tower. OpenPhenom takes any channel count as "
                "uint8 / 255 on 256 x 256 crops and ships no image processor, so the recipe states that convention "
                "(`tower_preprocessing`). Reproduces: the frozen phenomics embeddings, S2L with the model's own "
                "(detached) image embeddings as soft labels, dose conditioning, a graph-network molecule encoder "
                "(the `gnn` tower: GINE message passing over RDKit graphs, mean readout, the dose appended after "
                "it), and its well-level averaging: the training unit is a well, a bag of its sites whose features "
                "are averaged (`--bag_by well`, `bag_pooling` mean; no two wells of one molecule in a batch). Does "
                "not reproduce: MolPhenix's pretrained MolGPS graph model (its weights are not public: the graph "
                "tower trains from scratch here), Phenom-1 (not public), nor its reported numbers. OpenPhenom is "
                "channel-agnostic through its own remote code, which `channel_tokens` (written for transformers "
                "ViT / DINOv2 towers) does not wrap: the recipe runs it `per_channel`.",
    model=dict(_TOWER_MODEL, backbone="recursionpharma/OpenPhenom", channel_strategy="per_channel",
               freeze_image_tower=True, loss="s2l", concentration_encoding="one_hot", bag_pooling="mean",
               molecule_encoder="gnn",
               gnn_layer="gine", gnn_readout="mean", molecule_hidden_size=512, molecule_num_layers=5,
               tower_preprocessing=json.dumps({"rescale_factor": 1 / 255, "image_mean": None, "image_std": None,
                                               "input_size": [256, 256],
                                               "source": "the OpenPhenom model card (uint8 / 255, 256 x 256)"})),
    training=dict(_FROZEN_TOWER_TRAINING, image_size=[256, 256], bag_by="well"),
))
register_recipe(Recipe(
    name="chemberta-style",
    description="CLOOME's image tower with a chemical language model as the molecule encoder: a RoBERTa-style "
                "ChemBERTa (pass `--molecule_model seyonec/ChemBERTa-zinc-base-v1`, the default, or e.g. "
                "`DeepChem/ChemBERTa-77M-MLM`; `ibm/MoLFormer-XL-both-10pct` is remote code: add "
                "`--trust_remote_code true` after reading it) reads RDKit's canonical SMILES, its first (CLS) "
                "token is projected into the joint space, and the whole language model fine-tunes with InfoNCE "
                "at a low learning rate. Reproduces: the usual fine-tuning of a pretrained SMILES encoder with "
                "its tokenizer, saved beside the model. Does not reproduce any published model or number (CellCLIP "
                "encodes perturbation descriptions, not SMILES, with its BERT); molecules longer than the "
                "tower's 512 tokens are refused unless `--truncation true`.",
    model=dict(_TOWER_MODEL, backbone="cloome_resnet50", vision_layers=[3, 4, 6, 3], channel_strategy="stem",
               freeze_image_tower=False, loss="infonce", molecule_encoder="transformers",
               molecule_model="seyonec/ChemBERTa-zinc-base-v1", token_pooling="cls"),
    training=dict(_FROZEN_TOWER_TRAINING, per_device_train_batch_size=128, learning_rate=5e-5, augment=True,
                  num_train_epochs=30, image_size=[520, 520]),
))
register_recipe(Recipe(
    name="vit-finetune",
    description="a pretrained ViT fine-tuned end to end on Cell Painting (pass e.g. `--backbone "
                "google/vit-base-patch16-224-in21k` or `facebook/dinov2-base`): the patch embedding is averaged "
                "from the RGB weights onto the site's channels (`stem`), and the whole tower trains with InfoNCE "
                "at a low learning rate. Reproduces: the usual fine-tuning of an ImageNet ViT on multi-channel "
                "images (averaged stem). Does not reproduce any published model or number: it is the baseline "
                "between CLOOME's from-scratch ResNet and the frozen-tower recipes. Augmentation is on (random crops, flips, "
                "rotations), so it cannot train on cached features.",
    model=dict(_TOWER_MODEL, backbone="google/vit-base-patch16-224-in21k", channel_strategy="stem",
               freeze_image_tower=False, loss="infonce"),
    training=dict(_FROZEN_TOWER_TRAINING, per_device_train_batch_size=128, learning_rate=3e-5, augment=True,
                  num_train_epochs=20, image_size=[224, 224]),
))


#: Written by ``cloome train`` next to the saved model: the resolved arguments and the recipe they came from.
TRAINING_CONFIG_FILE = "training_config.json"


def read_training_config(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The ``training_config.json`` of a saved model folder, ``None`` when it has none; a malformed file is a
    ``ValueError`` naming it."""
    from .safe_io import read_json

    path = os.path.join(os.fspath(folder), TRAINING_CONFIG_FILE)
    return read_json(path, "training configuration") if os.path.isfile(path) else None


#: ``cloome train`` argument -> ``CloomeMoleculeConfig`` field, for the molecule tower.
_MOLECULE_TOWER_ARGUMENTS = {"molecule_encoder": "encoder", "gnn_layer": "gnn_layer", "gnn_readout": "gnn_readout",
                             "atom_features": "atom_features", "bond_features": "bond_features",
                             "molecule_model": "transformers_model", "token_pooling": "token_pooling",
                             "max_sequence_length": "max_sequence_length", "truncation": "truncation"}


def molecule_tower_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """The molecule-tower fields of a ``CloomeMoleculeConfig`` from ``cloome train``'s argument values (those set)."""
    out = {field: values[name] for name, field in _MOLECULE_TOWER_ARGUMENTS.items() if values.get(name) is not None}
    if values.get("trust_remote_code"):
        out["trust_remote_code"] = True
    return out


def processor_settings(values: Mapping[str, Any], crop_size) -> dict[str, Any]:
    """The image-processor and featuriser keyword arguments of a recipe's (possibly overridden) model values:
    the published preprocessing (16 -> 8 bit, ``x / m - 1`` with the training-set channel means) with a centre
    crop to ``crop_size`` (``(height, width)`` or ``{"height", "width"}``), and ``fingerprint_kind`` /
    ``fingerprint_size`` fingerprints."""
    from .channels import CHANNELS, CLOOME_CHANNEL_MEAN, DEFAULT_CLIP_FRACTION, DEFAULT_INTENSITY_SCALE

    if not isinstance(crop_size, Mapping):
        crop_size = {"height": int(crop_size[0]), "width": int(crop_size[1])}
    image = {
        "channel_order": list(CHANNELS), "do_rescale_to_uint8": True, "intensity_clip_fraction": DEFAULT_CLIP_FRACTION,
        "intensity_scale": DEFAULT_INTENSITY_SCALE, "do_center_crop": True, "crop_size": dict(crop_size),
        "do_normalize": True, "image_mean": list(CLOOME_CHANNEL_MEAN), "image_std": list(CLOOME_CHANNEL_MEAN),
    }
    featurizer = {"kind": values["fingerprint_kind"], "fingerprint_size": int(values["fingerprint_size"])}
    return {"image_processor": image, "featurizer": featurizer}


def recipe_processor(values: Mapping[str, Any], crop_size, vision_config=None):
    """The :class:`~cloome_hf.CloomeProcessor` of a recipe's model values (:func:`processor_settings`), the one
    ``cloome train`` saves with a model and ``cloome convert`` with the published weights. ``vision_config``: a
    pretrained tower's, whose recorded input convention the image processor then follows
    (:func:`~cloome_hf.vision_towers.tower_image_processor`). A molecule tower other than the fingerprint MLP
    (``molecule_encoder``) gets the featuriser its config asks for (a graph schema, a tokenizer)."""
    from .featurization_cloome import MoleculeFeaturizer
    from .image_processing_cloome import CloomeImageProcessor
    from .processing_cloome import CloomeProcessor

    settings = processor_settings(values, crop_size)
    if vision_config is not None:
        from .vision_towers import tower_image_processor

        image_processor = tower_image_processor(vision_config, crop_size=settings["image_processor"]["crop_size"])
    else:
        image_processor = CloomeImageProcessor(**settings["image_processor"])
    if (values.get("molecule_encoder") or "mlp") != "mlp":
        from .molecule_tower_kinds import get_molecule_tower

        molecule = model_config(values, crop_size_pair(crop_size)).molecule_config
        featurizer = get_molecule_tower(molecule.encoder).featurizer(molecule)
    else:
        featurizer = MoleculeFeaturizer(**settings["featurizer"])
    return CloomeProcessor(image_processor=image_processor, featurizer=featurizer)


def crop_size_pair(crop_size) -> list[int]:
    """``[height, width]`` of ``(height, width)`` or ``{"height", "width"}``."""
    if isinstance(crop_size, Mapping):
        return [int(crop_size["height"]), int(crop_size["width"])]
    return [int(crop_size[0]), int(crop_size[1])]


def model_config(values: Mapping[str, Any], image_size, num_channels: int = 5):
    """The :class:`~cloome_hf.CloomeConfig` of a recipe's (possibly overridden) model values, with the optional
    ``cwcl_threshold``, ``concentration_encoding`` and ``concentration_buckets`` of ``cloome train``."""
    from .configuration_cloome import CloomeConfig

    inverse_temperature = values["init_inverse_temperature"]
    optional = {k: values[k] for k in ("cwcl_threshold",) if values.get(k) is not None}
    tower = {k: values[k] for k in ("channel_strategy", "tower_preprocessing", "trust_remote_code", "bag_pooling")
             if values.get(k) is not None}
    if isinstance(tower.get("tower_preprocessing"), str):  # from the command line: JSON
        tower["tower_preprocessing"] = json.loads(tower["tower_preprocessing"])
    return CloomeConfig(
        vision_config=dict(backbone=values["backbone"], layers=list(values["vision_layers"]),
                           base_width=values["base_width"], head_pool_size=values["head_pool_size"],
                           image_size=list(image_size), num_channels=num_channels, **tower),
        molecule_config=dict(fingerprint_size=values["fingerprint_size"],
                             hidden_size=values["molecule_hidden_size"],
                             num_hidden_layers=values["molecule_num_layers"],
                             concentration_encoding=values.get("concentration_encoding"),
                             concentration_buckets=values.get("concentration_buckets"),
                             **molecule_tower_values(values)),
        projection_dim=values["projection_dim"], loss=values["loss"],
        logit_scale_init_value=None if inverse_temperature is None else math.log(inverse_temperature),
        learnable_logit_scale=values.get("learnable_temperature", True), hopfield_beta=values["hopfield_beta"],
        **optional,
    )


__all__ = ["TRAINING_CONFIG_FILE", "Recipe", "get_recipe", "model_config", "processor_settings", "read_training_config",
           "recipe_names", "recipe_processor", "register_recipe"]
