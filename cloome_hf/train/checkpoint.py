"""Training checkpoints that run no code when loaded: safetensors, ``torch.load(weights_only=True)`` and JSON.

A checkpoint folder ``checkpoint-{step}`` holds::

    model.safetensors        the (unwrapped) model's state dict
    optimizer.pt             the optimiser state dict: tensors and plain values, loaded with weights_only=True
    scheduler.json           the learning-rate schedule's position
    scaler.json              the fp16 gradient scaler, when there is one
    rng_state_{rank}.safetensors / .json   every process's torch / CUDA / numpy / python random states
    trainer_state.json       the data position, best score, write sequence and the run's settings (last)

It is written into ``.tmp-checkpoint-{step}`` and renamed, so it is complete or absent; ``trainer_state.json``
is written last. Checkpoints are rotated by the order they were written (``sequence``), not by step number.
No file is unpickled with arbitrary objects, and a damaged or foreign file is a ``ValueError`` naming it, never
skipped (accelerate's ``save_state`` / ``load_state`` pickle the scheduler and random states, so they are not
used).
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import shutil
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..finite import require_finite_tensors, require_float_dtypes
from ..safe_io import atomic_write_json, read_json, require_keys

CHECKPOINT_PREFIX = "checkpoint-"
_CHECKPOINT_RE = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")
TRAINER_STATE = "trainer_state.json"
MODEL_FILE, OPTIMIZER_FILE, SCHEDULER_FILE, SCALER_FILE = "model.safetensors", "optimizer.pt", "scheduler.json", \
    "scaler.json"
STATE_KEYS = ("step", "epoch", "batch_in_epoch", "best_score", "sequence", "settings")


def list_checkpoints(checkpoint_dir: str | os.PathLike) -> list[tuple[int, str]]:
    """Complete checkpoints in ``checkpoint_dir`` as ``(step, path)``, in the order they were written."""
    if not os.path.isdir(checkpoint_dir):
        return []
    found = []
    for name in os.listdir(checkpoint_dir):
        match = _CHECKPOINT_RE.match(name)
        state_path = os.path.join(checkpoint_dir, name, TRAINER_STATE)
        if match and os.path.isfile(state_path):
            found.append((read_trainer_state(os.path.join(checkpoint_dir, name))["sequence"], int(match.group(1)),
                          os.path.join(checkpoint_dir, name)))
    return [(step, path) for _, step, path in sorted(found)]


def resolve_checkpoint(value: str, checkpoint_dir: str | os.PathLike) -> str | None:
    """``"latest"`` -> the last written complete checkpoint in ``checkpoint_dir`` (None if there is none);
    else the path, which must be a complete checkpoint."""
    if value == "latest":
        found = list_checkpoints(checkpoint_dir)
        return found[-1][1] if found else None
    if not os.path.isfile(os.path.join(value, TRAINER_STATE)):
        raise ValueError(f"resume_from_checkpoint={value!r} is not a complete checkpoint (no {TRAINER_STATE})")
    return value


def read_trainer_state(checkpoint: str) -> dict[str, Any]:
    path = os.path.join(checkpoint, TRAINER_STATE)
    state = read_json(path, "trainer state")
    require_keys(state, STATE_KEYS, path, "trainer state")
    return state


# ------------------------------------------------------------------------------------------------- writing
def _rng_files(folder: str, rank: int) -> tuple[str, str]:
    return os.path.join(folder, f"rng_state_{rank}.safetensors"), os.path.join(folder, f"rng_state_{rank}.json")


def _save_rng(folder: str, rank: int) -> None:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"cuda_{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    tensors["numpy_keys"] = torch.from_numpy(keys.astype(np.int64))
    tensors_path, json_path = _rng_files(folder, rank)
    save_file(tensors, tensors_path)
    version, internal, gauss_next = random.getstate()
    atomic_write_json(json_path, {"numpy": [kind, int(pos), int(has_gauss), float(gauss)],
                                  "python": [version, list(internal), gauss_next]})


def save_checkpoint(accelerator, checkpoint_dir: str, state: dict[str, Any], model: nn.Module, optimizer, scheduler,
                    total_limit: int) -> str:
    """Write ``checkpoint-{state['step']}`` atomically (every process must call this: each saves its random
    states). ``model`` is the unwrapped model. Keeps the ``total_limit`` most recently written checkpoints."""
    step = int(state["step"])
    # every process checks (they hold the same weights), so none waits for a main process that refused
    require_finite_tensors(model.state_dict().items(), f"the model state of step {step}")
    final = os.path.join(checkpoint_dir, f"{CHECKPOINT_PREFIX}{step}")
    tmp = os.path.join(checkpoint_dir, f".tmp-{CHECKPOINT_PREFIX}{step}")
    main = accelerator.is_main_process
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    accelerator.wait_for_everyone()
    _save_rng(tmp, accelerator.process_index)
    if main:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                  os.path.join(tmp, MODEL_FILE))
        torch.save(optimizer.state_dict(), os.path.join(tmp, OPTIMIZER_FILE))
        schedule = {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}
        atomic_write_json(os.path.join(tmp, SCHEDULER_FILE), schedule)
        if accelerator.scaler is not None:
            atomic_write_json(os.path.join(tmp, SCALER_FILE), accelerator.scaler.state_dict())
    accelerator.wait_for_everyone()
    if main:
        written = list_checkpoints(checkpoint_dir)
        sequence = 1 + max((read_trainer_state(p)["sequence"] for _, p in written), default=0)
        atomic_write_json(os.path.join(tmp, TRAINER_STATE), {**state, "step": step, "sequence": sequence})
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


# ------------------------------------------------------------------------------------------------- loading
def _refuse(path: str, err: Exception) -> ValueError:
    return ValueError(f"cannot load the checkpoint file {path}: {type(err).__name__}: {err} (checkpoints are "
                      "loaded without running code: safetensors, weights-only torch files and JSON)")


def _load_rng(folder: str, rank: int) -> None:
    tensors_path, json_path = _rng_files(folder, rank)
    values = read_json(json_path, "random state")
    try:
        tensors = load_file(tensors_path)
        kind, pos, has_gauss, gauss = values["numpy"]
        version, internal, gauss_next = values["python"]
        torch.set_rng_state(tensors["torch"])
        if torch.cuda.is_available():
            torch.cuda.set_rng_state_all([tensors[f"cuda_{i}"] for i in range(torch.cuda.device_count())])
        np.random.set_state((kind, tensors["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, gauss))
        random.setstate((version, tuple(internal), gauss_next))
    except Exception as err:  # safetensors, torch and numpy raise many types for a damaged or foreign state
        raise _refuse(tensors_path, err) from err


def load_checkpoint(accelerator, checkpoint: str, model: nn.Module, optimizer, scheduler) -> dict[str, Any]:
    """Restore model, optimiser, schedule, scaler and this process's random states; returns the trainer state."""
    state = read_trainer_state(checkpoint)
    path = os.path.join(checkpoint, MODEL_FILE)
    try:
        weights = load_file(path)
    except Exception as err:
        raise _refuse(path, err) from err
    own = model.state_dict()
    require_float_dtypes({k: v.dtype for k, v in weights.items()}, path, {k: v.dtype for k, v in own.items()})
    require_finite_tensors(weights.items(), path)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path} does not fit the model: missing {sorted(missing)}, unexpected {sorted(unexpected)}")
    path = os.path.join(checkpoint, OPTIMIZER_FILE)
    try:
        optimizer.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except Exception as err:
        raise _refuse(path, err) from err
    schedule = read_json(os.path.join(checkpoint, SCHEDULER_FILE), "schedule state")
    scheduler.load_state_dict({**schedule, "lr_lambdas": [None] * len(scheduler.lr_lambdas)})
    if accelerator.scaler is not None:
        accelerator.scaler.load_state_dict(read_json(os.path.join(checkpoint, SCALER_FILE), "gradient scaler state"))
    _load_rng(checkpoint, accelerator.process_index)
    return state


def parameter_digest(model: nn.Module) -> str:
    """SHA-256 of all parameters and buffers, in name order (identical replicas have identical digests)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


__all__ = ["clean_incomplete_checkpoints", "list_checkpoints", "load_checkpoint",
           "parameter_digest", "read_trainer_state", "resolve_checkpoint", "save_checkpoint"]
