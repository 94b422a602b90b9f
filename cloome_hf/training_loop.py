"""The ``accelerate`` training loop behind ``scripts/train.py`` (arguments are parsed there).

One step = one global batch of ``per_device_train_batch_size x num_processes`` pairs, cut into per-process
slices (``split_batches=True``); the loss gathers the embeddings of all processes, so it is the loss of the
global batch, and with ``--sync_batchnorm`` a step is numerically the same on any number of processes.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict
from typing import Any, Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from .distributed import convert_sync_batchnorm
from .training import (
    EpochBatchSampler,
    PairDataset,
    build_optimizer,
    build_scheduler,
    clean_incomplete_checkpoints,
    parameter_digest,
    random_retrieval_baseline,
    read_trainer_state,
    resolve_checkpoint,
    save_checkpoint,
)

TRAIN_LOG = "train_log.jsonl"


class TrainingStopped(RuntimeError):
    """Training stopped early (non-finite loss); the message names the step and the saved checkpoint."""


def _build_processor(data_args, model_args):
    from .featurization_cloome import MoleculeFeaturizer
    from .image_processing_cloome import CloomeImageProcessor
    from .processing_cloome import CloomeProcessor

    height, width = data_args.image_size
    return CloomeProcessor(
        image_processor=CloomeImageProcessor(do_center_crop=True, crop_size={"height": height, "width": width}),
        featurizer=MoleculeFeaturizer(kind=model_args.fingerprint_kind, fingerprint_size=model_args.fingerprint_size),
    )


@torch.no_grad()
def embed_validation(model, processor, val_ds, fingerprints, accelerator, batch_size: int):
    """``(image_embeds, molecule_embeds)`` (N, d) float32 numpy of every validation site, in row order.

    Images go through the saved processor (centre crop + normalisation), so a ``from_pretrained`` of the output
    folder reproduces them. Rows are split between processes and gathered.
    """
    from accelerate.utils import gather_object

    from .data.schema import decode_row

    model.eval()
    rows = list(range(len(val_ds)))
    chunks = [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
    images_col = val_ds.select_columns(["image", "image_shape"])
    results = []
    with accelerator.split_between_processes(chunks) as mine:
        for chunk in mine:
            sites = np.stack([decode_row(images_col[r]) for r in chunk])
            pixels = processor.image_processor(sites, return_tensors="pt")["pixel_values"].to(accelerator.device)
            fps = torch.as_tensor(fingerprints[chunk], device=accelerator.device)
            with accelerator.autocast():
                img = model.get_image_features(pixels).pooler_output
                mol = model.get_molecule_features(fps).pooler_output
            results.append((chunk, img.float().cpu().numpy(), mol.float().cpu().numpy()))
    model.train()
    gathered = gather_object(results) if accelerator.num_processes > 1 else results
    order = np.concatenate([np.asarray(c) for c, _, _ in gathered])
    images = np.concatenate([i for _, i, _ in gathered])[np.argsort(order)]
    molecules = np.concatenate([m for _, _, m in gathered])[np.argsort(order)]
    return images, molecules


def _save_pretrained(model, processor, folder, data_args, train_args, metrics, preset_used):
    from .model_card import render_model_card

    os.makedirs(folder, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    training_config = {"preset": train_args.preset or "demo", "dataset": data_args.dataset, **preset_used}
    for key in ("learning_rate", "weight_decay", "num_train_epochs", "max_steps", "warmup_steps", "restart_epochs",
                "per_device_train_batch_size", "seed", "mixed_precision"):
        training_config[key] = getattr(train_args, key)
    card = render_model_card(
        "model", model_id=os.path.basename(os.path.abspath(folder)), source="trained", config=model.config,
        processor={"image_processor": processor.image_processor.to_dict(), "featurizer": processor.featurizer.to_dict()},
        training_config=training_config, metrics=metrics,
    )
    with open(os.path.join(folder, "README.md"), "w", encoding="utf-8") as f:
        f.write(card)


def _cpu_only_multiprocess() -> bool:
    """A multi-process launch (``accelerate launch --multi_gpu``, torchrun) on a machine without accelerators.

    accelerate only sets up its gloo ``MULTI_CPU`` mode when asked for ``cpu=True``; without it every process
    would silently train alone.
    """
    from accelerate.utils import is_npu_available, is_xpu_available

    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1 or "LOCAL_RANK" in os.environ
    return launched and not (torch.cuda.is_available() or is_xpu_available() or is_npu_available())


def run_training(model_args, data_args, train_args, preset_used: dict, load_dataset: Callable,
                 build_model: Callable) -> dict[str, Any]:
    """Train with the parsed ``scripts/train.py`` arguments.

    Args:
        preset_used: the hyper-parameters filled in from the preset (printed, and recorded in the model card).
        load_dataset: ``(data_args, log) -> (train, validation)`` datasets in the Cell Painting schema.
        build_model: ``(model_args, data_args) -> CloomeModel``.

    Returns:
        ``{"global_step", "metrics", "random_baseline", "validation_image_embeds", "validation_molecule_embeds"}``
        (final validation metrics and the un-normalised validation embeddings, rows in validation order).
    """
    from accelerate import Accelerator, DataLoaderConfiguration
    from accelerate.utils import ProjectConfiguration, set_seed

    from .data.molecules import FingerprintTable
    from .evaluation.retrieval import retrieval_accuracy
    from .transforms import CloomeTrainTransform

    out_dir = train_args.output_dir
    ckpt_dir = os.path.join(out_dir, "checkpoints")
    report_to = None if train_args.report_to == "none" else train_args.report_to.split(",")
    accelerator = Accelerator(
        cpu=_cpu_only_multiprocess(),
        mixed_precision=train_args.mixed_precision,
        log_with=report_to,
        project_config=ProjectConfiguration(project_dir=out_dir, logging_dir=os.path.join(out_dir, "logs")),
        dataloader_config=DataLoaderConfiguration(split_batches=True),
    )
    main = accelerator.is_main_process

    def log(message: str) -> None:
        if main:
            tqdm.write(message)

    set_seed(train_args.seed)
    log(f"preset {train_args.preset or 'demo'}: " + ", ".join(f"{k}={v}" for k, v in sorted(preset_used.items())))
    if main:
        os.makedirs(out_dir, exist_ok=True)
        clean_incomplete_checkpoints(ckpt_dir)

    # ---------------------------------------------------------------- data
    processor = _build_processor(data_args, model_args)
    with accelerator.main_process_first():
        train_ds, val_ds = load_dataset(data_args, log)
    table = FingerprintTable.from_molecules(
        list(train_ds["inchikey"]) + list(val_ds["inchikey"]), list(train_ds["smiles"]) + list(val_ds["smiles"]),
        processor.featurizer,
    )
    train_fps, val_fps = table.lookup(list(train_ds["inchikey"])), table.lookup(list(val_ds["inchikey"]))
    val_groups = np.asarray(list(val_ds["inchikey"]))
    log(f"{len(train_ds)} training sites ({len(set(train_ds['inchikey']))} molecules), {len(val_ds)} validation "
        f"sites ({len(set(val_groups))} molecules)")
    ip = processor.image_processor
    resized_crop = (tuple(data_args.random_resized_crop_scale) or None) if data_args.augment else None
    # With a resized crop, image_size is what the whole site is resampled to (the bioactivity recipe, as
    # torchvision's RandomResizedCrop); otherwise it is a plain random crop window.
    transform = CloomeTrainTransform(
        crop_size=None if resized_crop else data_args.image_size,
        output_size=data_args.image_size if resized_crop else None,
        random_resized_crop_scale=resized_crop,
        flips=data_args.augment, rot90=data_args.augment, image_mean=ip.image_mean, image_std=ip.image_std,
    ).train(data_args.augment)
    global_batch = train_args.per_device_train_batch_size * accelerator.num_processes
    sampler = EpochBatchSampler(len(train_ds), global_batch, train_args.seed,
                                list(train_ds["inchikey"]) if data_args.unique_molecules_per_batch else None)
    loader = torch.utils.data.DataLoader(PairDataset(train_ds, train_fps, transform), batch_sampler=sampler,
                                         num_workers=data_args.dataloader_num_workers)
    steps_per_epoch = len(sampler)
    total_steps = train_args.max_steps if train_args.max_steps > 0 else train_args.num_train_epochs * steps_per_epoch
    eval_every = train_args.eval_steps or steps_per_epoch
    save_every = train_args.save_steps or steps_per_epoch

    # ---------------------------------------------------------------- model and optimiser
    model = build_model(model_args, data_args)
    processor.check_model_compatibility(model.config)  # e.g. a --model_name_or_path with other fingerprints
    if train_args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if train_args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if train_args.sync_batchnorm and accelerator.num_processes > 1:
        model = convert_sync_batchnorm(model, accelerator.device)
    optimizer = build_optimizer(model, train_args.learning_rate, train_args.weight_decay,
                                (train_args.adam_beta1, train_args.adam_beta2), train_args.adam_epsilon)
    scheduler = build_scheduler(optimizer, total_steps, train_args.warmup_steps, steps_per_epoch,
                                train_args.restart_epochs)
    if train_args.torch_compile:
        model = torch.compile(model)
    # The scheduler is stepped by hand once per global step (not prepared: accelerate would step it per process).
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    accelerator.register_for_checkpointing(scheduler)
    raw_model = accelerator.unwrap_model(model)

    step, epoch, in_epoch, best = 0, 0, 0, -1.0
    if train_args.resume_from_checkpoint:
        path = resolve_checkpoint(train_args.resume_from_checkpoint, ckpt_dir)
        if path is None:
            log(f"no checkpoint in {ckpt_dir}; starting from scratch")
        else:
            accelerator.load_state(path)
            state = read_trainer_state(path)
            step, epoch, in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
            best = state["best_score"]
            log(f"resumed from {path} at step {step}")
    log_path = os.path.join(out_dir, TRAIN_LOG)
    if main:
        _truncate_log(log_path, step)
    audit = None
    if train_args.audit_log:
        os.makedirs(os.path.join(out_dir, "audit"), exist_ok=True)
        audit_path = os.path.join(out_dir, "audit", f"rank{accelerator.process_index}.jsonl")
        _truncate_log(audit_path, step)
        audit = open(audit_path, "a", buffering=1, encoding="utf-8")  # line-buffered: survives a SIGKILL
    if report_to:
        flat = {k: str(v) if isinstance(v, (list, tuple)) or v is None else v
                for a in (model_args, data_args, train_args) for k, v in asdict(a).items()}
        accelerator.init_trackers("cloome", config=flat)
    random_baseline = random_retrieval_baseline(val_groups)

    def write_log(record: dict) -> None:
        if main:
            with open(log_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        accelerator.log({k: v for k, v in record.items() if k not in ("step", "epoch")}, step=record["step"])

    def evaluate() -> tuple[dict, np.ndarray, np.ndarray]:
        images, molecules = embed_validation(raw_model, processor, val_ds, val_fps, accelerator,
                                             train_args.per_device_eval_batch_size)
        metrics = retrieval_accuracy(images, molecules, groups=val_groups)
        return {f"eval/{k}": v for k, v in metrics.items()}, images, molecules

    def checkpoint(at_step: int) -> str:
        state = {"epoch": epoch, "batch_in_epoch": in_epoch, "best_score": best}
        return save_checkpoint(accelerator, ckpt_dir, at_step, state, train_args.save_total_limit)

    log(f"{total_steps} steps of {global_batch} pairs ({steps_per_epoch} per epoch) on {accelerator.num_processes} "
        f"process(es); random retrieval top-1: image->molecule {random_baseline['image_to_molecule_top1']:.4f}, "
        f"molecule->image {random_baseline['molecule_to_image_top1']:.4f}")
    progress = tqdm(total=total_steps, initial=step, disable=not main, desc="train", dynamic_ncols=True)
    model.train()
    tick, seen, metrics, val_embeds = time.perf_counter(), 0, {}, None
    check_grads = accelerator.mixed_precision != "fp16"  # the fp16 grad scaler skips inf steps by itself
    while step < total_steps:
        sampler.select_epoch(epoch)
        epoch_loader = accelerator.skip_first_batches(loader, in_epoch) if in_epoch else loader
        for batch in epoch_loader:
            rows = batch.pop("row")
            pixels = batch["pixel_values"]
            if train_args.channels_last:
                pixels = pixels.contiguous(memory_format=torch.channels_last)
            # BatchNorm updates its running statistics in the forward pass: keep them to undo a bad step.
            buffers = [t.detach().clone() for t in raw_model.buffers()]
            with accelerator.autocast():
                loss = model(pixel_values=pixels, fingerprints=batch["fingerprints"], return_loss=True).loss
            global_loss = accelerator.reduce(loss.detach(), "mean").item()
            bad = not math.isfinite(global_loss)
            if not bad:
                accelerator.backward(loss)
                norm = accelerator.clip_grad_norm_(model.parameters(), train_args.max_grad_norm or float("inf"))
                bad = check_grads and not math.isfinite(float(norm))
            if bad:  # undo this step's forward; the state is then exactly that after the previous step
                optimizer.zero_grad()
                with torch.no_grad():
                    for t, saved in zip(raw_model.buffers(), buffers):
                        t.copy_(saved)
                path = checkpoint(step)
                progress.close()
                raise TrainingStopped(f"non-finite {'loss' if not math.isfinite(global_loss) else 'gradient'} "
                                      f"at step {step + 1}; the last good state (step {step}) is in {path}")
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            raw_model.clamp_logit_scale()
            step += 1
            in_epoch += 1
            if in_epoch == len(sampler):
                epoch, in_epoch = epoch + 1, 0
            seen += pixels.shape[0] * accelerator.num_processes
            if audit is not None:
                audit.write(json.dumps({"step": step, "rows": rows.tolist()}) + "\n")
            inv_tau = raw_model.logit_scale.exp().item()
            lr = scheduler.get_last_lr()[0]
            if step % train_args.logging_steps == 0 or step == total_steps:
                rate = seen / (time.perf_counter() - tick)
                write_log({"step": step, "epoch": step / steps_per_epoch, "loss": global_loss,
                           "lr": _lr_used(scheduler),
                           "inverse_temperature": inv_tau, "images_per_second": rate})
                progress.set_postfix(loss=f"{global_loss:.3f}", lr=f"{lr:.2e}", inv_tau=f"{inv_tau:.1f}",
                                     img_s=f"{rate:.0f}")
            progress.update(1)
            if step % eval_every == 0 or step == total_steps:
                metrics, val_images, val_molecules = evaluate()
                val_embeds = (val_images, val_molecules)
                score = (metrics["eval/image_to_molecule_top1"] + metrics["eval/molecule_to_image_top1"]) / 2
                write_log({"step": step, "epoch": step / steps_per_epoch, **metrics})
                log(f"step {step}: " + ", ".join(f"{k[5:]}={v:.3f}" for k, v in metrics.items() if "top" in k))
                if score > best:
                    best = score
                    if main:
                        _save_pretrained(raw_model, processor, os.path.join(out_dir, "best"), data_args, train_args,
                                         {**metrics, "step": step}, preset_used)
            if step % save_every == 0 or step == total_steps:
                checkpoint(step)
            if step >= total_steps:
                break
    progress.close()
    if audit is not None:
        audit.write(json.dumps({"final_parameter_digest": parameter_digest(raw_model)}) + "\n")
        audit.close()
    if val_embeds is None:  # resumed at the very end: nothing was trained, but report the final model
        metrics, *val_embeds = evaluate()
    results = {"global_step": step, "metrics": metrics, "random_baseline": random_baseline,
               "validation_image_embeds": val_embeds[0], "validation_molecule_embeds": val_embeds[1]}
    if main:
        _save_pretrained(raw_model, processor, out_dir, data_args, train_args, metrics, preset_used)
        with open(os.path.join(out_dir, "all_results.json"), "w", encoding="utf-8") as f:
            json.dump({"global_step": step, **metrics,
                       **{f"random/{k}": v for k, v in random_baseline.items()}}, f, indent=2)
        log("final validation retrieval (random in brackets): " + ", ".join(
            f"{k[5:]}={v:.3f} [{random_baseline[k[5:]]:.3f}]" for k, v in metrics.items()))
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return results


def _truncate_log(path: str, step: int) -> None:
    """Keep the records of steps <= ``step`` (the resumed step): later steps are redone, not repeated."""
    kept = []
    if step and os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            kept = [line for line in f if line.strip() and json.loads(line).get("step", step + 1) <= step]
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(kept)


def _lr_used(scheduler) -> float:
    """The lr the step just taken used (the scheduler has already advanced to the next one)."""
    return scheduler.lr_lambdas[0](scheduler.last_epoch - 1) * scheduler.base_lrs[0]


__all__ = ["TrainingStopped", "embed_validation", "run_training"]
