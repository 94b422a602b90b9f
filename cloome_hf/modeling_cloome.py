"""CLOOME: a Cell Painting image encoder and a molecule encoder trained into one embedding space.

The image tower ``cloome_resnet50`` reproduces the published CLOOME ResNet-50 layer for layer so that the
published checkpoints convert without loss: no strided convolutions (average pools do the downsampling)
and a head that average-pools 7x7 windows with stride 1 and then averages what remains. Any timm model can
replace it. The molecule tower is an MLP over a fingerprint vector.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.utils import ModelOutput

from .configuration_cloome import CLOOME_RESNET50, CloomeConfig, CloomeMoleculeConfig, CloomeVisionConfig
from .losses import cloob_loss, infonce_loss

MAX_LOGIT_SCALE = math.log(100.0)


@dataclass
class CloomeOutput(ModelOutput):
    """Output of :class:`CloomeModel`.

    Args:
        loss: contrastive loss (``return_loss=True``), a scalar.
        logits_per_image: ``(n_images, n_molecules)`` cosine similarities scaled by tau^-1.
        logits_per_molecule: ``(n_molecules, n_images)``, the transpose.
        image_embeds: ``(n_images, projection_dim)`` L2-normalised image embeddings.
        molecule_embeds: ``(n_molecules, projection_dim)`` L2-normalised molecule embeddings.
    """

    loss: torch.Tensor | None = None
    logits_per_image: torch.Tensor | None = None
    logits_per_molecule: torch.Tensor | None = None
    image_embeds: torch.Tensor | None = None
    molecule_embeds: torch.Tensor | None = None


def resnet_output_size(size: int) -> int:
    """Side length of the ``cloome_resnet50`` feature map for an input side of ``size`` pixels."""
    size = (size + 2 * 3 - 7) // 2 + 1  # stem conv 7x7, stride 2, padding 3
    size = (size + 2 * 1 - 3) // 2 + 1  # max-pool 3x3, stride 2, padding 1
    for _ in range(3):  # AvgPool2d(2) in stages 2-4
        size //= 2
    return size


def resnet_min_input_size(head_pool_size: int) -> int:
    """Smallest input side whose feature map still fits the head's ``head_pool_size`` window."""
    size = 1
    while resnet_output_size(size) < head_pool_size:
        size += 1
    return size


def cloome_head_pool(feature_map: torch.Tensor, window: int) -> torch.Tensor:
    """The published CLOOME head: average ``window`` x ``window`` patches with stride 1, then average the patches.

    Border positions fall into fewer patches than central ones, so this is a centre-weighted mean, not global
    average pooling; it must be kept for the published weights. ``(N, C, H, W)`` -> ``(N, C)``.
    """
    return F.avg_pool2d(feature_map, kernel_size=window, stride=1).mean(dim=(2, 3))


class CloomeBottleneck(GradientCheckpointingLayer):
    """Anti-aliased bottleneck: ``relu(bn3(conv3(pool(relu(bn2(conv2(relu(bn1(conv1 x)))))))) + shortcut(x))``.

    The 3x3 convolution keeps stride 1; an ``AvgPool2d(stride)`` downsamples instead, in the main path and
    in the shortcut. Input ``(N, in_channels, H, W)``, output ``(N, 4 * planes, H / stride, W / stride)``.
    """

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1):
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride > 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                OrderedDict(
                    pool=nn.AvgPool2d(stride) if stride > 1 else nn.Identity(),
                    conv=nn.Conv2d(in_channels, out_channels, 1, bias=False),
                    bn=nn.BatchNorm2d(out_channels),
                )
            )

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(hidden_states)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.avgpool(out)))
        shortcut = hidden_states if self.downsample is None else self.downsample(hidden_states)
        return self.relu(out + shortcut)


class CloomeResNet(nn.Module):
    """The published CLOOME ResNet trunk (without its final linear layer, which is ``visual_projection``).

    Input ``(N, num_channels, H, W)``; output ``(N, 32 * base_width)`` pooled features (2048 for ResNet-50).
    """

    def __init__(self, config: CloomeVisionConfig):
        super().__init__()
        width = config.base_width
        self.head_pool_size = config.head_pool_size
        self.min_input_size = resnet_min_input_size(config.head_pool_size)
        self.conv1 = nn.Conv2d(config.num_channels, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        in_channels = width
        for stage, num_blocks in enumerate(config.layers):
            planes, stride = width * 2**stage, 1 if stage == 0 else 2
            blocks = [CloomeBottleneck(in_channels, planes, stride)]
            in_channels = planes * CloomeBottleneck.expansion
            blocks += [CloomeBottleneck(in_channels, planes) for _ in range(num_blocks - 1)]
            self.add_module(f"layer{stage + 1}", nn.Sequential(*blocks))
        self.num_features = in_channels

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        height, width = pixel_values.shape[-2:]
        if min(height, width) < self.min_input_size:
            raise ValueError(
                f"cloome_resnet50 with head_pool_size={self.head_pool_size} needs images of at least "
                f"{self.min_input_size}x{self.min_input_size} pixels, got {height}x{width}"
            )
        hidden = self.maxpool(self.relu(self.bn1(self.conv1(pixel_values))))
        hidden = self.layer4(self.layer3(self.layer2(self.layer1(hidden))))
        return cloome_head_pool(hidden, self.head_pool_size)


def build_vision_backbone(config: CloomeVisionConfig) -> nn.Module:
    """The image trunk named by ``config.backbone``; it has ``num_features`` and returns ``(N, num_features)``."""
    if config.backbone == CLOOME_RESNET50:
        return CloomeResNet(config)
    import timm

    return timm.create_model(
        config.backbone, pretrained=config.timm_pretrained, in_chans=config.num_channels, num_classes=0
    )


class CloomeMoleculeBlock(nn.Module):
    """``relu(batch_norm(dense(x)))``: ``(N, in_features)`` -> ``(N, hidden_size)``."""

    def __init__(self, in_features: int, hidden_size: int):
        super().__init__()
        self.dense = nn.Linear(in_features, hidden_size)
        self.norm = nn.BatchNorm1d(hidden_size)
        self.activation = nn.ReLU()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.activation(self.norm(self.dense(hidden_states)))


class CloomeMoleculeEncoder(nn.Module):
    """MLP over a fingerprint: ``(N, fingerprint_size)`` -> ``(N, hidden_size)``."""

    def __init__(self, config: CloomeMoleculeConfig):
        super().__init__()
        sizes = [config.fingerprint_size] + [config.hidden_size] * config.num_hidden_layers
        self.layers = nn.ModuleList(CloomeMoleculeBlock(a, b) for a, b in zip(sizes[:-1], sizes[1:]))

    def forward(self, fingerprints: torch.Tensor) -> torch.Tensor:
        hidden = fingerprints
        for layer in self.layers:
            hidden = layer(hidden)
        return hidden


class CloomePreTrainedModel(PreTrainedModel):
    config_class = CloomeConfig
    base_model_prefix = "cloome"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["CloomeBottleneck", "CloomeMoleculeBlock"]

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
        elif isinstance(module, CloomeModel):
            init.constant_(module.logit_scale, self.config.logit_scale_init_value)


class CloomeModel(CloomePreTrainedModel):
    """CLOOME: image and molecule encoders projected into one ``projection_dim`` space.

    Example::

        >>> from cloome_hf import CloomeConfig, CloomeModel
        >>> model = CloomeModel(CloomeConfig())
        >>> out = model(pixel_values=images, fingerprints=fps, return_loss=True)  # images (N,5,H,W), fps (N,F)
    """

    def __init__(self, config: CloomeConfig):
        super().__init__(config)
        self.vision_model = build_vision_backbone(config.vision_config)
        self.visual_projection = nn.Linear(self.vision_model.num_features, config.projection_dim)
        self.molecule_model = CloomeMoleculeEncoder(config.molecule_config)
        self.molecule_projection = nn.Linear(config.molecule_config.hidden_size, config.projection_dim)
        self.logit_scale = nn.Parameter(
            torch.tensor(config.logit_scale_init_value), requires_grad=config.learnable_logit_scale
        )
        self.post_init()

    def _set_gradient_checkpointing(self, enable: bool = True, *args, **kwargs) -> None:
        super()._set_gradient_checkpointing(enable, *args, **kwargs)
        if hasattr(self.vision_model, "set_grad_checkpointing"):  # timm backbones
            self.vision_model.set_grad_checkpointing(enable)

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Project images into the joint space.

        Args:
            pixel_values: ``(N, num_channels, H, W)`` float tensor from :class:`CloomeImageProcessor`.

        Returns:
            ``(N, projection_dim)`` image features, **not** normalised.
        """
        expected = self.config.vision_config.num_channels
        if pixel_values.ndim != 4 or pixel_values.shape[1] != expected:
            raise ValueError(
                f"pixel_values must have shape (batch, {expected}, height, width), got {tuple(pixel_values.shape)}"
            )
        return self.visual_projection(self.vision_model(pixel_values))

    def get_molecule_features(self, fingerprints: torch.Tensor) -> torch.Tensor:
        """Project molecule fingerprints into the joint space.

        Args:
            fingerprints: ``(N, fingerprint_size)`` float tensor from :class:`MoleculeFeaturizer`.

        Returns:
            ``(N, projection_dim)`` molecule features, **not** normalised.
        """
        expected = self.config.molecule_config.fingerprint_size
        if fingerprints.ndim != 2 or fingerprints.shape[1] != expected:
            raise ValueError(
                f"fingerprints must have shape (batch, {expected}), got {tuple(fingerprints.shape)}"
            )
        if self.training and fingerprints.shape[0] == 1:
            raise ValueError("BatchNorm needs more than one molecule per batch in training mode, got a batch of 1")
        fingerprints = fingerprints.to(self.molecule_projection.weight.dtype)
        return self.molecule_projection(self.molecule_model(fingerprints))

    @torch.no_grad()
    def clamp_logit_scale(self) -> None:
        """Keep ln(1/tau) in [0, ln 100]; call after every optimiser step."""
        self.logit_scale.clamp_(0.0, MAX_LOGIT_SCALE)

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        fingerprints: torch.Tensor | None = None,
        return_loss: bool = False,
        **kwargs,
    ) -> CloomeOutput:
        """Embed images and/or molecules; with both, also their scaled similarities and optionally the loss.

        Args:
            pixel_values: ``(N, num_channels, H, W)`` images.
            fingerprints: ``(M, fingerprint_size)`` molecules; with ``return_loss`` row i matches image i.
            return_loss: compute ``config.loss`` over the (global, when distributed) batch.
        """
        if pixel_values is None and fingerprints is None:
            raise ValueError("pass pixel_values, fingerprints or both")
        image_embeds = molecule_embeds = logits_per_image = logits_per_molecule = loss = None
        if pixel_values is not None:
            image_embeds = F.normalize(self.get_image_features(pixel_values), dim=-1)
        if fingerprints is not None:
            molecule_embeds = F.normalize(self.get_molecule_features(fingerprints), dim=-1)
        inv_tau = self.logit_scale.exp()
        if image_embeds is not None and molecule_embeds is not None:
            logits_per_image = inv_tau * image_embeds @ molecule_embeds.T
            logits_per_molecule = logits_per_image.T
        if return_loss:
            if logits_per_image is None:
                raise ValueError("return_loss=True needs both pixel_values and fingerprints")
            if image_embeds.shape[0] != molecule_embeds.shape[0]:
                raise ValueError(
                    f"return_loss=True needs matched pairs, got {image_embeds.shape[0]} images and "
                    f"{molecule_embeds.shape[0]} molecules"
                )
            if self.config.loss == "infonce":
                loss = infonce_loss(image_embeds, molecule_embeds, inv_tau)
            else:
                loss = cloob_loss(image_embeds, molecule_embeds, inv_tau, self.config.hopfield_beta)
        return CloomeOutput(
            loss=loss,
            logits_per_image=logits_per_image,
            logits_per_molecule=logits_per_molecule,
            image_embeds=image_embeds,
            molecule_embeds=molecule_embeds,
        )


__all__ = ["CloomeModel", "CloomeOutput", "CloomePreTrainedModel", "CloomeResNet", "cloome_head_pool", "resnet_min_input_size"]
