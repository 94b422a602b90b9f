"""What a training run leaves: the ``from_pretrained`` folders (final and ``best/``) with ``training_config.json``
and the model card, ``all_results.json`` and the returned results."""

from __future__ import annotations

import json
import os
from typing import Any


from ..safe_io import atomic_write_json
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
    return {"recipe": train_args.recipe or "demo", "recipe_values_used": dict(run.recipe_used),
            "arguments": resolved_arguments(model_args, data_args, train_args), "runtime": runtime_report()}


def save_model_folder(run: Run, folder: str, metrics: dict[str, Any]) -> None:
    """A ``from_pretrained`` folder (:func:`~cloome_hf.publish.model_folder.write_model_folder`: model, processor,
    ``training_config.json``, the model card) and the molecules the run trained on."""
    from ..data.loader import column_values
    from ..evaluation.training_overlap import write_training_molecules
    from ..publish.model_folder import write_model_folder

    config = training_config(run)
    write_model_folder(folder, run.raw_model, run.processor, model_id=os.path.basename(os.path.abspath(folder)),
                       training_config=config, metrics=metrics)
    # cloome evaluate reads these to say how many of its molecules the model has seen in training
    write_training_molecules(folder, column_values(run.data.train, "inchikey"),
                             column_values(run.data.validation, "inchikey"), config["arguments"].get("dataset"))


def finish(run: Run) -> dict[str, Any]:
    """Write the final model and results (of the last validation); returns them (see
    :func:`cloome_hf.train.loop.run_training`)."""
    if run.audit is not None:
        # with the step the digest was taken at (a resume drops this record: the resumed run writes its own)
        run.audit.write(json.dumps({"step": run.state.step, "final_parameter_digest": parameter_digest(run.raw_model)})
                        + "\n")
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
