"""CLOOME: a Cell Painting image encoder and a molecule encoder trained into one embedding space.

The image tower ``cloome_resnet50`` reproduces the published CLOOME ResNet-50 layer for layer so that the
published checkpoints convert without loss: no strided convolutions (average pools do the downsampling)
and a head that average-pools 7x7 windows with stride 1 and then averages what remains. Any timm model can
replace it. The molecule tower is an MLP over a fingerprint vector and, when the config asks for it, an encoding
of the dose (:class:`CloomeConcentrationEncoding`). The contrastive objective is ``config.loss``, one of the
registered losses of :mod:`cloome_hf.losses`; the sigmoid ones (siglip, s2l) add a ``logit_bias`` parameter.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.processing_utils import Unpack
from transformers.utils import ModelOutput, TransformersKwargs
from transformers.utils.generic import can_return_tuple

from .channels import channel_permutation
from .config_bounds import check_model_sizes
from .configuration_cloome import CloomeConfig, CloomeMoleculeConfig, CloomeVisionConfig  # noqa: F401
from .losses import contrastive_loss, get_loss
from .molecule_tower_kinds import build_molecule_model, select_molecule_inputs
from .molecule_tower_mlp import (  # noqa: F401  (re-exported: the published molecule tower's home was here)
    CloomeConcentrationEncoding, CloomeMoleculeBlock, CloomeMoleculeEncoder)
from .bag_pooling import BagPooling
from .vision_tower_channels import pool_tower_features
from .vision_tower_kinds import build_vision_model, without_pretrained_tower_weights
from .vision_tower_preprocessing import TowerNormalize
from .vision_tower_resnet import (  # noqa: F401  (re-exported: the published architecture's home was here)
    CloomeBottleneck, CloomeResNet, cloome_head_pool, resnet_min_input_size, resnet_output_size)
from .vision_tower_timm import timm_backbone_outputs  # noqa: F401  (re-exported)

# The transformers keyword arguments a CNN + MLP can honour; any other one is refused, not silently dropped.
SUPPORTED_KWARGS = frozenset({"output_hidden_states", "output_attentions"})


@dataclass
class CloomeOutput(ModelOutput):
    """Output of :class:`CloomeModel`.

    Args:
        loss: contrastive loss (``return_loss=True``), a scalar.
        logits_per_image: ``(n_images, n_molecules)`` cosine similarities times ``exp(logit_scale)`` (tau^-1), plus
            ``logit_bias`` for the sigmoid losses (as transformers' ``SiglipModel``: their sigmoid is a match
            probability).
        logits_per_molecule: ``(n_molecules, n_images)``, the transpose.
        image_embeds: ``(n_images, projection_dim)`` L2-normalised image embeddings.
        molecule_embeds: ``(n_molecules, projection_dim)`` L2-normalised molecule embeddings.
        vision_model_output: what :meth:`CloomeModel.get_image_features` returned (feature maps, and per-stage
            ``hidden_states`` with ``output_hidden_states=True``).
        molecule_model_output: what :meth:`CloomeModel.get_molecule_features` returned.
    """

    loss: torch.Tensor | None = None
    logits_per_image: torch.Tensor | None = None
    logits_per_molecule: torch.Tensor | None = None
    image_embeds: torch.Tensor | None = None
    molecule_embeds: torch.Tensor | None = None
    vision_model_output: BaseModelOutputWithPooling | None = None
    molecule_model_output: BaseModelOutputWithPooling | None = None

    def to_tuple(self) -> tuple:
        return tuple(v.to_tuple() if isinstance(v, ModelOutput) else v for v in self.values())


def build_vision_backbone(config: CloomeVisionConfig) -> nn.Module:
    """The image trunk named by ``config.backbone`` under its channel strategy, from the tower registry
    (:mod:`cloome_hf.vision_towers`); it has ``num_features`` (the pooled feature size)."""
    return build_vision_model(config)


def logit_bias_init(config: CloomeConfig) -> float | None:
    """Initial ``logit_bias`` of ``config.loss`` (``None``: the loss has none), the config's value if it sets one."""
    default = get_loss(config.loss).logit_bias_init
    if default is None:
        return None
    return float(default if config.logit_bias_init_value is None else config.logit_bias_init_value)


def _refuse_bad_weights(source, model: nn.Module) -> None:
    """A loaded model whose weights are not finite, or a local safetensors file whose tensor has an integer dtype
    where the model's is floating (transformers casts it silently), is a ``ValueError`` naming the tensor."""
    import glob

    from safetensors import safe_open

    from .finite import require_finite_tensors, require_float_dtypes

    own = {k: v.dtype for k, v in model.state_dict().items()}
    folder = str(source)
    for path in sorted(glob.glob(os.path.join(folder, "*.safetensors"))) if os.path.isdir(folder) else ():
        with safe_open(path, framework="pt") as f:
            dtypes = {k: f.get_slice(k).get_dtype() for k in f.keys()}
        require_float_dtypes(dtypes, path, own)
    require_finite_tensors(model.state_dict().items(), f"the model loaded from {source}")


class CloomePreTrainedModel(PreTrainedModel):
    config_class = CloomeConfig
    base_model_prefix = "cloome"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["CloomeBottleneck", "CloomeMoleculeBlock"]

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """``PreTrainedModel.from_pretrained``, refusing a checkpoint that does not fill the model exactly.

        transformers only logs missing weights (initialised at random) and unexpected ones; a CLOOME tower half
        random is a wrong model, so both are a ``ValueError`` naming the checkpoint and the weights. Shape
        mismatches pass only with ``ignore_mismatched_sizes=True``; ``output_loading_info=True`` returns
        ``(model, info)`` unchecked, for callers that inspect the loading themselves.

        The image tower is rebuilt from the config alone (its pretrained weights are in this checkpoint, so nothing
        is fetched); a remote-code tower needs ``trust_remote_code=True`` again.
        """
        trust_remote_code = bool(kwargs.pop("trust_remote_code", False))
        if trust_remote_code and kwargs.get("config") is None:
            config = cls.config_class.from_pretrained(pretrained_model_name_or_path,
                                                      **{k: kwargs[k] for k in ("revision", "token") if k in kwargs})
            config.vision_config.trust_remote_code = True
            config.molecule_config.trust_remote_code = True
            kwargs["config"] = config
        with without_pretrained_tower_weights():
            if kwargs.pop("output_loading_info", False):
                return super().from_pretrained(pretrained_model_name_or_path, *args, output_loading_info=True,
                                               **kwargs)
            model, info = super().from_pretrained(pretrained_model_name_or_path, *args, output_loading_info=True,
                                                  **kwargs)
        problems = {kind: sorted(map(str, info.get(kind) or ())) for kind in ("missing_keys", "unexpected_keys")}
        if not kwargs.get("ignore_mismatched_sizes"):
            problems["mismatched_keys"] = sorted(str(k[0]) for k in info.get("mismatched_keys") or ())
        problems = {kind: keys for kind, keys in problems.items() if keys}
        if problems or info.get("error_msgs"):
            detail = "; ".join(f"{kind.replace('_keys', '')} weights {keys[:8]}{' ...' if len(keys) > 8 else ''}"
                               f" ({len(keys)})" for kind, keys in problems.items())
            raise ValueError(f"the checkpoint {pretrained_model_name_or_path} does not match {cls.__name__}: "
                             f"{detail or '; '.join(map(str, info['error_msgs']))}")
        _refuse_bad_weights(pretrained_model_name_or_path, model)
        return model

    def save_pretrained(self, save_directory, *args, **kwargs):
        """``PreTrainedModel.save_pretrained``, refusing (before writing anything) a model with a NaN or infinite
        tensor, named: every model folder the package writes (training, convert, publish) passes here."""
        from .finite import require_finite_tensors

        require_finite_tensors(self.state_dict().items(), f"the model to save to {save_directory}")
        return super().save_pretrained(save_directory, *args, **kwargs)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Conv2d):
            init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)
            init.zeros_(module.num_batches_tracked)
        elif isinstance(module, nn.Linear):
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            bound = 1 / math.sqrt(module.in_features)
            init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, TowerNormalize):  # non-persistent: refilled from the config after loading
            init.copy_(module.mean, module.config_values("mean"))
            init.copy_(module.std, module.config_values("std"))
        elif isinstance(module, CloomeModel):
            init.constant_(module.logit_scale, self.config.logit_scale_init_value)
            if module.logit_bias is not None:
                init.constant_(module.logit_bias, logit_bias_init(self.config))


class CloomeModel(CloomePreTrainedModel):
    """CLOOME: image and molecule encoders projected into one ``projection_dim`` space.

    Example::

        >>> from cloome_hf import CloomeConfig, CloomeModel
        >>> model = CloomeModel(CloomeConfig())
        >>> out = model(pixel_values=images, fingerprints=fps, return_loss=True)  # images (N,5,H,W), fps (N,F)
        >>> features = model.get_image_features(images).pooler_output  # (N, projection_dim), not normalised
    """

    # The loss is a mean over the batch's pairs and ignores `num_items_in_batch`, so `Trainer` must scale it for
    # gradient accumulation itself.
    accepts_loss_kwargs = False

    def __init__(self, config: CloomeConfig):
        check_model_sizes(config)  # again: a config may have been changed since it was made
        super().__init__(config)
        self.vision_model = build_vision_backbone(config.vision_config)
        bags = config.vision_config.bag_pooling
        self.bag_pooling = None if bags is None else BagPooling(bags, self.vision_model.num_features)
        self.visual_projection = nn.Linear(self.vision_model.num_features, config.projection_dim)
        self.molecule_model = build_molecule_model(config.molecule_config)
        self.molecule_projection = nn.Linear(self.molecule_model.num_features, config.projection_dim)
        self.logit_scale = nn.Parameter(
            torch.tensor(config.logit_scale_init_value), requires_grad=config.learnable_logit_scale
        )
        # Only the sigmoid losses have a bias (SigLIP's b): the published architecture has no such parameter.
        bias = logit_bias_init(config)
        self.logit_bias = None if bias is None else nn.Parameter(torch.tensor(bias))
        self.post_init()

    def _set_gradient_checkpointing(self, enable: bool = True, *args, **kwargs) -> None:
        super()._set_gradient_checkpointing(enable, *args, **kwargs)
        timm_model = getattr(self.vision_model, "model", None)
        if hasattr(timm_model, "set_grad_checkpointing"):  # timm towers
            timm_model.set_grad_checkpointing(enable)

    def _output_hidden_states(self, kwargs: dict) -> bool:
        """``output_hidden_states`` from the call, else the config; refuse what the encoders cannot honour."""
        unknown = sorted(set(kwargs) - SUPPORTED_KWARGS)
        if unknown:
            raise TypeError(
                f"{type(self).__name__} got unexpected keyword argument(s) {unknown}; besides its inputs it accepts "
                f"{sorted(SUPPORTED_KWARGS | {'return_dict'})}"
            )
        if kwargs.get("output_attentions"):
            raise ValueError("output_attentions=True: CLOOME's encoders (a CNN and an MLP) have no attention layers")
        value = kwargs.get("output_hidden_states")
        return bool(self.config.output_hidden_states if value is None else value)

    @can_return_tuple
    def get_image_features(
        self, pixel_values: torch.Tensor | None = None, channel_names: list[str] | None = None,
        tower_features: torch.Tensor | None = None, bag_sizes: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs]
    ) -> tuple | BaseModelOutputWithPooling:
        """Project images into the joint space.

        Args:
            pixel_values: ``(N, C, H, W)`` float tensor from :class:`CloomeImageProcessor`, cast to the
                model's dtype (float32 processor output feeds a bf16/fp16 model).
            channel_names: the name of each of ``pixel_values``' channels, when they may not be in
                ``vision_config.channel_names``' order: they are re-ordered by name, and a missing channel is a
                ``ValueError`` naming it.
            tower_features: instead of ``pixel_values``, the frozen tower's cached per-site features
                (:func:`cloome_hf.vision_towers.tower_features`: ``(N, D)``, or ``(N, C, D)`` under
                ``per_channel``); only what is trained after the tower runs.
            bag_sizes: ``(B,)`` sites per bag, for a model with ``vision_config.bag_pooling``: the N sites are B
                bags one after the other, and each bag gets one feature (``pooler_output`` ``(B, projection_dim)``).
            output_hidden_states: also return the trunk's per-stage feature maps. ``return_dict=False``: a tuple.

        Returns:
            ``BaseModelOutputWithPooling``: ``pooler_output`` the ``(N, projection_dim)`` image features, **not**
            normalised; ``last_hidden_state`` the trunk's final feature map.
        """
        output_hidden_states = self._output_hidden_states(kwargs)
        if (pixel_values is None) == (tower_features is None):
            raise ValueError("pass either pixel_values or tower_features")
        if bag_sizes is not None and self.bag_pooling is None:
            raise ValueError("bag_sizes given, but this model pools no bags (vision_config.bag_pooling is None); "
                             "make the model with bag_pooling='mean' or 'attention'")
        if tower_features is not None:
            if not tower_features.is_floating_point():
                raise ValueError(f"tower_features must be a floating-point tensor, got {tower_features.dtype}")
            features = tower_features.to(self.visual_projection.weight.dtype)
            pooled = self._pool_bags(pool_tower_features(self.vision_model, features), bag_sizes)
            return BaseModelOutputWithPooling(last_hidden_state=features, pooler_output=self.visual_projection(pooled))
        if channel_names is not None:
            if pixel_values.ndim != 4 or pixel_values.shape[1] != len(channel_names):
                raise ValueError(f"channel_names names {len(channel_names)} channels but pixel_values has shape "
                                 f"{tuple(pixel_values.shape)}")
            pixel_values = pixel_values[:, channel_permutation(channel_names, self.config.vision_config.channel_names)]
        expected = self.config.vision_config.num_channels
        if pixel_values.ndim != 4 or pixel_values.shape[1] != expected:
            raise ValueError(
                f"pixel_values must have shape (batch, {expected}, height, width), got {tuple(pixel_values.shape)}"
            )
        if not pixel_values.is_floating_point():
            raise ValueError(f"pixel_values must be a floating-point tensor, got {pixel_values.dtype}")
        pixel_values = pixel_values.to(self.visual_projection.weight.dtype)
        outputs = self.vision_model(pixel_values, output_hidden_states=output_hidden_states)
        outputs.pooler_output = self.visual_projection(self._pool_bags(outputs.pooler_output, bag_sizes))
        return outputs

    def _pool_bags(self, features: torch.Tensor, bag_sizes: torch.Tensor | None) -> torch.Tensor:
        return features if bag_sizes is None else self.bag_pooling(features, bag_sizes)

    @can_return_tuple
    def get_molecule_features(
        self, fingerprints: torch.Tensor | None = None, concentrations: torch.Tensor | None = None, *,
        x: torch.Tensor | None = None, edge_index: torch.Tensor | None = None, edge_attr: torch.Tensor | None = None,
        batch: torch.Tensor | None = None, input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None, **kwargs: Unpack[TransformersKwargs],
    ) -> tuple | BaseModelOutputWithPooling:
        """Project molecules (and, for a dose-conditioned model, their doses) into the joint space.

        Args:
            fingerprints: ``(N, fingerprint_size)`` from :class:`MoleculeFeaturizer`, for the ``mlp`` tower.
            x, edge_index, edge_attr, batch: the molecular graphs (torch-geometric's batch layout, from
                :class:`CloomeProcessor`), for the ``gnn`` tower.
            input_ids, attention_mask: the tokenised SMILES, for the ``transformers`` tower.
            concentrations: ``(N,)`` doses in uM (NaN: unknown), required when
                ``config.molecule_config.concentration_encoding`` is set and refused when it is not (a model without
                dose conditioning would ignore them).
            output_hidden_states: also return the tower's intermediate states. ``return_dict=False``: a tuple.

        Exactly the inputs of ``molecule_config.encoder``'s tower must be given (``ValueError`` naming the others).

        Returns:
            ``BaseModelOutputWithPooling``: ``pooler_output`` the ``(N, projection_dim)`` molecule features, **not**
            normalised; ``last_hidden_state`` the tower's last states.
        """
        output_hidden_states = self._output_hidden_states(kwargs)
        inputs = select_molecule_inputs(self.config.molecule_config, dict(
            fingerprints=fingerprints, x=x, edge_index=edge_index, edge_attr=edge_attr, batch=batch,
            input_ids=input_ids, attention_mask=attention_mask))
        self._check_concentrations(concentrations, self.molecule_model.num_molecules(**inputs))
        outputs = self.molecule_model(**inputs, concentrations=concentrations,
                                      output_hidden_states=output_hidden_states)
        outputs.pooler_output = self.molecule_projection(outputs.pooler_output.to(self.molecule_projection.weight.dtype))
        return outputs

    def _check_concentrations(self, concentrations: torch.Tensor | None, num_molecules: int) -> None:
        encoding = self.config.molecule_config.concentration_encoding
        if encoding is None and concentrations is not None:
            raise ValueError("this model has no dose conditioning (molecule_config.concentration_encoding is None), "
                             "so it cannot use concentrations; leave them out")
        if encoding is not None and concentrations is None:
            raise ValueError(f"this model encodes the dose (concentration_encoding={encoding!r}): pass "
                             "concentrations (uM, NaN for unknown) with the fingerprints")
        if concentrations is not None and tuple(concentrations.shape) != (num_molecules,):
            raise ValueError(f"concentrations must have shape ({num_molecules},), one per molecule, got "
                             f"{tuple(concentrations.shape)}")

    @torch.no_grad()
    def clamp_logit_scale(self) -> None:
        """Keep ``logit_scale`` in its loss's range; call after every optimiser step.

        The softmax losses (infonce, cloob, cwcl) keep ln(1/tau) in [0, ln 100], as CLIP and CLOOME. The sigmoid
        losses (siglip, s2l) are not clamped, as in SigLIP's reference code and transformers' ``SiglipModel``:
        SigLIP training ends above CLIP's bound (see :mod:`cloome_hf.losses`).
        """
        bounds = get_loss(self.config.loss).logit_scale_range
        if bounds is not None:
            self.logit_scale.clamp_(*bounds)

    def _contrastive_loss(self, image_embeds: torch.Tensor, molecule_embeds: torch.Tensor,
                          fingerprints: torch.Tensor, phenomic_embeds: torch.Tensor | None) -> torch.Tensor:
        """``config.loss`` of the batch through the registry, given every input a registered loss may take."""
        if image_embeds.shape[0] != molecule_embeds.shape[0]:
            raise ValueError(
                f"return_loss=True needs matched pairs, got {image_embeds.shape[0]} images and "
                f"{molecule_embeds.shape[0]} molecules"
            )
        return contrastive_loss(
            self.config.loss, image_embeds, molecule_embeds, self.logit_scale, logit_bias=self.logit_bias,
            hopfield_beta=self.config.hopfield_beta, fingerprints=fingerprints, phenomic_embeds=phenomic_embeds,
            cwcl_threshold=self.config.cwcl_threshold,
        )

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        fingerprints: torch.Tensor | None = None,
        concentrations: torch.Tensor | None = None,
        phenomic_embeds: torch.Tensor | None = None,
        return_loss: bool | None = None,
        tower_features: torch.Tensor | None = None,
        x: torch.Tensor | None = None,
        edge_index: torch.Tensor | None = None,
        edge_attr: torch.Tensor | None = None,
        batch: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        bag_sizes: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple | CloomeOutput:
        """Embed images and/or molecules; with both, also their scaled similarities and optionally the loss.

        Args:
            pixel_values: ``(N, num_channels, H, W)`` images.
            fingerprints: ``(M, fingerprint_size)`` molecules; with ``return_loss`` row i matches image i.
            x, edge_index, edge_attr, batch / input_ids, attention_mask: the molecules for a ``gnn`` /
                ``transformers`` molecule tower instead (see :meth:`get_molecule_features`).
            concentrations: ``(M,)`` doses in uM, for a dose-conditioned model (see :meth:`get_molecule_features`).
            phenomic_embeds: ``(N, k)`` embeddings of the images from a frozen phenomics model, for the soft labels of
                ``loss="s2l"`` (default: this model's own image embeddings, detached). Only with ``return_loss``.
            return_loss: compute ``config.loss`` over the (global, when distributed) batch.
            tower_features: instead of ``pixel_values``, the frozen image tower's cached features of the images
                (see :meth:`get_image_features`).
            bag_sizes: ``(B,)`` sites per bag (see :meth:`get_image_features`); ``fingerprints`` then has one row
                per bag.
            output_hidden_states: fill ``vision_model_output.hidden_states`` / ``molecule_model_output.hidden_states``.
            return_dict: ``False`` (here or in the config) returns a tuple of the non-None fields.
        """
        molecules = {name: value for name, value in dict(
            fingerprints=fingerprints, x=x, edge_index=edge_index, edge_attr=edge_attr, batch=batch,
            input_ids=input_ids, attention_mask=attention_mask).items() if value is not None}
        if pixel_values is None and tower_features is None and not molecules:
            raise ValueError("pass pixel_values, fingerprints (or the molecule tower's inputs) or both")
        self._output_hidden_states(kwargs)  # refuse unknown keyword arguments before any work
        if phenomic_embeds is not None and not (return_loss and get_loss(self.config.loss).name == "s2l"):
            raise ValueError(f"phenomic_embeds are the soft-label inputs of loss 's2l' (with return_loss=True); "
                             f"this model's loss is {self.config.loss!r}")
        vision_outputs = molecule_outputs = image_embeds = molecule_embeds = None
        logits_per_image = logits_per_molecule = loss = None
        if pixel_values is not None or tower_features is not None:
            vision_outputs = self.get_image_features(pixel_values, tower_features=tower_features,
                                                     bag_sizes=bag_sizes, return_dict=True, **kwargs)
            image_embeds = F.normalize(vision_outputs.pooler_output, dim=-1)
        if molecules:
            molecule_outputs = self.get_molecule_features(concentrations=concentrations, return_dict=True, **molecules,
                                                          **kwargs)
            molecule_embeds = F.normalize(molecule_outputs.pooler_output, dim=-1)
        elif concentrations is not None:
            raise ValueError("concentrations are the doses of molecules: pass them with fingerprints (or the "
                             "molecule tower's inputs)")
        if image_embeds is not None and molecule_embeds is not None:
            logits_per_image = self.logit_scale.exp() * image_embeds @ molecule_embeds.T
            if self.logit_bias is not None:
                logits_per_image = logits_per_image + self.logit_bias
            logits_per_molecule = logits_per_image.T
        if return_loss:
            if logits_per_image is None:
                raise ValueError("return_loss=True needs both pixel_values and molecules (fingerprints, or the "
                                 "molecule tower's inputs)")
            loss = self._contrastive_loss(image_embeds, molecule_embeds, fingerprints, phenomic_embeds)
        return CloomeOutput(
            loss=loss,
            logits_per_image=logits_per_image,
            logits_per_molecule=logits_per_molecule,
            image_embeds=image_embeds,
            molecule_embeds=molecule_embeds,
            vision_model_output=vision_outputs,
            molecule_model_output=molecule_outputs,
        )


__all__ = [
    "CloomeConcentrationEncoding",
    "CloomeModel",
    "CloomeOutput",
    "CloomePreTrainedModel",
    "CloomeResNet",
    "cloome_head_pool",
    "resnet_min_input_size",
    "timm_backbone_outputs",
]
