"""Training building blocks for CLOOME: the paper's recipes, optimiser, schedule, checkpoints and validation.

``scripts/train.py`` wires these into an ``accelerate`` loop; each piece is usable (and tested) on its own.

* :data:`PRESETS` - the published recipes (``retrieval``, ``bioactivity``) and the CPU-sized ``demo``.
* :func:`build_optimizer` - AdamW with decoupled weight decay only on parameters with >= 2 dimensions
  (conv / linear weights); biases, normalisation weights and ``logit_scale`` are not decayed.
* :func:`build_scheduler` / :func:`lr_factor` - linear warm-up, then cosine with hard restarts every
  ``restart_epochs`` epochs (counted from the end of the warm-up).
* :class:`EpochBatchSampler` - deterministic global batches from ``(seed, epoch)`` with one augmentation
  seed per sample, so a resumed run and a run on any number of processes see the same batches and crops.
* :func:`save_checkpoint` / :func:`resolve_checkpoint` - atomic ``accelerator.save_state`` checkpoints.
* :func:`random_retrieval_baseline` - the chance level of the validation retrieval metrics.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from functools import partial
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import nn

# Values from the paper (Sanchez-Fernandez et al. 2023, Methods) where it states them; the learning rate and Adam
# betas/eps are the upstream code's defaults for RN50 (ml-jku/cloome src/training/params.py). ``demo`` is sized
# for the embedded synthetic data on a laptop CPU (about 2-3 minutes on 2 cores).
_PUBLISHED = dict(
    backbone="cloome_resnet50", vision_layers=[3, 4, 6, 3], base_width=64, head_pool_size=7,
    molecule_hidden_size=1024, molecule_num_layers=4, projection_dim=512,
    per_device_train_batch_size=256, learning_rate=5e-4, weight_decay=0.1, adam_beta1=0.9, adam_beta2=0.999,
    adam_epsilon=1e-8, warmup_steps=20_000, restart_epochs=7, num_train_epochs=63, augment=True,
)
PRESETS: dict[str, dict[str, Any]] = {
    "retrieval": dict(
        _PUBLISHED, loss="infonce", init_inverse_temperature=14.3, image_size=[520, 520],
        random_resized_crop_scale=[], fingerprint_kind="morgan_rdkit_max", fingerprint_size=8192,
    ),
    "bioactivity": dict(
        _PUBLISHED, loss="infoloob", init_inverse_temperature=30.0, hopfield_beta=22.0, image_size=[320, 320],
        random_resized_crop_scale=[0.9, 1.0], fingerprint_kind="morgan", fingerprint_size=1024,
    ),
    "demo": dict(
        backbone="cloome_resnet50", vision_layers=[1, 1, 1, 1], base_width=16, head_pool_size=2,
        molecule_hidden_size=256, molecule_num_layers=2, projection_dim=64, loss="infonce",
        init_inverse_temperature=14.3, image_size=[64, 64], random_resized_crop_scale=[],
        fingerprint_kind="morgan", fingerprint_size=1024, per_device_train_batch_size=32, learning_rate=2e-3,
        weight_decay=0.1, adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, warmup_steps=20,
        restart_epochs=0, num_train_epochs=10, augment=True,
    ),
}
# Used when a preset does not set them (hopfield_beta only matters for infoloob).
COMMON_DEFAULTS: dict[str, Any] = dict(hopfield_beta=22.0)


def preset_values(name: str | None) -> dict[str, Any]:
    """The hyper-parameters of preset ``name`` (``None`` = ``demo``)."""
    name = name or "demo"
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return {**COMMON_DEFAULTS, **PRESETS[name]}


# ----------------------------------------------------------------------------------------- optimiser / schedule
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


# ----------------------------------------------------------------------------------------- data order
class EpochBatchSampler:
    """Global batches of ``(row, augmentation_seed)`` keys, a pure function of ``(seed, epoch)``.

    Each epoch is a seeded permutation of the rows. With ``molecule_ids``, a batch never holds two sites of the
    same molecule (they would be false negatives of the contrastive loss; batches from
    :func:`cloome_hf.data.torch_data.unique_molecule_batches`). Incomplete last batches are dropped (the loss needs equal rows per
    process). Under ``accelerate`` with ``split_batches=True`` process ``r`` gets rows ``[r*B, (r+1)*B)`` of
    each global batch, so the batches, and the random crops (seeded per sample), do not depend on the number
    of processes, and ``skip_first_batches`` resumes mid-epoch exactly.
    """

    def __init__(self, num_rows: int, batch_size: int, seed: int, molecule_ids: Sequence | None = None):
        if batch_size < 2 or num_rows < batch_size:
            raise ValueError(f"need 2 <= batch_size <= rows, got batch_size={batch_size} for {num_rows} rows")
        self.num_rows, self.batch_size, self.seed, self.epoch = num_rows, batch_size, seed, 0
        self.codes = None
        if molecule_ids is not None:
            self.codes = np.unique(np.asarray(molecule_ids), return_inverse=True)[1].reshape(-1)
        self._cache: tuple[int, list[list[tuple[int, int]]]] | None = None
        self.batches(0)  # fails now, not at the first step, if no batch can hold distinct molecules

    def select_epoch(self, epoch: int) -> None:
        """Choose the epoch whose batches iteration yields. (Not named ``set_epoch`` on purpose: accelerate calls
        ``set_epoch`` with its own pass counter, which restarts at 0 after a resume.)"""
        self.epoch = int(epoch)

    def batches(self, epoch: int) -> list[list[tuple[int, int]]]:
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        from .data.torch_data import unique_molecule_batches

        rng = np.random.default_rng([self.seed, epoch])
        seeds = rng.integers(0, 2**62, size=self.num_rows)  # one per row, fixed for the epoch
        if self.codes is None:
            order = rng.permutation(self.num_rows)
            rows = [order[i : i + self.batch_size] for i in range(0, self.num_rows - self.batch_size + 1, self.batch_size)]
        else:
            rows = unique_molecule_batches(self.codes, self.batch_size, rng, drop_last=True)
        batches = [[(int(r), int(seeds[r])) for r in batch] for batch in rows]
        self._cache = (epoch, batches)
        return batches

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        return iter(self.batches(self.epoch))

    def __len__(self) -> int:
        return len(self.batches(self.epoch))


class PairDataset(torch.utils.data.Dataset):
    """Sites of a Cell Painting ``datasets.Dataset`` paired with their molecule's fingerprint.

    Keys are rows or ``(row, augmentation_seed)`` (from :class:`EpochBatchSampler`); with a seed the
    ``transform`` (a :class:`~cloome_hf.transforms.CloomeTrainTransform`) draws from a generator seeded with it,
    so a sample's crop does not depend on the process, the worker or the order of the calls.

    Items: ``{"pixel_values": (C, h, w) float32, "fingerprints": (F,) float32, "row": int}``.
    """

    def __init__(self, ds, fingerprints: np.ndarray, transform):
        if len(ds) != len(fingerprints):
            raise ValueError(f"{len(ds)} sites but {len(fingerprints)} fingerprint rows")
        self.images = ds.select_columns(["image", "image_shape"])
        self.fingerprints = torch.as_tensor(np.asarray(fingerprints, dtype=np.float32))
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def image(self, row: int) -> torch.Tensor:
        from .data.schema import decode_row

        return torch.from_numpy(decode_row(self.images[int(row)]).copy())

    def __getitem__(self, key) -> dict[str, Any]:
        row, seed = key if isinstance(key, tuple) else (key, None)
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        return {
            "pixel_values": self.transform(self.image(row), generator=generator),
            "fingerprints": self.fingerprints[row],
            "row": row,
        }


# ----------------------------------------------------------------------------------------- checkpoints
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


# ----------------------------------------------------------------------------------------- validation
def random_retrieval_baseline(groups: Sequence, ks=(1, 5, 10), seed: int = 0) -> dict[str, float]:
    """Chance level of :func:`cloome_hf.evaluation.retrieval.retrieval_accuracy` for pairs grouped by ``groups``.

    With replicate sites the chance level is not ``k / N``: a site's own molecule's other sites are not
    competitors, and in image -> molecule retrieval the molecule rows of a competing molecule are identical,
    so they rank together. Molecule -> image has a closed form (the match is uniform among itself and the
    ``N - n_q`` competitors); image -> molecule averages random orders of the molecules (exact in expectation).
    """
    codes = np.unique(np.asarray(groups), return_inverse=True)[1].reshape(-1)
    sizes = np.bincount(codes).astype(np.float64)
    num_groups, n = len(sizes), float(sizes.sum())
    out: dict[str, float] = {}
    candidates = n - sizes[codes] + 1  # per query: the match plus its competitors
    draws = int(min(2000, max(16, 2e7 // num_groups**2)))
    rng = np.random.default_rng(seed)
    hits = {k: np.zeros(num_groups) for k in ks}
    for _ in range(draws):
        scores = rng.random(num_groups)
        # mass[q]: number of molecule rows (sites) of the molecules that score above molecule q
        mass = (scores[None, :] > scores[:, None]).astype(np.float64) @ sizes
        for k in ks:
            hits[k] += mass <= k - 1
    for k in ks:
        out[f"image_to_molecule_top{k}"] = float((hits[k] / draws * sizes).sum() / n)
        out[f"molecule_to_image_top{k}"] = float(np.mean(np.minimum(k, candidates) / candidates))
    return out


def parameter_digest(model: nn.Module) -> str:
    """SHA-256 of all parameters and buffers, in name order (identical replicas have identical digests)."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


__all__ = [
    "EpochBatchSampler", "PairDataset", "PRESETS", "build_optimizer", "build_scheduler",
    "clean_incomplete_checkpoints", "list_checkpoints", "lr_factor", "parameter_digest",
    "parameter_groups", "preset_values", "random_retrieval_baseline", "read_trainer_state", "resolve_checkpoint",
    "save_checkpoint",
]
