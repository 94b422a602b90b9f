"""A random checkpoint in the exact layout of the published CLOOME checkpoints (upstream ``CLIPGeneral`` keys), and
the upstream forward written with functional calls only (F.conv2d, F.batch_norm, F.avg_pool2d, F.max_pool2d,
F.linear) from the upstream architecture description, so it shares no code with CloomeModel. A support module
of the conversion, wheel and README tests."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


# --------------------------------------------------------------------------------------------------------------
# Fixture: a random state dict in the exact upstream layout
# --------------------------------------------------------------------------------------------------------------
def _bn(sd: dict, prefix: str, n: int, g: torch.Generator) -> None:
    sd[prefix + "weight"] = torch.rand(n, generator=g) + 0.5
    sd[prefix + "bias"] = torch.randn(n, generator=g) * 0.1
    sd[prefix + "running_mean"] = torch.randn(n, generator=g) * 0.1
    sd[prefix + "running_var"] = torch.rand(n, generator=g) * 1.5 + 0.5  # strictly positive
    sd[prefix + "num_batches_tracked"] = torch.tensor(1000 + int(torch.randint(0, 100, (1,), generator=g)))


def _conv(out_ch: int, in_ch: int, k: int, g: torch.Generator) -> torch.Tensor:
    # He-scaled so 16 residual blocks neither vanish nor overflow in float32.
    return torch.randn(out_ch, in_ch, k, k, generator=g) * math.sqrt(2.0 / (in_ch * k * k))


def make_upstream_state_dict(
    layers=(1, 1, 1, 1),
    fingerprint_size=1024,
    hidden_size=64,
    molecule_layers=4,
    projection_dim=512,
    channels=5,
    prefix="module.",
    seed=0,
) -> dict[str, torch.Tensor]:
    """Random ``CLIPGeneral`` state dict in the upstream key layout (``visual.``, ``transformer.``)."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    sd["visual.conv1.weight"] = _conv(64, channels, 7, g)
    _bn(sd, "visual.bn1.", 64, g)
    inplanes = 64
    for stage, blocks in enumerate(layers, start=1):
        planes = 64 * 2 ** (stage - 1)
        for b in range(blocks):
            p = f"visual.layer{stage}.{b}."
            sd[p + "conv1.weight"] = _conv(planes, inplanes, 1, g)
            _bn(sd, p + "bn1.", planes, g)
            sd[p + "conv2.weight"] = _conv(planes, planes, 3, g)
            _bn(sd, p + "bn2.", planes, g)
            sd[p + "conv3.weight"] = _conv(planes * 4, planes, 1, g) * 0.5
            _bn(sd, p + "bn3.", planes * 4, g)
            if b == 0:
                sd[p + "downsample.0.weight"] = _conv(planes * 4, inplanes, 1, g)
                _bn(sd, p + "downsample.1.", planes * 4, g)
            inplanes = planes * 4
    sd["visual.fc.weight"] = torch.randn(projection_dim, 2048, generator=g) / math.sqrt(2048)
    sd["visual.fc.bias"] = torch.randn(projection_dim, generator=g) * 0.1
    fan_in = fingerprint_size
    for i in range(molecule_layers):
        sd[f"transformer.layers.{i}.0.weight"] = torch.randn(hidden_size, fan_in, generator=g) / math.sqrt(fan_in)
        sd[f"transformer.layers.{i}.0.bias"] = torch.randn(hidden_size, generator=g) * 0.1
        _bn(sd, f"transformer.layers.{i}.1.", hidden_size, g)
        fan_in = hidden_size
    sd[f"transformer.layers.{molecule_layers}.0.weight"] = torch.randn(projection_dim, fan_in, generator=g) / math.sqrt(fan_in)
    sd[f"transformer.layers.{molecule_layers}.0.bias"] = torch.randn(projection_dim, generator=g) * 0.1
    sd["logit_inv_tau"] = torch.ones([]) * (1.0 + 3.0 * torch.rand((), generator=g).item())
    return {prefix + k: v for k, v in sd.items()}


def without_module_prefix(sd: dict) -> dict:
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}


# --------------------------------------------------------------------------------------------------------------
# Independent reference forward, straight from the upstream tensors
# --------------------------------------------------------------------------------------------------------------
def _ref_bn(x, sd, p):
    return F.batch_norm(x, sd[p + "running_mean"], sd[p + "running_var"], sd[p + "weight"], sd[p + "bias"],
                        training=False, eps=1e-5)


def reference_image_features(sd: dict, x: torch.Tensor) -> torch.Tensor:
    """Upstream ``encode_image``: anti-aliased ResNet, AvgPool2d(7, 1) head (+ mean if not 1x1), fc."""
    sd = without_module_prefix(sd)
    x = F.relu(_ref_bn(F.conv2d(x, sd["visual.conv1.weight"], stride=2, padding=3), sd, "visual.bn1."))
    x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
    for stage in range(1, 5):
        b = 0
        while f"visual.layer{stage}.{b}.conv1.weight" in sd:
            p = f"visual.layer{stage}.{b}."
            stride = 2 if (stage > 1 and b == 0) else 1
            out = F.relu(_ref_bn(F.conv2d(x, sd[p + "conv1.weight"]), sd, p + "bn1."))
            out = F.relu(_ref_bn(F.conv2d(out, sd[p + "conv2.weight"], padding=1), sd, p + "bn2."))
            if stride > 1:
                out = F.avg_pool2d(out, stride)
            out = _ref_bn(F.conv2d(out, sd[p + "conv3.weight"]), sd, p + "bn3.")
            identity = x
            if p + "downsample.0.weight" in sd:
                if stride > 1:
                    identity = F.avg_pool2d(identity, stride)
                identity = _ref_bn(F.conv2d(identity, sd[p + "downsample.0.weight"]), sd, p + "downsample.1.")
            x = F.relu(out + identity)
            b += 1
    x = F.avg_pool2d(x, kernel_size=7, stride=1)
    if x.shape[-2:] != (1, 1):
        x = x.mean(dim=(-2, -1), keepdim=True)
    return F.linear(torch.flatten(x, 1), sd["visual.fc.weight"], sd["visual.fc.bias"])


def reference_molecule_features(sd: dict, fp: torch.Tensor) -> torch.Tensor:
    """Upstream ``encode_text``: (Linear -> BatchNorm1d -> ReLU) x n, then Linear."""
    sd = without_module_prefix(sd)
    i = 0
    while f"transformer.layers.{i}.1.weight" in sd:
        p = f"transformer.layers.{i}."
        fp = F.relu(_ref_bn(F.linear(fp, sd[p + "0.weight"], sd[p + "0.bias"]), sd, p + "1."))
        i += 1
    return F.linear(fp, sd[f"transformer.layers.{i}.0.weight"], sd[f"transformer.layers.{i}.0.bias"])
