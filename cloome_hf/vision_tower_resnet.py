"""The ``cloome_resnet50`` tower: the published CLOOME ResNet-50, layer for layer.

No strided convolutions (average pools do the downsampling) and a head that average-pools 7x7 windows with stride 1
and then averages what remains, so that the published checkpoints convert without loss. Its state-dict keys are
those of the published weights (``vision_model.conv1.weight`` ...), so this tower is used directly as
``CloomeModel.vision_model`` under the ``stem`` channel strategy, with no adapter around it.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPooling

from .configuration_cloome import CLOOME_RESNET50, CloomeVisionConfig
from .vision_tower_registry import VisionTowerKind, register_tower_kind


def resnet_output_size(size: int) -> int:
    """Side length of the ``cloome_resnet50`` feature map for an input side of ``size`` pixels."""
    size = (size + 2 * 3 - 7) // 2 + 1  # stem conv 7x7, stride 2, padding 3
    size = (size + 2 * 1 - 3) // 2 + 1  # max-pool 3x3, stride 2, padding 1
    for _ in range(3):  # AvgPool2d(2) in stages 2-4
        size //= 2
    return size


def resnet_min_input_size(head_pool_size: int) -> int:
    """Smallest input side whose feature map still fits the head's ``head_pool_size`` window.

    In closed form (a search would take as long as the window is large): the map side ``s // 8`` after the stem's
    two halvings needs ``8 w`` pixels, hence ``16 w - 1`` after the stem conv and ``32 w - 3`` at the input.
    """
    return max(1, 32 * head_pool_size - 3)


def resnet_parameter_count(layers, base_width: int, in_channels: int) -> int:
    """Parameters of :class:`CloomeResNet` (convolutions and batch norms), from its config alone."""
    width = base_width
    count = in_channels * width * 49 + 2 * width  # stem conv and its norm
    block_in = width
    for stage, num_blocks in enumerate(layers):
        planes = width * 2**stage
        out = 4 * planes
        per_block = planes * (9 * planes + 4 * planes) + 12 * planes  # conv2, conv3, three norms (2p, 2p, 8p)
        count += num_blocks * per_block + block_in * planes + out * planes * (num_blocks - 1)  # conv1 of each
        count += block_in * out + 2 * out  # the first block's shortcut (it always changes width or stride)
        block_in = out
    return count


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

    def __init__(self, config: CloomeVisionConfig, in_channels: int | None = None):
        super().__init__()
        width = config.base_width
        self.head_pool_size = config.head_pool_size
        self.min_input_size = resnet_min_input_size(config.head_pool_size)
        stem_channels = config.num_channels if in_channels is None else in_channels
        self.conv1 = nn.Conv2d(stem_channels, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        block_in = width
        for stage, num_blocks in enumerate(config.layers):
            planes, stride = width * 2**stage, 1 if stage == 0 else 2
            blocks = [CloomeBottleneck(block_in, planes, stride)]
            block_in = planes * CloomeBottleneck.expansion
            blocks += [CloomeBottleneck(block_in, planes) for _ in range(num_blocks - 1)]
            self.add_module(f"layer{stage + 1}", nn.Sequential(*blocks))
        self.num_features = block_in

    def forward(self, pixel_values: torch.Tensor, output_hidden_states: bool = False) -> BaseModelOutputWithPooling:
        """``last_hidden_state`` ``(N, C, h, w)`` final map, ``pooler_output`` ``(N, C)`` head-pooled features and,
        with ``output_hidden_states``, the stem and the four stage outputs (transformers' ``ResNetModel`` layout)."""
        height, width = pixel_values.shape[-2:]
        if min(height, width) < self.min_input_size:
            raise ValueError(
                f"cloome_resnet50 with head_pool_size={self.head_pool_size} needs images of at least "
                f"{self.min_input_size}x{self.min_input_size} pixels, got {height}x{width}"
            )
        hidden = self.maxpool(self.relu(self.bn1(self.conv1(pixel_values))))
        hidden_states = [hidden]
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            hidden = stage(hidden)
            hidden_states.append(hidden)
        states = tuple(hidden_states) if output_hidden_states else None
        pooled = cloome_head_pool(hidden, self.head_pool_size)
        return BaseModelOutputWithPooling(last_hidden_state=hidden, pooler_output=pooled, hidden_states=states)


def build_cloome_resnet(config: CloomeVisionConfig, in_channels: int, load_weights: bool) -> CloomeResNet:
    """The published trunk for ``in_channels`` inputs; it has no pretrained weights of its own (they come from
    ``cloome convert`` or a saved CloomeModel)."""
    return CloomeResNet(config, in_channels=in_channels)


register_tower_kind(VisionTowerKind(
    name=CLOOME_RESNET50,
    description="'cloome_resnet50', the published CLOOME ResNet-50",
    claims=lambda config: config.backbone == CLOOME_RESNET50,
    resolve=lambda config: None,
    build=build_cloome_resnet,
    pretrained_in_channels=lambda config: 1,
))

__all__ = ["CloomeBottleneck", "CloomeResNet", "build_cloome_resnet", "cloome_head_pool", "resnet_min_input_size",
           "resnet_output_size", "resnet_parameter_count"]
