"""``--freeze_image_tower`` / ``--unfreeze_last N``: train the heads (and the channel pooling) on a fixed tower.

A frozen tower stays in eval mode even when the model is put in training mode (its batch-norm statistics and
dropout are those of the pretrained tower, so what it computes is a function of the image alone: the condition for
training on cached features, :mod:`cloome_hf.vision_towers.features`). With ``unfreeze_last=N`` the last N blocks
of the tower train (and follow the model's mode); everything before them stays frozen.
"""

from __future__ import annotations

import types

from torch import nn

from ..vision_tower_channels import tower_module
from ..vision_tower_resnet import CloomeResNet


def _sequence(module: nn.Module, path: str) -> list[nn.Module] | None:
    for name in path.split("."):
        module = getattr(module, name, None)
        if module is None:
            return None
    return list(module) if isinstance(module, (nn.ModuleList, nn.Sequential)) else None


# Where the repeated blocks of the common architectures live, inside a tower adapter's ``model``.
_BLOCK_PATHS = ("encoder.layer", "encoder.layers", "blocks", "layers", "stages", "encoder.stages")


def tower_blocks(tower: nn.Module) -> list[nn.Module]:
    """The tower's blocks in forward order: the CLOOME ResNet's bottlenecks, a transformer's layers (DINOv2 / ViT
    ``encoder.layer``, timm ``blocks``) or a CNN's stages; ``ValueError`` naming the tower when none are found."""
    if isinstance(tower, CloomeResNet):
        return [block for stage in (tower.layer1, tower.layer2, tower.layer3, tower.layer4) for block in stage]
    model = getattr(tower, "model", tower)
    for path in _BLOCK_PATHS:
        blocks = _sequence(model, path)
        if blocks:
            return blocks
    stages = [getattr(model, f"layer{i}", None) for i in range(1, 5)]  # timm ResNets
    if all(isinstance(s, nn.Sequential) for s in stages):
        return [block for stage in stages for block in stage]
    raise ValueError(f"cannot find the blocks of the image tower {type(model).__name__} (looked for "
                     f"{list(_BLOCK_PATHS)} and layer1-4), so --unfreeze_last cannot choose what to train")


def _train_frozen(tower: nn.Module, trainable: list[nn.Module]):
    def train(self, mode: bool = True):
        nn.Module.train(self, False)
        for block in trainable:
            block.train(mode)
        return self

    return types.MethodType(train, tower)


def freeze_image_tower(model, unfreeze_last: int = 0) -> list[str]:
    """Freeze ``model``'s image tower (not its ``per_channel`` pooling nor the projection heads) except its last
    ``unfreeze_last`` blocks; returns the names of the tower parameters left trainable."""
    if isinstance(unfreeze_last, bool) or not isinstance(unfreeze_last, int) or unfreeze_last < 0:
        raise ValueError(f"unfreeze_last must be a number of blocks >= 0, got {unfreeze_last!r}")
    tower = tower_module(model.vision_model)
    tower.requires_grad_(False)
    trainable: list[nn.Module] = []
    if unfreeze_last:
        blocks = tower_blocks(tower)
        if unfreeze_last > len(blocks):
            raise ValueError(f"--unfreeze_last {unfreeze_last}: the image tower has only {len(blocks)} blocks")
        trainable = blocks[-unfreeze_last:]
        for block in trainable:
            block.requires_grad_(True)
    tower.train = _train_frozen(tower, trainable)
    tower.train(model.training)
    return [name for name, p in tower.named_parameters() if p.requires_grad]


__all__ = ["freeze_image_tower", "tower_blocks"]
