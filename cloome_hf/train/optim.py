"""The optimiser and learning-rate schedule of the CLOOME recipes.

* :func:`build_optimizer` - AdamW with decoupled weight decay only on parameters with >= 2 dimensions
  (conv / linear weights); biases, normalisation weights and ``logit_scale`` are not decayed.
* :func:`build_scheduler` / :func:`lr_factor` - linear warm-up, then cosine with hard restarts every
  ``restart_epochs`` epochs (counted from the end of the warm-up).
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import torch
from torch import nn


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two AdamW groups: weights with >= 2 dims decay; biases, norm weights and ``logit_scale`` (< 2 dims) do not."""
    decay, no_decay = [], []
    for _, param in model.named_parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(
    model: nn.Module, learning_rate: float, weight_decay: float, betas=(0.9, 0.999), eps: float = 1e-8
) -> torch.optim.AdamW:
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be positive, got {learning_rate!r}")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
    return torch.optim.AdamW(parameter_groups(model, weight_decay), lr=learning_rate, betas=tuple(betas), eps=eps)


def lr_factor(step: int, total_steps: int, warmup_steps: int, period: int) -> float:
    """Multiplier of the base lr for the ``step``-th optimiser step (from 0): linear warm-up, then cosine
    cycles of ``period`` steps, each starting again from the peak (a hard restart). Integer modulo, so a
    restart lands exactly on its step (float cycle counts can miss it by one ulp)."""
    if step < warmup_steps:
        return step / warmup_steps
    if step >= total_steps:
        return 0.0
    return 0.5 * (1.0 + math.cos(math.pi * ((step - warmup_steps) % period) / period))


def build_scheduler(optimizer, total_steps: int, warmup_steps: int, steps_per_epoch: int, restart_epochs: int):
    """Linear warm-up to the base lr over ``warmup_steps``, then cosine to 0 restarting every ``restart_epochs``
    epochs (0 = one cosine over the rest of training). Same curve as transformers'
    ``get_cosine_with_hard_restarts_schedule_with_warmup`` with cycles of whole epochs."""
    if total_steps < 1 or warmup_steps < 0 or steps_per_epoch < 1:
        raise ValueError(
            f"need total_steps >= 1, warmup_steps >= 0, steps_per_epoch >= 1; got {total_steps}, {warmup_steps}, "
            f"{steps_per_epoch}"
        )
    period = restart_epochs * steps_per_epoch if restart_epochs > 0 else max(total_steps - warmup_steps, 1)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, partial(lr_factor, total_steps=total_steps, warmup_steps=warmup_steps, period=period)
    )


__all__ = ["build_optimizer", "build_scheduler", "lr_factor", "parameter_groups"]
