"""Publish a CLOOME model and its embeddings the Hub way.

* **Model repo**: ``save_pretrained`` of the model (safetensors) and the processor, plus ``README.md`` rendered
  from ``model_cards/model.md`` (description, channel order and preprocessing, architecture, training recipe,
  evaluation results from ``results.json`` as the card's ``model-index``, limitations, citation).
* **Dataset repo**: the embeddings written by ``cloome embed`` (configs ``images`` and, when present,
  ``molecules``) pushed with ``datasets`` ``push_to_hub``, whose ``README.md`` is the card rendered from
  ``model_cards/dataset.md`` with the ``configs`` / ``dataset_info`` metadata ``datasets`` maintains.

``local_dir`` variants write the exact repo layout to a folder instead, so that
``CloomeModel.from_pretrained(folder)`` and ``load_dataset(folder, "images")`` read it back. Writing into a
folder of an earlier layout first removes the files that layout owns (its shards, card, side files), so a
smaller store never leaves older shards to be served next to the new ones::

    model_repo/                          dataset_repo/
      README.md                            README.md
      config.json                          images/train-00000-of-00001.parquet
      model.safetensors                    molecules/train-00000-of-00001.parquet
      processor_config.json                thumbnails/train-00000-of-00001.parquet
      (auto-class code files)              embedding_info.json
"""

from __future__ import annotations

import glob
import json
import math
import os
import tempfile
import warnings
from typing import Any, Mapping

from ..inference.store import CONFIGS, load_store, read_info
from ..inference.store import INFO_FILE as EMBEDDING_INFO
from ..inference.thumbnails import THUMBNAILS
from ..safe_io import atomic_write_json, atomic_write_text

SPLIT = "train"
MAX_SHARD_BYTES = 500 << 20  # datasets' push_to_hub default shard size

DATASET_COLUMNS = {
    "sample_key": "unique site id (plate-well-site)",
    "plate": "plate barcode",
    "well": "well position",
    "site": "field of view within the well",
    "inchikey": "InChIKey of the perturbing molecule",
    "smiles": "SMILES of the perturbing molecule",
    "embedding": "L2-normalised CLOOME embedding",
}


# ----------------------------------------------------------------------------------------------- model repo
def write_model_repo(model_dir: str | os.PathLike, out_dir: str | os.PathLike, *, model_id: str,
                     results: str | os.PathLike | Mapping | None = None, eval_dataset_name: str = "cell-painting",
                     eval_dataset_type: str = "cell-painting", eval_split: str | None = "test",
                     description: str | None = None, training_config: Mapping[str, Any] | None = None,
                     datasets: list[str] | None = None, model_revision: str | None = None) -> list[str]:
    """Write the model repo layout of ``model_dir`` (a folder or Hub id, at ``model_revision``) (a saved CloomeModel + CloomeProcessor) into ``out_dir``, with
    :func:`~cloome_hf.publish.model_folder.write_model_folder` (the writer ``cloome train`` uses).

    ``results``: an evaluation ``results.json`` (path or dict) -> the card's ``model-index`` and results table.
    ``training_config``: defaults to the ``training_config.json`` that ``cloome train`` saved in ``model_dir``.
    Returns the repo-relative paths written, sorted.
    """
    from ..processing_cloome import load_model_and_processor
    from ..recipes import read_training_config
    from .card import eval_results_from_json
    from .model_folder import write_model_folder

    model, processor = load_model_and_processor(model_dir, revision=model_revision)
    if training_config is None:
        training_config = read_training_config(model_dir)
    eval_results = None
    if results is not None:
        eval_results = eval_results_from_json(results, dataset_name=eval_dataset_name, dataset_type=eval_dataset_type,
                                              dataset_split=eval_split)
    return write_model_folder(out_dir, model, processor, model_id=model_id, training_config=training_config,
                              description=description, eval_results=eval_results, datasets=datasets)


def push_model(model_dir: str | os.PathLike, repo_id: str, *, private: bool = False, token: str | None = None,
               revision: str | None = None, commit_message: str = "Upload CLOOME model", **card_kwargs):
    """Commit the :func:`write_model_repo` layout to ``repo_id`` (created if needed) in one commit
    (:func:`~cloome_hf.publish.commit.commit_files`)."""
    from .commit import commit_files

    with tempfile.TemporaryDirectory() as tmp:
        files = write_model_repo(model_dir, tmp, model_id=repo_id, **card_kwargs)
        return commit_files(repo_id, tmp, files, commit_message=commit_message, private=private, token=token,
                            revision=revision)


# --------------------------------------------------------------------------------------------- dataset repo
def render_dataset_card(embeddings: Mapping[str, Any], info: Mapping[str, Any], *, dataset_id: str,
                        source_dataset: str | None = None, description: str | None = None) -> str:
    """The dataset card text (metadata header + Markdown) from ``model_cards/dataset.md``."""
    from .card import render_model_card

    num_rows = sum(len(ds) for ds in embeddings.values())
    columns = {c: t for c, t in DATASET_COLUMNS.items() if any(c in ds.column_names for ds in embeddings.values())}
    preprocessing = {k: v for k, v in (info.get("processor", {}).get("image_processor") or {}).items()
                     if k in ("channel_order", "crop_size", "intensity_clip_fraction", "intensity_scale",
                              "image_mean")}
    preprocessing.update({k: info[k] for k in ("embedding_dtype", "bf16") if k in info})
    size = "n<1K" if num_rows < 1e3 else "1K<n<10K" if num_rows < 1e4 else "10K<n<100K" if num_rows < 1e5 else \
        "100K<n<1M" if num_rows < 1e6 else "1M<n<10M"
    configs = ", ".join(f"`{name}` ({len(ds):,} rows)" for name, ds in embeddings.items())
    text = (description + "\n\n" if description else "") + f"Configurations: {configs}."
    return render_model_card(
        "dataset", dataset_id=dataset_id, model_id=info.get("model_id"), description=text, num_rows=num_rows,
        columns=columns, source_dataset=source_dataset, preprocessing=preprocessing, size_category=size,
    )


def _with_configs(card_text: str, embeddings: Mapping[str, Any]) -> str:
    """Add the ``configs`` metadata ``datasets`` reads (the same entries push_to_hub writes)."""
    from huggingface_hub import DatasetCard

    card = DatasetCard(card_text)
    card.data["configs"] = [
        {"config_name": name, "data_files": [{"split": SPLIT, "path": f"{name}/{SPLIT}-*"}]} for name in embeddings
    ]
    return str(card)


def _num_shards(ds) -> int:
    return max(1, math.ceil(ds.data.nbytes / MAX_SHARD_BYTES))


def write_dataset_repo(embeddings_dir: str | os.PathLike, out_dir: str | os.PathLike, *, dataset_id: str,
                       source_dataset: str | None = None, description: str | None = None) -> list[str]:
    """Write the dataset repo layout (what :func:`push_embeddings` commits) into ``out_dir``."""
    embeddings = load_store(embeddings_dir)
    info = read_info(embeddings_dir)
    os.makedirs(out_dir, exist_ok=True)
    _remove_dataset_layout(out_dir)
    for name, ds in embeddings.items():
        os.makedirs(os.path.join(out_dir, name), exist_ok=True)
        for _, shard, path in _shards(ds, name):  # push_to_hub's shard naming, so load_dataset resolves both alike
            shard.to_parquet(os.path.join(out_dir, path))
    write_thumbnail_shards(embeddings_dir, embeddings.get("images"), out_dir)
    card = render_dataset_card(embeddings, info, dataset_id=dataset_id, source_dataset=source_dataset,
                               description=description)
    if info:
        atomic_write_json(os.path.join(out_dir, EMBEDDING_INFO), info)
    atomic_write_text(os.path.join(out_dir, "README.md"), _with_configs(card, embeddings))  # last: the repo is whole
    return _list_files(out_dir)


def _shards(ds, folder: str):
    """``(index, shard, repo path)`` of each shard ``push_to_hub`` cuts ``ds`` into (contiguous, in row order)."""
    n = _num_shards(ds)
    for i in range(n):
        yield i, ds.shard(num_shards=n, index=i, contiguous=True), f"{folder}/{SPLIT}-{i:05d}-of-{n:05d}.parquet"


def write_thumbnail_shards(embeddings_dir: str | os.PathLike, images, out_dir: str | os.PathLike) -> list[str]:
    """Write the store's site pictures for the ``images`` config into ``out_dir/thumbnails/``, one shard beside
    each images shard (same cut, same rows, so a page reading the pushed repo finds a hit's picture by its row).
    Looked up by ``sample_key``: a site the store has no picture of gets a null. Returns the repo paths written;
    none when the store has no thumbnails (or none of these sites), with a warning in the second case."""
    from ..inference.thumbnails import thumbnail_column, write_thumbnail_table

    if images is None:
        return []
    pictures = thumbnail_column(embeddings_dir, images["sample_key"])
    if pictures is None:
        return []
    if pictures.null_count == len(pictures):
        warnings.warn(f"the thumbnails in {embeddings_dir} are of other sites than its images (no sample_key "
                      "matches; another embedding run?): the dataset is written without pictures", stacklevel=2)
        return []
    written, start = [], 0
    for _, shard, path in _shards(images, THUMBNAILS):
        stop = start + len(shard)  # the cut of the shard itself, so the two layouts cannot drift apart
        write_thumbnail_table(os.path.join(out_dir, path), shard["sample_key"], pictures[start:stop].to_pylist())
        written.append(path)
        start = stop
    return written


def _remove_dataset_layout(out_dir: str) -> None:
    """Remove what a dataset layout written here before owns: the card first (a half-rewritten folder then has
    no ``configs`` and does not load), its side file, and every config's shards (a smaller store must not leave
    older shards next to the new ones)."""
    for name in ("README.md", EMBEDDING_INFO):
        if os.path.isfile(os.path.join(out_dir, name)):
            os.remove(os.path.join(out_dir, name))
    for name in (*CONFIGS, THUMBNAILS):
        for shard in glob.glob(os.path.join(glob.escape(out_dir), name, f"{SPLIT}-*.parquet")):
            os.remove(shard)


def push_embeddings(embeddings_dir: str | os.PathLike, repo_id: str, *, private: bool = False,
                    token: str | None = None, source_dataset: str | None = None, description: str | None = None):
    """Push the embeddings to a dataset repo: the card, ``embedding_info.json`` and the site pictures
    (``thumbnails/``, as :func:`write_thumbnail_shards` cuts them; older ones removed) first, in one commit, then
    each config with ``Dataset.push_to_hub(config_name=...)``, which adds its ``configs`` / ``dataset_info``
    metadata to that card. Returns ``{"thumbnails": number of site pictures pushed}``."""
    from .commit import commit_files, repo_files

    embeddings = load_store(embeddings_dir)
    info = read_info(embeddings_dir)
    card = render_dataset_card(embeddings, info, dataset_id=repo_id, source_dataset=source_dataset,
                               description=description)
    contents = {"README.md": card.encode()}
    if info:
        contents[EMBEDDING_INFO] = json.dumps(info, indent=2).encode()
    with tempfile.TemporaryDirectory() as tmp:
        pictures = write_thumbnail_shards(embeddings_dir, embeddings.get("images"), tmp)
        stale = [f for f in repo_files(repo_id, "dataset", token) if f.startswith(f"{THUMBNAILS}/") and f not in pictures]
        commit_files(repo_id, tmp, pictures, contents=contents, deletions=stale, repo_type="dataset",
                     private=private, token=token, commit_message="Add dataset card")
    for name, ds in embeddings.items():
        ds.push_to_hub(repo_id, config_name=name, split=SPLIT, token=token, num_shards=_num_shards(ds),
                       commit_message=f"Upload {name} embeddings")
    return {"thumbnails": len(embeddings["images"]) if pictures else 0}


def _list_files(root) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), root).replace(os.sep, "/")
                  for d, _, fs in os.walk(root) for f in fs if ".cache" not in d)
