"""The ``accelerate`` training loop of ``cloome train``, in named pieces that read top to bottom.

    run = setup_run(model_args, data_args, train_args, recipe_used)   # data, model, optimiser, resume
    while run.state.step < run.total_steps:
        for batch in run.epoch_batches():                              # the one input path
            train_step(run, batch)                                     # forward, backward, update, log
            if due(eval), validate(run); if due(save), save_checkpoint(...)
    finish(run)                                                        # the from_pretrained folder

One step = one global batch of ``per_device_train_batch_size x num_processes`` pairs, cut into per-process slices
(``split_batches=True``; for bags and graph batches, which cannot be cut by rows, the sampler cuts it by whole
bags / molecules: :func:`~cloome_hf.train.data.cut_by_sampler`); the loss gathers the embeddings of all processes, so it is the loss of the global batch,
and with ``--sync_batchnorm`` a step is numerically the same on any number of processes.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from typing import Any

import torch
from tqdm.auto import tqdm

from ..data.buffers import release_batch
from ..evaluation.retrieval import retrieval_accuracy
from ..inference.encode import encode_dataset
from .checkpoint import (
    save_checkpoint,
)
from .params import parse_args

from .outputs import finish, save_model_folder
from .setup import setup_run
from .state import Run, TrainingStopped


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
    if run.tower_features is None:
        pixels = batch_pixel_values(run, batch)
        images = {"pixel_values": pixels}
    else:  # --image_features: the frozen tower's cached output stands in for running it
        pixels = None
        images = {"tower_features": run.tower_features.features(batch["sample_key"]).to(accelerator.device)}
    buffers = run.guard.snapshot_buffers()  # the forward pass updates the batch-norm running statistics
    if "bag_sizes" in batch:  # --bag_by: the sites of each bag, one molecule per bag
        images["bag_sizes"] = batch["bag_sizes"].to(accelerator.device)
    with accelerator.autocast():
        loss = model(**images, **molecule_inputs(run, batch), return_loss=True,
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
    run._seen += len(batch["sample_key"]) * accelerator.num_processes  # sites (a bag counts its sites)
    if run.audit is not None:
        run.audit.write(json.dumps({"step": run.state.step, "rows": list(batch["sample_key"])}) + "\n")
    release_batch(batch)  # nothing reads the batch again: its worker may reuse the buffers
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


def molecule_inputs(run: Run, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The batch's inputs of the model's molecule tower (fingerprints, graph tensors or token ids)."""
    from ..molecule_tower_kinds import get_molecule_tower

    return {name: batch[name] for name in get_molecule_tower(run.raw_model.config.molecule_config.encoder).input_names}


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
    if run.last_embeddings is None:  # resumed at the very end: nothing was trained, but report the final model
        validate(run)
    return finish(run)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """``cloome train``: parse the arguments and train (see :mod:`cloome_hf.train.params`)."""
    return run_training(*parse_args(argv))


__all__ = ["TrainingStopped", "checkpoint", "main", "run_training", "train_step", "validate"]
