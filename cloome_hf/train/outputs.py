"""What a training run leaves: the ``from_pretrained`` folders (final and ``best/``) with ``training_config.json``
and the model card, ``all_results.json`` and the returned results."""

from __future__ import annotations

import json
import os
from typing import Any


from ..recipes import TRAINING_CONFIG_FILE
from ..safe_io import atomic_write_json, atomic_write_text
from .checkpoint import (
    parameter_digest,
)
from .params import resolved_arguments

from .state import Run


def training_config(run: Run) -> dict[str, Any]:
    """The resolved arguments and the recipe values they took (``training_config.json``, the model card), and the
    process settings the run had (:func:`cloome_hf.runtime.runtime_report`: the input pipeline's fast path)."""
    from ..runtime import runtime_report

    model_args, data_args, train_args = run.args
    return {"preset": train_args.preset or "demo", "recipe_values_used": dict(run.recipe_used),
            "arguments": resolved_arguments(model_args, data_args, train_args), "runtime": runtime_report()}


def save_model_folder(run: Run, folder: str, metrics: dict[str, Any]) -> None:
    """A ``from_pretrained`` folder: model, processor, ``training_config.json`` and the model card."""
    from ..publish.card import render_model_card

    os.makedirs(folder, exist_ok=True)
    run.raw_model.save_pretrained(folder)
    run.processor.save_pretrained(folder)
    config = training_config(run)
    atomic_write_json(os.path.join(folder, TRAINING_CONFIG_FILE), config)
    from ..data.loader import column_values
    from ..evaluation.training_overlap import write_training_molecules

    # cloome evaluate reads these to say how many of its molecules the model has seen in training
    write_training_molecules(folder, column_values(run.data.train, "inchikey"),
                             column_values(run.data.validation, "inchikey"), config["arguments"].get("dataset"))
    card = render_model_card(
        "model", model_id=os.path.basename(os.path.abspath(folder)), source="trained", config=run.raw_model.config,
        processor={"image_processor": run.processor.image_processor.to_dict(),
                   "featurizer": run.processor.featurizer.to_dict()},
        training_config={"preset": config["preset"], "dataset": config["arguments"]["dataset"],
                         **config["recipe_values_used"],
                         **{k: config["arguments"][k] for k in _CARD_ARGUMENTS}},
        metrics=metrics,
    )
    atomic_write_text(os.path.join(folder, "README.md"), card)


_CARD_ARGUMENTS = ("learning_rate", "weight_decay", "num_train_epochs", "max_steps", "warmup_steps",
                   "restart_epochs", "per_device_train_batch_size", "seed", "mixed_precision")


def finish(run: Run) -> dict[str, Any]:
    """Write the final model and results (of the last validation); returns them (see
    :func:`cloome_hf.train.loop.run_training`)."""
    if run.audit is not None:
        run.audit.write(json.dumps({"final_parameter_digest": parameter_digest(run.raw_model)}) + "\n")
        run.audit.close()
    metrics, embeddings, baseline = run.last_metrics, run.last_embeddings, run.random_baseline
    if run.accelerator.is_main_process:
        out = run.train_args.output_dir
        save_model_folder(run, out, metrics)
        atomic_write_json(os.path.join(out, "all_results.json"),
                          {"global_step": run.state.step, **metrics, **{f"random/{k}": v for k, v in baseline.items()},
                           **run.data.results()})
        run.log("final validation retrieval (random in brackets): " + ", ".join(
            f"{k[5:]}={v:.3f} [{baseline[k[5:]]:.3f}]" for k, v in metrics.items()))
    run.accelerator.wait_for_everyone()
    run.accelerator.end_training()
    return {"global_step": run.state.step, "metrics": metrics, "random_baseline": baseline,
            "validation_image_embeds": embeddings.image,
            "validation_molecule_embeds": embeddings.molecule[embeddings.molecule_index]}


__all__ = ["finish", "save_model_folder", "training_config"]
