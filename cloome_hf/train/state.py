"""What a training run holds: its position (:class:`TrainState`, saved in checkpoints) and everything else
(:class:`Run`, built by :func:`cloome_hf.train.setup.setup_run`)."""

from __future__ import annotations

import math
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

from ..inference.encode import Embeddings
from ..recipes import TRAINING_CONFIG_FILE
from ..safe_io import OutputLock
from ..transforms import CloomeTrainTransform
from .data import TrainingData
from .guard import NonFiniteGuard

TRAIN_LOG = "train_log.jsonl"
#: What a finished or interrupted run leaves in its output folder (a fresh run refuses to mix with them).
RUN_ARTIFACTS = (TRAIN_LOG, "checkpoints", "all_results.json", "model.safetensors", TRAINING_CONFIG_FILE, "best",
                 "audit")


class TrainingStopped(RuntimeError):
    """Training stopped early (non-finite loss); the message names the step and the saved checkpoint."""


@dataclass
class TrainState:
    """Where a run is: what a checkpoint records besides the weights, optimiser and RNG states."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best_score: float = -1.0

    @classmethod
    def from_saved(cls, saved: dict[str, Any], path: str, steps_per_epoch: int, total_steps: int) -> "TrainState":
        """The position a checkpoint's trainer state records, checked against the run it is resumed into, so a
        tampered or foreign state is refused before anything runs (a batch position beyond the epoch would loop
        forever; a step beyond the run would "finish" it by writing the checkpoint's older weights)."""
        def field_value(name: str, kind: type, low: float, high: float):
            value = saved.get(name)
            if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
                raise ValueError(f"{path}: trainer state {name}={value!r} is not {'a number' if kind is float else 'an integer'}"
                                 "; the checkpoint is damaged or was edited. Resume from another checkpoint or start "
                                 "in a new --output_dir")
            if not (math.isfinite(value) and low <= value <= high):
                raise ValueError(f"{path}: trainer state {name}={value!r} lies outside [{low:g}, {high:g}] for this "
                                 f"run ({total_steps} steps, {steps_per_epoch} per epoch); the checkpoint is damaged, "
                                 "edited or belongs to another run. Resume from another checkpoint or start in a new "
                                 "--output_dir")
            return value

        step = field_value("step", int, 0, total_steps)
        epoch = field_value("epoch", int, 0, total_steps)
        batch_in_epoch = field_value("batch_in_epoch", int, 0, steps_per_epoch - 1)
        best_score = field_value("best_score", float, -1.0, 1.0)
        saved_per_epoch = (saved.get("settings") or {}).get("steps_per_epoch", steps_per_epoch)
        if isinstance(saved_per_epoch, int) and step != epoch * saved_per_epoch + batch_in_epoch:
            raise ValueError(f"{path}: trainer state step={step} disagrees with epoch={epoch} and batch_in_epoch="
                             f"{batch_in_epoch} at {saved_per_epoch} steps per epoch; the checkpoint is damaged or "
                             "was edited. Resume from another checkpoint or start in a new --output_dir")
        match = re.fullmatch(r"checkpoint-(\d+)", os.path.basename(os.path.normpath(path)))
        if match and int(match.group(1)) != step:
            raise ValueError(f"{path}: trainer state step={step} disagrees with the folder's name; the checkpoint "
                             "was renamed or edited. Resume from another checkpoint or start in a new --output_dir")
        return cls(step=step, epoch=epoch, batch_in_epoch=batch_in_epoch, best_score=float(best_score))

    def advance(self, steps_per_epoch: int) -> None:
        self.step += 1
        self.batch_in_epoch += 1
        if self.batch_in_epoch == steps_per_epoch:
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0

    def rewind(self, steps: int, steps_per_epoch: int) -> None:
        """Undo ``steps`` calls of :meth:`advance`."""
        self.step -= steps
        self.batch_in_epoch -= steps
        while self.batch_in_epoch < 0:
            self.epoch, self.batch_in_epoch = self.epoch - 1, self.batch_in_epoch + steps_per_epoch


@dataclass
class Run:
    """Everything a training run holds; built by :func:`setup_run`."""

    args: tuple  # (model_args, data_args, train_args)
    recipe_used: dict[str, Any]
    accelerator: Any
    data: TrainingData
    processor: Any
    model: Any  # as prepared by accelerate (DDP / compiled wrapper)
    raw_model: Any
    optimizer: Any
    scheduler: Any
    loader: Any
    state: TrainState
    steps_per_epoch: int
    total_steps: int
    random_baseline: dict[str, float]
    log_path: str
    guard: NonFiniteGuard
    device_transform: CloomeTrainTransform | None = None  # --augment_on_device: the augmentation, on the device
    settings: dict[str, Any] = field(default_factory=dict)
    lock: OutputLock | None = None
    last_checkpoint: tuple[int, str] | None = None  # (step, folder) of the last checkpoint this process wrote
    phenomic_model: Any = None  # loss s2l: the frozen model whose image embeddings give the soft labels
    tower_features: Any = None  # --image_features: the CachedTowerFeatures the steps read instead of the tower
    audit: Any = None
    progress: Any = None
    last_metrics: dict[str, float] = field(default_factory=dict)
    last_embeddings: Embeddings | None = None
    _tick: float = field(default_factory=time.perf_counter)
    _seen: int = 0

    @property
    def train_args(self):
        return self.args[2]

    @property
    def checkpoint_dir(self) -> str:
        return os.path.join(self.train_args.output_dir, "checkpoints")

    def log(self, message: str) -> None:
        if self.accelerator.is_main_process:
            tqdm.write(message)

    @property
    def eval_every(self) -> int:
        return self.train_args.eval_steps or self.steps_per_epoch

    @property
    def save_every(self) -> int:
        return self.train_args.save_steps or self.steps_per_epoch

    def is_check_step(self) -> bool:
        """Whether the step just taken logs, evaluates, checkpoints or ends an epoch (or the run): the steps at
        which the host reads the device's numbers."""
        step = self.state.step
        return (step == self.total_steps or self.state.batch_in_epoch == 0
                or any(step % every == 0 for every in (self.train_args.logging_steps, self.eval_every,
                                                       self.save_every)))

    def epoch_batches(self):
        """The batches left in the current epoch (all of them, or the rest after a mid-epoch resume)."""
        self.loader.set_epoch(self.state.epoch)  # accelerate passes it to the sampler when iteration starts
        if self.state.batch_in_epoch:
            return self.accelerator.skip_first_batches(self.loader, self.state.batch_in_epoch)
        return self.loader


# ------------------------------------------------------------------------------------------------- set-up


__all__ = ["RUN_ARTIFACTS", "TRAIN_LOG", "Run", "TrainState", "TrainingStopped"]
