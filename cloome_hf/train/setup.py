"""Setting up a training run: accelerator, processor, model, data, optimiser and schedule; the output folder
claimed (locked, never mixed with another run) and a checkpoint resumed (its settings checked)."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.loader import column_values
from ..distributed import convert_sync_batchnorm
from ..evaluation.stats import random_retrieval_baseline
from ..output_folder import changed_fields, dataset_digest, refuse_changed_settings
from ..recipes import model_config, recipe_processor
from ..safe_io import OutputLock
from .checkpoint import (
    clean_incomplete_checkpoints,
    load_checkpoint,
    read_trainer_state,
    resolve_checkpoint,
)
from .data import TrainingData, cut_by_sampler, load_training_data, training_loader, training_transform
from .guard import NonFiniteGuard
from .optim import build_optimizer, build_scheduler
from .params import resolve_augment_on_device, resolved_arguments

from .state import RUN_ARTIFACTS, TRAIN_LOG, Run, TrainState


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
    """The processor saved with the model (:func:`cloome_hf.recipes.recipe_processor`): the recipe's fingerprints,
    a centre crop to the training size, a pretrained tower's input convention; fine-tuning a saved model with
    another molecule tower keeps that model's featuriser (its graph schema or tokenizer)."""
    if model_args.model:
        from ..configuration_cloome import CloomeConfig
        from ..processing_cloome import CloomeProcessor

        if CloomeConfig.from_pretrained(model_args.model).molecule_config.encoder != "mlp":
            saved = CloomeProcessor.from_pretrained(model_args.model)
            fresh = recipe_processor(asdict(model_args), data_args.image_size)
            return CloomeProcessor(image_processor=fresh.image_processor, featurizer=saved.featurizer)
    vision = None if model_args.model else tower_vision_config(model_args, data_args)
    values = {**asdict(model_args), "learnable_logit_scale": model_args.learnable_temperature}
    return recipe_processor(values, data_args.image_size, vision)


def tower_vision_config(model_args, data_args):
    """The vision config of a pretrained tower (whose input convention the processor must follow), else ``None``."""
    if model_args.backbone in (None, "cloome_resnet50"):
        return None
    values = {**asdict(model_args), "learnable_logit_scale": model_args.learnable_temperature}
    vision = model_config(values, data_args.image_size).vision_config
    return vision if vision.tower_preprocessing is not None else None


def apply_tower_options(run_parts: dict, model_args, data_args) -> None:
    """``--freeze_image_tower`` / ``--unfreeze_last`` on the model, and ``--image_features``' cache (which only a
    frozen, un-augmented tower can stand in for)."""
    from ..vision_towers.features import CachedTowerFeatures
    from ..vision_towers.freezing import freeze_image_tower

    model = run_parts["model"]
    if model_args.unfreeze_last and not model_args.freeze_image_tower:
        raise ValueError("--unfreeze_last applies with --freeze_image_tower")
    if model_args.freeze_image_tower:
        freeze_image_tower(model, model_args.unfreeze_last)
    if data_args.image_features is None:
        return
    problems = [why for bad, why in [
        (not model_args.freeze_image_tower, "the tower must be frozen (--freeze_image_tower)"),
        (model_args.unfreeze_last, "no tower block may train (--unfreeze_last 0)"),
        (data_args.augment, "the sites must not be augmented (--augment false): the cache holds un-augmented sites"),
        (model_args.s2l_phenomic_model, "--s2l_phenomic_model needs the pixels")] if bad]
    if problems:
        raise ValueError(f"--image_features {data_args.image_features}: " + "; ".join(problems))
    run_parts["tower_features"] = CachedTowerFeatures(data_args.image_features, model,
                                                      run_parts["processor"].image_processor)


def build_model(model_args, data_args):
    """A fresh model of the resolved recipe, or ``--model`` (at ``--revision``) to start from saved weights."""
    from ..modeling_cloome import CloomeModel

    if model_args.model:
        return CloomeModel.from_pretrained(model_args.model, revision=model_args.revision)
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


def _refuse_bags_that_cannot_run(model_args, data_args, accelerator) -> None:
    if data_args.bag_by in (None, "site"):
        return
    if model_args.s2l_phenomic_model:
        raise ValueError(f"--bag_by {data_args.bag_by} with --s2l_phenomic_model: the phenomic model embeds sites, "
                         "not bags; leave it out (S2L then uses the model's own bag embeddings)")


def _prepare(accelerator, model, optimizer, loader, sliced: bool):
    """``accelerator.prepare``; a loader whose batches the sampler already cut per process (``sliced``) is only
    placed on the device, not sharded again (accelerate would cut its bags' sites or its graphs' atoms by rows)."""
    if not sliced:
        return accelerator.prepare(model, optimizer, loader)
    from accelerate.data_loader import prepare_data_loader

    model, optimizer = accelerator.prepare(model, optimizer)
    loader = prepare_data_loader(loader, accelerator.device, num_processes=1, process_index=0, put_on_device=True,
                                 dispatch_batches=False, non_blocking=True)
    return model, optimizer, loader


def _build_run(accelerator, lock, model_args, data_args, train_args, recipe_used) -> Run:
    processor = build_processor(model_args, data_args)
    log = tqdm.write if accelerator.is_main_process else (lambda message: None)
    log(f"recipe {train_args.recipe or 'demo'}: " + ", ".join(f"{k}={v}" for k, v in sorted(recipe_used.items())))
    with accelerator.main_process_first():
        data = load_training_data(data_args, processor.featurizer, log)
    log(f"{len(data.train)} training sites ({len(set(column_values(data.train, 'inchikey')))} molecules), "
        f"{len(data.validation)} validation sites ({len(set(column_values(data.validation, 'inchikey')))} molecules)")
    if data_args.augment_on_device is None:  # the default: on an accelerator, augment there
        data_args.augment_on_device = resolve_augment_on_device(None, accelerator.device.type)
        log(f"augment_on_device={data_args.augment_on_device} (the default on {accelerator.device.type}"
            + ("; --no_augment_on_device augments in the loader)" if data_args.augment_on_device else ")"))
    global_batch = train_args.per_device_train_batch_size * accelerator.num_processes
    _refuse_bags_that_cannot_run(model_args, data_args, accelerator)
    sliced = cut_by_sampler(data_args, processor.featurizer, accelerator.num_processes)
    slices = dict(num_slices=accelerator.num_processes, slice_index=accelerator.process_index) if sliced else {}
    loader = training_loader(data, data_args, processor.image_processor, global_batch, train_args.seed, **slices)
    steps_per_epoch = len(loader)
    total_steps = train_args.max_steps if train_args.max_steps > 0 else train_args.num_train_epochs * steps_per_epoch

    model = build_model(model_args, data_args)
    processor.check_model_compatibility(model.config)  # e.g. a --model with other fingerprints
    tower_parts = {"model": model, "processor": processor}
    apply_tower_options(tower_parts, model_args, data_args)
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
    model, optimizer, loader = _prepare(accelerator, model, optimizer, loader, sliced)
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
              lock=lock, phenomic_model=phenomic_model, tower_features=tower_parts.get("tower_features"))
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
    # the position is checked against this run before any weights or states are loaded
    TrainState.from_saved(read_trainer_state(path), path, run.steps_per_epoch, run.total_steps)
    saved = load_checkpoint(run.accelerator, path, run.raw_model, run.optimizer, run.scheduler)
    saved["settings"] = {("recipe" if k == "preset" else k): v for k, v in saved["settings"].items()}  # spelt preset until 0.1
    changed = changed_fields(saved["settings"], run.settings)
    if not run.train_args.allow_changed_settings:
        refuse_changed_settings(saved["settings"], run.settings, path, "a checkpoint",
                                "Use the original settings, a new --output_dir, or --allow_changed_settings to "
                                "continue anyway")
    if changed:
        run.log("resuming with changed settings (--allow_changed_settings): " + "; ".join(changed))
    run.state = TrainState.from_saved(saved, path, run.steps_per_epoch, run.total_steps)
    run.log(f"resumed from {path} at step {run.state.step}")


def run_settings(run: Run) -> dict[str, Any]:
    """The settings that decide a run's result; a resume checks them against the checkpoint's."""
    model_args, data_args, train_args = run.args
    config = {k: v for k, v in run.raw_model.config.to_dict().items()
              if not k.startswith("_") and k != "transformers_version"}
    keys = ("learning_rate", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon", "warmup_steps",
            "restart_epochs", "max_grad_norm", "seed", "mixed_precision")
    return {"recipe": train_args.recipe or "demo", "model_config": config,
            "data": dataset_digest(run.data.train, run.data.validation),
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
    logs = [run.log_path] if run.accelerator.is_main_process else []
    audit_path = None
    if train_args.audit_log:
        folder = os.path.join(train_args.output_dir, "audit")
        os.makedirs(folder, exist_ok=True)
        audit_path = os.path.join(folder, f"rank{run.accelerator.process_index}.jsonl")
        logs.append(audit_path)
    # every log read (and a bad line refused) before any is cut: a refused resume leaves them all as they were
    kept = {path: _records_up_to(path, run.state.step) for path in logs}
    for path, lines in kept.items():
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(lines)
    if audit_path is not None:
        run.audit = open(audit_path, "a", buffering=1, encoding="utf-8")  # line-buffered: survives a SIGKILL
    if train_args.report_to != "none":
        flat = {k: str(v) if isinstance(v, (list, tuple)) or v is None else v
                for k, v in resolved_arguments(model_args, data_args, train_args).items()}
        run.accelerator.init_trackers("cloome", config=flat)


def _log_step_of(line: str, path: str) -> int | None:
    """The step of a log record; ``None`` for an end-of-run audit record (with or without its step)."""
    try:
        record = json.loads(line)
        if isinstance(record, dict) and "final_parameter_digest" in record:
            return None
        return int(record["step"])
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path} has a line that is not a cloome train log record: {line[:80]!r}") from err


def _records_up_to(path: str, step: int) -> list[str]:
    """The lines of the records of steps <= ``step`` (the resumed step): later steps are redone, not repeated. A
    finished run's end-of-run record is never kept, even resumed from its last step: the resumed run writes its own.
    Nothing for a fresh run."""
    if not step or not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        steps = [(line, _log_step_of(line, path)) for line in f if line.strip()]
    return [line for line, of in steps if of is not None and of <= step]


# ------------------------------------------------------------------------------------------------- one step


__all__ = ["build_accelerator", "build_model", "build_processor", "run_settings", "setup_run"]
