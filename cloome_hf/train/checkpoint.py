"""Atomic training checkpoints: written into a temporary folder and renamed, listed, resolved and rotated."""

from __future__ import annotations

import json
import os
import re
import shutil
from typing import Any

from torch import nn


CHECKPOINT_PREFIX = "checkpoint-"
_CHECKPOINT_RE = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")
TRAINER_STATE = "trainer_state.json"


def list_checkpoints(checkpoint_dir: str | os.PathLike) -> list[tuple[int, str]]:
    """Complete checkpoints in ``checkpoint_dir`` as ``(step, path)``, oldest first."""
    if not os.path.isdir(checkpoint_dir):
        return []
    found = []
    for name in os.listdir(checkpoint_dir):
        match = _CHECKPOINT_RE.match(name)
        if match and os.path.isfile(os.path.join(checkpoint_dir, name, TRAINER_STATE)):
            found.append((int(match.group(1)), os.path.join(checkpoint_dir, name)))
    return sorted(found)


def resolve_checkpoint(value: str, checkpoint_dir: str | os.PathLike) -> str | None:
    """``"latest"`` -> newest complete checkpoint in ``checkpoint_dir`` (None if there is none); else the path."""
    if value == "latest":
        found = list_checkpoints(checkpoint_dir)
        return found[-1][1] if found else None
    if not os.path.isfile(os.path.join(value, TRAINER_STATE)):
        raise ValueError(f"resume_from_checkpoint={value!r} is not a complete checkpoint (no {TRAINER_STATE})")
    return value


def read_trainer_state(checkpoint: str) -> dict[str, Any]:
    with open(os.path.join(checkpoint, TRAINER_STATE), encoding="utf-8") as f:
        return json.load(f)


def save_checkpoint(accelerator, checkpoint_dir: str, step: int, state: dict[str, Any], total_limit: int) -> str:
    """Atomically write ``checkpoint-{step}``: ``save_state`` into a temporary folder, then one rename.

    Every process must call this (each saves its RNG state). A crash leaves either the complete folder or a
    ``.tmp-*`` folder that :func:`clean_incomplete_checkpoints` removes; ``trainer_state.json`` is written
    last, and a checkpoint only counts as complete with it. Keeps the newest ``total_limit`` checkpoints.
    """
    final = os.path.join(checkpoint_dir, f"{CHECKPOINT_PREFIX}{step}")
    tmp = os.path.join(checkpoint_dir, f".tmp-{CHECKPOINT_PREFIX}{step}")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(checkpoint_dir, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(tmp)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        with open(os.path.join(tmp, TRAINER_STATE), "w", encoding="utf-8") as f:
            json.dump({**state, "step": step}, f, indent=2)
        if os.path.isdir(final):  # e.g. re-saving the step of a non-finite loss
            shutil.rmtree(final)
        os.replace(tmp, final)
        if total_limit > 0:
            for _, old in list_checkpoints(checkpoint_dir)[:-total_limit]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def clean_incomplete_checkpoints(checkpoint_dir: str) -> None:
    """Remove ``.tmp-*`` folders left by a process killed while saving."""
    if os.path.isdir(checkpoint_dir):
        for name in os.listdir(checkpoint_dir):
            if name.startswith(".tmp-"):
                shutil.rmtree(os.path.join(checkpoint_dir, name), ignore_errors=True)


def parameter_digest(model: nn.Module) -> str:
    """SHA-256 of all parameters and buffers, in name order (identical replicas have identical digests)."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


__all__ = ["clean_incomplete_checkpoints", "list_checkpoints", "parameter_digest", "read_trainer_state",
           "resolve_checkpoint", "save_checkpoint"]
