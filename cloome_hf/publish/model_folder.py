"""The one writer of a CLOOME model folder: model, processor, ``training_config.json`` and the model card, in one
shape, for every producer.

    files = write_model_folder(folder, model, processor, model_id="me/cloome-demo",
                               training_config=config, metrics={"val/top1": 0.3})

``cloome train`` (the final folder and ``best/``), ``cloome convert`` and ``cloome push`` (``--local_dir`` and the
pushed repo) all write through :func:`write_model_folder`, so the same model with the same training
configuration gets the same files and the same card whichever command wrote it. ``training_config`` is always
the ``training_config.json`` shape that training records (``recipe``, ``recipe_values_used``, ``arguments``,
``runtime``); the card's hyper-parameter table is derived from it here (:func:`card_training_table`).

The files are written into a staging folder inside ``folder`` first and moved into place, so exactly this
model's files are known (and returned, for a commit), and a folder of an earlier layout loses its weight shards
and its ``training_config.json`` (a model without one must not be published with another's).
"""

from __future__ import annotations

import functools
import glob
import io
import os
import tempfile
from typing import Any, Mapping

from ..recipes import TRAINING_CONFIG_FILE
from ..safe_io import atomic_write_json, atomic_write_text

MODEL_CARD_FILE = "README.md"
#: The bundled example site, drawn for the card of a model that reads its five channels.
EXAMPLE_SITE_PICTURE = "example_site.png"

#: The training arguments the model card's hyper-parameter table shows (besides the recipe values used).
CARD_ARGUMENTS = ("learning_rate", "weight_decay", "num_train_epochs", "max_steps", "warmup_steps",
                  "restart_epochs", "per_device_train_batch_size", "seed", "mixed_precision")

#: Files an earlier model layout in the folder owns that a new one need not overwrite (weight shards, the
#: recorded training configuration).
STALE_PATTERNS = ("model*.safetensors", "model.safetensors.index.json", "pytorch_model*.bin",
                  "pytorch_model.bin.index.json", TRAINING_CONFIG_FILE, EXAMPLE_SITE_PICTURE)


def card_training_table(training_config: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The model card's hyper-parameter table of a ``training_config.json``: the recipe, the
    dataset, the recipe values the run took and the main optimisation arguments."""
    if not training_config:
        return None
    arguments = training_config.get("arguments") or {}
    table = {"recipe": training_config.get("recipe", training_config.get("preset")),  # spelt preset until 0.1
             "dataset": arguments.get("dataset"), **(training_config.get("recipe_values_used") or {})}
    table.update({k: arguments[k] for k in CARD_ARGUMENTS if k in arguments})
    return {k: v for k, v in table.items() if v is not None}


def processor_card_settings(processor) -> dict[str, Any]:
    """The processor section of the card, from the processor itself (what ``from_pretrained`` will load)."""
    return {"image_processor": processor.image_processor.to_dict(), "featurizer": processor.featurizer.to_dict()}


def write_example_site_picture(folder: str, channel_order) -> dict[str, str] | None:
    """Draw the bundled example site into ``folder`` for the card: ``{"file", "legend"}``, or ``None`` for a model
    whose channels are not the example's."""
    from ..channels import CHANNELS, canonical_channel_name
    from ..inference.site_picture import colour_legend

    if sorted(canonical_channel_name(c) for c in channel_order) != sorted(CHANNELS):
        return None
    with open(os.path.join(folder, EXAMPLE_SITE_PICTURE), "wb") as f:
        f.write(_example_site_png(tuple(channel_order)))
    return {"file": EXAMPLE_SITE_PICTURE, "legend": colour_legend(list(channel_order))}


@functools.lru_cache(maxsize=4)
def _example_site_png(channel_order: tuple[str, ...]) -> bytes:
    # drawn once per process and channel order: training writes best/ and the final folder with the same picture
    from ..inference.site_picture import write_site_picture
    from ..resources import example_site

    buffer = io.BytesIO()
    write_site_picture(buffer, example_site(), list(channel_order), max_side=1200)
    return buffer.getvalue()


def write_model_folder(folder: str | os.PathLike, model, processor, *, model_id: str,
                       training_config: Mapping[str, Any] | None = None, source: str = "trained",
                       **card: Any) -> list[str]:
    """Write ``model`` and ``processor`` (``save_pretrained``, safetensors), ``training_config.json`` (when
    given), the example site's picture (:func:`write_example_site_picture`) and ``README.md``
    (:func:`~cloome_hf.publish.card.render_model_card` with ``model_id``, ``source``,
    the model's config, the processor's settings, the card table of ``training_config`` and ``card``: e.g.
    ``metrics``, ``eval_results``, ``recipe``, ``checkpoint``, ``description``, ``datasets``) into ``folder``.

    Returns the folder-relative paths written (``/``-separated, sorted): the files of this model, nothing else
    that lies in ``folder``.
    """
    from .card import render_model_card

    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".writing-model-") as staging:
        picture = write_example_site_picture(staging, processor.image_processor.channel_order)
        text = render_model_card("model", model_id=model_id, source=source, config=model.config,
                                 processor=processor_card_settings(processor),
                                 training_config=card_training_table(training_config), site_picture=picture, **card)
        model.save_pretrained(staging, safe_serialization=True)
        processor.save_pretrained(staging)
        if training_config is not None:
            atomic_write_json(os.path.join(staging, TRAINING_CONFIG_FILE), dict(training_config))
        atomic_write_text(os.path.join(staging, MODEL_CARD_FILE), text)
        written = sorted(os.path.relpath(os.path.join(d, f), staging).replace(os.sep, "/")
                         for d, _, fs in os.walk(staging) for f in fs)
        for pattern in STALE_PATTERNS:
            for stale in glob.glob(os.path.join(glob.escape(folder), pattern)):
                if os.path.basename(stale) not in written:
                    os.remove(stale)
        for name in written:
            target = os.path.join(folder, *name.split("/"))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.replace(os.path.join(staging, *name.split("/")), target)
    return written


__all__ = ["CARD_ARGUMENTS", "EXAMPLE_SITE_PICTURE", "MODEL_CARD_FILE", "card_training_table", "processor_card_settings",
           "write_model_folder"]
