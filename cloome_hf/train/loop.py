"""The ``accelerate`` training loop of ``cloome train``, in named pieces that read top to bottom.

    run = setup_run(model_args, data_args, train_args, recipe_used)   # data, model, optimiser, resume
    while run.state.step < run.total_steps:
        for batch in run.epoch_batches():                              # the one input path
            train_step(run, batch)                                     # forward, backward, update, log
            if due(eval), validate(run); if due(save), save_checkpoint(...)
    finish(run)                                                        # the from_pretrained folder

One step = one global batch of ``per_device_train_batch_size x num_processes`` pairs, cut into per-process slices
(``split_batches=True``); the loss gathers the embeddings of all processes, so it is the loss of the global batch,
and with ``--sync_batchnorm`` a step is numerically the same on any number of processes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.loader import column_values
from ..distributed import convert_sync_batchnorm
from ..evaluation.retrieval import retrieval_accuracy
from ..evaluation.stats import random_retrieval_baseline
from ..inference.encode import Embeddings, encode_dataset
from ..recipes import TRAINING_CONFIG_FILE, model_config
from ..safe_io import OutputLock
from ..transforms import CloomeTrainTransform
from .checkpoint import (
    changed_settings,
    clean_incomplete_checkpoints,
    load_checkpoint,
    parameter_digest,
    resolve_checkpoint,
    save_checkpoint,
)
from .data import TrainingData, load_training_data, training_loader, training_transform
from .guard import NonFiniteGuard
from .optim import build_optimizer, build_scheduler
from .params import parse_args, resolved_arguments

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
def _cpu_only_multiprocess() -> bool:
    """A multi-process launch (``accelerate launch --multi_gpu``, torchrun) on a machine without accelerators.

    accelerate only sets up its gloo ``MULTI_CPU`` mode when asked for ``cpu=True``; without it every process
    would silently train alone.
    """
    from accelerate.utils import is_npu_available, is_xpu_available

    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1 or "LOCAL_RANK" in os.environ
    return launched and not (torch.cuda.is_available() or is_xpu_available() or is_npu_available())


def build_accelerator(train_args):
    from accelerate import Accelerator, DataLoaderConfiguration
    from accelerate.utils import ProjectConfiguration

    out = train_args.output_dir
    report_to = None if train_args.report_to == "none" else train_args.report_to.split(",")
    return Accelerator(
        cpu=_cpu_only_multiprocess(), mixed_precision=train_args.mixed_precision, log_with=report_to,
        project_config=ProjectConfiguration(project_dir=out, logging_dir=os.path.join(out, "logs")),
        # non_blocking: host-to-device copies of the (pinned) batches overlap the step before
        dataloader_config=DataLoaderConfiguration(split_batches=True, non_blocking=True),
    )


def build_processor(model_args, data_args):
    """The processor saved with the model: the recipe's fingerprints; a centre crop to the training size."""
    from ..featurization_cloome import MoleculeFeaturizer
    from ..image_processing_cloome import CloomeImageProcessor
    from ..processing_cloome import CloomeProcessor

    height, width = data_args.image_size
    return CloomeProcessor(
        image_processor=CloomeImageProcessor(do_center_crop=True, crop_size={"height": height, "width": width}),
        featurizer=MoleculeFeaturizer(kind=model_args.fingerprint_kind, fingerprint_size=model_args.fingerprint_size),
    )


def build_model(model_args, data_args):
    """A fresh model of the resolved recipe, or ``--model_name_or_path`` to start from saved weights."""
    from ..modeling_cloome import CloomeModel

    if model_args.model_name_or_path:
        return CloomeModel.from_pretrained(model_args.model_name_or_path)
    values = {**asdict(model_args), "learnable_logit_scale": model_args.learnable_temperature}
    return CloomeModel(model_config(values, data_args.image_size))


def load_phenomic_model(model_args, config, device):
    """``--s2l_phenomic_model``: the frozen CLOOME model whose image embeddings are S2L's phenomic embeddings
    (loaded once, eval mode, no gradients), or ``None`` (S2L then uses the trained model's own, detached)."""
    from ..losses import get_loss
    from ..modeling_cloome import CloomeModel

    path = model_args.s2l_phenomic_model
    if not path:
        return None
    if get_loss(config.loss).name != "s2l":
        raise ValueError(f"--s2l_phenomic_model gives the soft labels of --loss s2l, not of loss {config.loss!r}")
    frozen = CloomeModel.from_pretrained(path).to(device).eval().requires_grad_(False)
    if frozen.config.vision_config.num_channels != config.vision_config.num_channels:
        raise ValueError(f"--s2l_phenomic_model {path} reads {frozen.config.vision_config.num_channels} channels, "
                         f"the trained model {config.vision_config.num_channels}")
    return frozen


def _check_dose_data(config, data: TrainingData) -> None:
    encoding = config.molecule_config.concentration_encoding
    if encoding and "concentration" not in data.train.column_names:
        raise ValueError(f"concentration_encoding={encoding!r} encodes the dose, but the training data has no "
                         "'concentration' column")


def _prepare_model(model, accelerator, train_args):
    if train_args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if train_args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if train_args.sync_batchnorm and accelerator.num_processes > 1:
        model = convert_sync_batchnorm(model, accelerator.device)
    return model


def setup_run(model_args, data_args, train_args, recipe_used: dict[str, Any]) -> Run:
    """Data, model, optimiser, schedule and loader of a run, resumed from a checkpoint if asked."""
    from accelerate.utils import set_seed

    accelerator = build_accelerator(train_args)
    _refuse_sharded_strategies(accelerator)
    set_seed(train_args.seed)
    lock = _claim_output_dir(accelerator, train_args)
    try:
        return _build_run(accelerator, lock, model_args, data_args, train_args, recipe_used)
    except BaseException:
        if lock is not None:
            lock.release()
        raise


def _build_run(accelerator, lock, model_args, data_args, train_args, recipe_used) -> Run:
    processor = build_processor(model_args, data_args)
    log = tqdm.write if accelerator.is_main_process else (lambda message: None)
    log(f"preset {train_args.preset or 'demo'}: " + ", ".join(f"{k}={v}" for k, v in sorted(recipe_used.items())))
    with accelerator.main_process_first():
        data = load_training_data(data_args, processor.featurizer, log)
    log(f"{len(data.train)} training sites ({len(set(column_values(data.train, 'inchikey')))} molecules), "
        f"{len(data.validation)} validation sites ({len(set(column_values(data.validation, 'inchikey')))} molecules)")
    global_batch = train_args.per_device_train_batch_size * accelerator.num_processes
    loader = training_loader(data, data_args, processor.image_processor, global_batch, train_args.seed)
    steps_per_epoch = len(loader)
    total_steps = train_args.max_steps if train_args.max_steps > 0 else train_args.num_train_epochs * steps_per_epoch

    model = build_model(model_args, data_args)
    processor.check_model_compatibility(model.config)  # e.g. a --model_name_or_path with other fingerprints
    _check_dose_data(model.config, data)
    phenomic_model = load_phenomic_model(model_args, model.config, accelerator.device)
    model = _prepare_model(model, accelerator, train_args)
    optimizer = build_optimizer(model, train_args.learning_rate, train_args.weight_decay,
                                (train_args.adam_beta1, train_args.adam_beta2), train_args.adam_epsilon)
    scheduler = build_scheduler(optimizer, total_steps, train_args.warmup_steps, steps_per_epoch,
                                train_args.restart_epochs)
    if train_args.torch_compile:
        model = torch.compile(model)
    # The scheduler is stepped by hand once per global step (not prepared: accelerate would step it per process).
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    raw_model = accelerator.unwrap_model(model)
    device_transform = None
    if data_args.augment_on_device:
        device_transform = training_transform(data_args, processor.image_processor).to(accelerator.device)
    groups = np.asarray(column_values(data.validation, "inchikey"))
    run = Run(args=(model_args, data_args, train_args), recipe_used=recipe_used, accelerator=accelerator, data=data,
              processor=processor, model=model, raw_model=raw_model, optimizer=optimizer,
              scheduler=scheduler, loader=loader, state=TrainState(), steps_per_epoch=steps_per_epoch,
              total_steps=total_steps, random_baseline=random_retrieval_baseline(groups),
              log_path=os.path.join(train_args.output_dir, TRAIN_LOG),
              guard=NonFiniteGuard(raw_model, optimizer, accelerator.device), device_transform=device_transform,
              lock=lock, phenomic_model=phenomic_model)
    run.settings = run_settings(run)
    _resume(run)
    _open_logs(run)
    return run


def _resume(run: Run) -> None:
    value = run.train_args.resume_from_checkpoint
    if not value:
        return
    path = resolve_checkpoint(value, run.checkpoint_dir)
    if path is None:
        run.log(f"no checkpoint in {run.checkpoint_dir}; starting from scratch")
        return
    saved = load_checkpoint(run.accelerator, path, run.raw_model, run.optimizer, run.scheduler)
    changed = changed_settings(saved["settings"], run.settings)
    if changed and not run.train_args.allow_changed_settings:
        raise ValueError(f"{path} was written by a run with other settings, so resuming would not continue it: "
                         + "; ".join(changed) + ". Use the original settings, a new --output_dir, or "
                         "--allow_changed_settings to continue anyway")
    if changed:
        run.log("resuming with changed settings (--allow_changed_settings): " + "; ".join(changed))
    run.state = TrainState(**{k: saved[k] for k in ("step", "epoch", "batch_in_epoch", "best_score")})
    run.log(f"resumed from {path} at step {run.state.step}")


def run_settings(run: Run) -> dict[str, Any]:
    """The settings that decide a run's result; a resume checks them against the checkpoint's."""
    model_args, data_args, train_args = run.args
    config = {k: v for k, v in run.raw_model.config.to_dict().items()
              if not k.startswith("_") and k != "transformers_version"}
    data = hashlib.sha256()
    for part in (run.data.train, run.data.validation):
        data.update(json.dumps([len(part), column_values(part, "sample_key"),
                                column_values(part, "inchikey")]).encode())
    keys = ("learning_rate", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon", "warmup_steps",
            "restart_epochs", "max_grad_norm", "seed", "mixed_precision")
    return {"preset": train_args.preset or "demo", "model_config": config, "data": data.hexdigest(),
            "global_batch_size": train_args.per_device_train_batch_size * run.accelerator.num_processes,
            "num_processes": run.accelerator.num_processes, "total_steps": run.total_steps,
            "steps_per_epoch": run.steps_per_epoch, "image_size": list(data_args.image_size),
            "random_resized_crop_scale": list(data_args.random_resized_crop_scale or []),
            "augment": data_args.augment, "unique_molecules_per_batch": data_args.unique_molecules_per_batch,
            "s2l_phenomic_model": model_args.s2l_phenomic_model, **{k: getattr(train_args, k) for k in keys}}


def _refuse_sharded_strategies(accelerator) -> None:
    from accelerate.utils import DistributedType

    if accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        raise ValueError(f"cloome train checkpoints without pickle and supports data parallelism (DDP), not "
                         f"{accelerator.distributed_type.value}: the published model has 29-37 M parameters, so "
                         "sharding saves nothing; run accelerate config without FSDP / DeepSpeed")


def _claim_output_dir(accelerator, train_args) -> OutputLock | None:
    """Lock the output folder (main process) and refuse to mix with another run's files in it."""
    out = train_args.output_dir
    lock = None
    if accelerator.is_main_process:
        lock = OutputLock(out, "cloome train").acquire()
        found = [name for name in RUN_ARTIFACTS if os.path.exists(os.path.join(out, name))]
        if found and not (train_args.resume_from_checkpoint or train_args.overwrite_output_dir):
            lock.release()
            raise ValueError(f"{out} already holds a training run ({', '.join(found)}); resume it with "
                             "--resume_from_checkpoint latest, replace it with --overwrite_output_dir, or use a new "
                             "--output_dir")
        if found and train_args.overwrite_output_dir and not train_args.resume_from_checkpoint:
            for name in found:
                path = os.path.join(out, name)
                shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
        clean_incomplete_checkpoints(os.path.join(out, "checkpoints"))
    accelerator.wait_for_everyone()
    return lock


def _open_logs(run: Run) -> None:
    model_args, data_args, train_args = run.args
    if run.accelerator.is_main_process:
        _truncate_log(run.log_path, run.state.step)
    if train_args.audit_log:
        folder = os.path.join(train_args.output_dir, "audit")
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"rank{run.accelerator.process_index}.jsonl")
        _truncate_log(path, run.state.step)
        run.audit = open(path, "a", buffering=1, encoding="utf-8")  # line-buffered: survives a SIGKILL
    if train_args.report_to != "none":
        flat = {k: str(v) if isinstance(v, (list, tuple)) or v is None else v
                for k, v in resolved_arguments(model_args, data_args, train_args).items()}
        run.accelerator.init_trackers("cloome", config=flat)


def _log_step_of(line: str, path: str) -> int:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path} has a line that is not a cloome train log record: {line[:80]!r}") from err


def _truncate_log(path: str, step: int) -> None:
    """Keep the records of steps <= ``step`` (the resumed step): later steps are redone, not repeated."""
    kept = []
    if step and os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            kept = [line for line in f if line.strip() and _log_step_of(line, path) <= step]
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(kept)


# ------------------------------------------------------------------------------------------------- one step
def batch_pixel_values(run: Run, batch: dict[str, Any]) -> torch.Tensor:
    """The batch's ``pixel_values``: augmented by the loader, or (``--augment_on_device``) here, on the device, from
    its uint8 ``images`` and per-site ``seeds`` by the same transform's batched path."""
    if run.device_transform is None:
        pixels = batch["pixel_values"]
    else:
        pixels = run.device_transform(batch["images"], seeds=batch["seeds"], batched=True)
    if run.train_args.channels_last:
        pixels = pixels.contiguous(memory_format=torch.channels_last)
    return pixels


def train_step(run: Run, batch: dict[str, Any]) -> torch.Tensor:
    """Forward, backward and update on one global batch; returns the global loss (a device scalar).

    Nothing here waits for the device except on logging, evaluation, checkpoint and epoch-end steps: a non-finite
    loss or gradient is caught on the device (:class:`~cloome_hf.train.guard.NonFiniteGuard` undoes that step and
    every later one), and at the next such step the run saves the last good state and raises
    :class:`TrainingStopped` naming the bad step.
    """
    accelerator, model, raw_model = run.accelerator, run.model, run.raw_model
    pixels = batch_pixel_values(run, batch)
    buffers = run.guard.snapshot_buffers()  # the forward pass updates the batch-norm running statistics
    with accelerator.autocast():
        loss = model(pixel_values=pixels, fingerprints=batch["fingerprints"], return_loss=True,
                     **loss_inputs(run, batch, pixels)).loss
    global_loss = accelerator.reduce(loss.detach(), "mean")
    accelerator.backward(loss)
    norm = accelerator.clip_grad_norm_(model.parameters(), run.train_args.max_grad_norm or float("inf"))
    run.guard.record(global_loss, None if accelerator.mixed_precision == "fp16" else norm)  # fp16: the scaler skips
    state = run.guard.snapshot_state()
    run.optimizer.step()
    run.guard.undo_if_skipped(buffers, state)
    run.scheduler.step()
    run.optimizer.zero_grad()
    raw_model.clamp_logit_scale()
    run.state.advance(run.steps_per_epoch)
    run._seen += pixels.shape[0] * accelerator.num_processes
    if run.audit is not None:
        run.audit.write(json.dumps({"step": run.state.step, "rows": list(batch["sample_key"])}) + "\n")
    run.progress.update(1)
    if run.is_check_step():
        _stop_if_non_finite(run)
        _log_step(run, global_loss)
    return global_loss


def _stop_if_non_finite(run: Run) -> None:
    """At a check step: if a step was non-finite, rewind to the last good state, save it and stop."""
    problem, skipped = run.guard.read()
    if problem is None:
        return
    run.guard.rewind_host_state(skipped, run.scheduler)
    run.state.rewind(skipped, run.steps_per_epoch)
    saved = run.last_checkpoint  # this run's checkpoint of that very step, if it wrote one
    path = saved[1] if saved is not None and saved[0] == run.state.step and os.path.isdir(saved[1]) \
        else checkpoint(run)
    raise TrainingStopped(f"non-finite {problem} at step {run.state.step + 1}; the last good state "
                          f"(step {run.state.step}) is in {path}")


def loss_inputs(run: Run, batch: dict[str, Any], pixels: torch.Tensor) -> dict[str, torch.Tensor]:
    """The model inputs beyond pixels and fingerprints: the doses for a dose-conditioned model, and S2L's phenomic
    embeddings from ``--s2l_phenomic_model`` (its image embeddings of the same pixel values)."""
    inputs = {}
    if run.raw_model.config.molecule_config.concentration_encoding:
        inputs["concentrations"] = batch["concentrations"]
    if run.phenomic_model is not None:
        with torch.no_grad():
            inputs["phenomic_embeds"] = run.phenomic_model.get_image_features(pixels).pooler_output
    return inputs


def _log_step(run: Run, loss: torch.Tensor) -> None:
    step = run.state.step
    if step % run.train_args.logging_steps and step != run.total_steps:
        return
    loss = loss.item()
    inv_tau = run.raw_model.logit_scale.exp().item()
    rate = run._seen / (time.perf_counter() - run._tick)
    write_log(run, {"step": step, "epoch": step / run.steps_per_epoch, "loss": loss, "lr": _lr_used(run.scheduler),
                    "inverse_temperature": inv_tau, "images_per_second": rate})
    run.progress.set_postfix(loss=f"{loss:.3f}", lr=f"{run.scheduler.get_last_lr()[0]:.2e}",
                             inv_tau=f"{inv_tau:.1f}", img_s=f"{rate:.0f}")


def _lr_used(scheduler) -> float:
    """The lr the step just taken used (the scheduler has already advanced to the next one)."""
    return scheduler.lr_lambdas[0](scheduler.last_epoch - 1) * scheduler.base_lrs[0]


def write_log(run: Run, record: dict[str, Any]) -> None:
    if run.accelerator.is_main_process:
        with open(run.log_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
    run.accelerator.log({k: v for k, v in record.items() if k not in ("step", "epoch")}, step=record["step"])


# ------------------------------------------------------------------------------------------------- evaluation
def validate(run: Run) -> dict[str, float]:
    """Validation retrieval through the one encoder path; saves ``best/`` when the mean top-1 improves."""
    accelerator = run.accelerator
    autocast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(accelerator.mixed_precision)
    embeddings = encode_dataset(run.raw_model, run.processor, run.data.validation, fingerprints=run.data.fingerprints,
                                batch_size=run.train_args.per_device_eval_batch_size, autocast_dtype=autocast,
                                accelerator=accelerator)
    groups = embeddings.metadata["inchikey"].to_numpy()
    metrics = retrieval_accuracy(embeddings.image, embeddings.molecule[embeddings.molecule_index], groups=groups)
    metrics = {f"eval/{k}": v for k, v in metrics.items()}
    run.last_metrics, run.last_embeddings = metrics, embeddings
    write_log(run, {"step": run.state.step, "epoch": run.state.step / run.steps_per_epoch, **metrics})
    run.log(f"step {run.state.step}: " + ", ".join(f"{k[5:]}={v:.3f}" for k, v in metrics.items() if "top" in k))
    score = (metrics["eval/image_to_molecule_top1"] + metrics["eval/molecule_to_image_top1"]) / 2
    if score > run.state.best_score:
        run.state.best_score = score
        if accelerator.is_main_process:
            save_model_folder(run, os.path.join(run.train_args.output_dir, "best"), {**metrics, "step": run.state.step})
    return metrics


def checkpoint(run: Run) -> str:
    path = save_checkpoint(run.accelerator, run.checkpoint_dir, {**asdict(run.state), "settings": run.settings},
                           run.raw_model, run.optimizer, run.scheduler, run.train_args.save_total_limit)
    run.last_checkpoint = (run.state.step, path)
    return path


# ------------------------------------------------------------------------------------------------- outputs
def training_config(run: Run) -> dict[str, Any]:
    """The resolved arguments and the recipe values they took (``training_config.json``, the model card)."""
    model_args, data_args, train_args = run.args
    return {"preset": train_args.preset or "demo", "recipe_values_used": dict(run.recipe_used),
            "arguments": resolved_arguments(model_args, data_args, train_args)}


def save_model_folder(run: Run, folder: str, metrics: dict[str, Any]) -> None:
    """A ``from_pretrained`` folder: model, processor, ``training_config.json`` and the model card."""
    from ..publish.card import render_model_card

    os.makedirs(folder, exist_ok=True)
    run.raw_model.save_pretrained(folder)
    run.processor.save_pretrained(folder)
    config = training_config(run)
    with open(os.path.join(folder, TRAINING_CONFIG_FILE), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
    card = render_model_card(
        "model", model_id=os.path.basename(os.path.abspath(folder)), source="trained", config=run.raw_model.config,
        processor={"image_processor": run.processor.image_processor.to_dict(),
                   "featurizer": run.processor.featurizer.to_dict()},
        training_config={"preset": config["preset"], "dataset": config["arguments"]["dataset"],
                         **config["recipe_values_used"],
                         **{k: config["arguments"][k] for k in _CARD_ARGUMENTS}},
        metrics=metrics,
    )
    with open(os.path.join(folder, "README.md"), "w", encoding="utf-8") as f:
        f.write(card)


_CARD_ARGUMENTS = ("learning_rate", "weight_decay", "num_train_epochs", "max_steps", "warmup_steps",
                   "restart_epochs", "per_device_train_batch_size", "seed", "mixed_precision")


def finish(run: Run) -> dict[str, Any]:
    """Write the final model and results; returns them (see :func:`run_training`)."""
    if run.audit is not None:
        run.audit.write(json.dumps({"final_parameter_digest": parameter_digest(run.raw_model)}) + "\n")
        run.audit.close()
    if run.last_embeddings is None:  # resumed at the very end: nothing was trained, but report the final model
        validate(run)
    metrics, embeddings, baseline = run.last_metrics, run.last_embeddings, run.random_baseline
    if run.accelerator.is_main_process:
        out = run.train_args.output_dir
        save_model_folder(run, out, metrics)
        with open(os.path.join(out, "all_results.json"), "w", encoding="utf-8") as f:
            json.dump({"global_step": run.state.step, **metrics, **{f"random/{k}": v for k, v in baseline.items()},
                       **run.data.results()}, f, indent=2)
        run.log("final validation retrieval (random in brackets): " + ", ".join(
            f"{k[5:]}={v:.3f} [{baseline[k[5:]]:.3f}]" for k, v in metrics.items()))
    run.accelerator.wait_for_everyone()
    run.accelerator.end_training()
    return {"global_step": run.state.step, "metrics": metrics, "random_baseline": baseline,
            "validation_image_embeds": embeddings.image,
            "validation_molecule_embeds": embeddings.molecule[embeddings.molecule_index]}


def run_training(model_args, data_args, train_args, recipe_used: dict[str, Any]) -> dict[str, Any]:
    """Train with parsed ``cloome train`` arguments.

    Returns ``{"global_step", "metrics", "random_baseline", "validation_image_embeds",
    "validation_molecule_embeds"}``: the final validation metrics and the L2-normalised validation embeddings
    (one row per validation site, in dataset order).
    """
    run = setup_run(model_args, data_args, train_args, recipe_used)
    try:
        return _train(run)
    finally:
        if run.lock is not None:
            run.lock.release()


def _train(run: Run) -> dict[str, Any]:
    model_args, data_args, train_args = run.args
    processes = run.accelerator.num_processes
    run.log(f"{run.total_steps} steps of {train_args.per_device_train_batch_size * processes} pairs "
            f"({run.steps_per_epoch} per epoch) on {processes} process(es); random retrieval top-1: image->molecule {run.random_baseline['image_to_molecule_top1']:.4f}, "
            f"molecule->image {run.random_baseline['molecule_to_image_top1']:.4f}")
    run.progress = tqdm(total=run.total_steps, initial=run.state.step, desc="train", dynamic_ncols=True,
                        disable=not run.accelerator.is_main_process)
    run.model.train()
    while run.state.step < run.total_steps:
        for batch in run.epoch_batches():
            train_step(run, batch)
            step = run.state.step
            if step % run.eval_every == 0 or step == run.total_steps:
                validate(run)
            if step % run.save_every == 0 or step == run.total_steps:
                checkpoint(run)
            if step >= run.total_steps:
                break
    run.progress.close()
    return finish(run)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """``cloome train``: parse the arguments and train (see :mod:`cloome_hf.train.params`)."""
    return run_training(*parse_args(argv))


__all__ = ["Run", "TrainState", "TrainingStopped", "checkpoint", "finish", "main", "run_training", "setup_run",
           "train_step", "validate"]
