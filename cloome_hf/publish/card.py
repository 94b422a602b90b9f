"""Model and dataset cards for CLOOME models and embedding data sets, rendered from ``model_cards/*.md``.

One renderer serves every producer of cards:

* conversion of the published weights (``source="converted"``, a ``recipe``; the card then quotes the
  paper's headline results with their confidence intervals),
* training (``training_config`` and validation ``metrics``),
* publishing (``eval_results`` - e.g. from :func:`eval_results_from_json` on an evaluation ``results.json`` -
  which become the Hub ``model-index`` metadata and a results table).

Example::

    >>> from cloome_hf.model_card import render_model_card
    >>> card = render_model_card("model", model_id="me/cloome-small", config=model.config,
    ...                          training_config={"epochs": 10}, metrics={"val_loss": 1.23})
    >>> open("README.md", "w").write(card)

The Hub metadata header is written with ``huggingface_hub.ModelCardData`` / ``DatasetCardData`` so that it is
exactly what the Hub parses.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jinja2
from huggingface_hub import DatasetCardData, EvalResult, ModelCardData

from ..channels import CHANNELS
from ..recipes import get_recipe
from ..safe_io import read_json

TEMPLATES_DIR = Path(__file__).resolve().parents[1] / "model_cards"  # also reachable as the top-level model_cards/
TAGS = ("cell-painting", "microscopy", "contrastive-learning", "drug-discovery", "feature-extraction")
LICENSE = "mit"  # ml-jku/cloome and this package
PAPER_URL = "https://www.nature.com/articles/s41467-023-42328-w"
PAPER_DOI = "10.1038/s41467-023-42328-w"
UPSTREAM_REPO = "https://github.com/ml-jku/cloome"
UPSTREAM_WEIGHTS = "https://huggingface.co/anasanchezf/cloome"

# Headline results of the published model, transcribed from the paper (Sanchez-Fernandez et al., Nature
# Communications 14, 7339 (2023)), Tables 3 and 4: zero-shot image-to-image classification with the image
# embeddings, accuracy in % with 95% confidence intervals, on the hold-out test set of a random and of a
# scaffold split. Only CLOOME's rows; the paper compares with GapNet and CellProfiler features.
PAPER_RESULTS: tuple[dict[str, Any], ...] = (
    {"table": 3, "task": "Zero-shot molecule classification (image-to-image)", "split": "random", "n": 43778,
     "top1": (18.4, 18.1, 18.8), "top5": (41.5, 41.1, 42.0), "top10": (56.2, 55.8, 56.7)},
    {"table": 3, "task": "Zero-shot molecule classification (image-to-image)", "split": "scaffold", "n": 28248,
     "top1": (22.3, 21.9, 22.9), "top5": (50.8, 50.2, 51.4), "top10": (67.1, 66.6, 67.7)},
    {"table": 4, "task": "Zero-shot mechanism-of-action classification (image-to-image)", "split": "random",
     "n": 8826, "top1": (13.0, 12.3, 13.7), "top5": (35.3, 34.3, 36.3), "top10": (48.0, 46.9, 49.0)},
    {"table": 4, "task": "Zero-shot mechanism-of-action classification (image-to-image)", "split": "scaffold",
     "n": 4056, "top1": (18.5, 17.3, 19.7), "top5": (47.9, 46.4, 49.5), "top10": (61.3, 59.7, 62.8)},
)

_CONTEXT_KEYS = {
    "model": {
        "model_id", "description", "source", "recipe", "checkpoint", "config", "processor", "training_config",
        "metrics", "eval_results", "datasets", "base_model", "license", "extra_tags", "site_picture",
    },
    "dataset": {
        "dataset_id", "description", "model_id", "num_rows", "columns", "source_dataset", "preprocessing",
        "license", "extra_tags", "size_category",
    },
}


def _fmt(value: Any) -> str:
    """Numbers compactly (4 significant digits), everything else as JSON-ish text."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value)


def _environment(templates_dir: Path) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir)),
        undefined=jinja2.StrictUndefined,  # a misspelt variable in a template is an error, not a blank
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters["fmt"] = _fmt
    return env


def _config_dict(config: Any) -> dict[str, Any] | None:
    if config is None:
        return None
    return config.to_dict() if hasattr(config, "to_dict") else dict(config)


def _architecture(config: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The few architecture facts a reader needs, from a CloomeConfig dict."""
    if config is None:
        return None
    vision, molecule = config.get("vision_config", {}), config.get("molecule_config", {})
    return {
        "backbone": vision.get("backbone"),
        "layers": vision.get("layers"),
        "num_channels": vision.get("num_channels"),
        "image_size": vision.get("image_size"),
        "fingerprint_size": molecule.get("fingerprint_size"),
        "hidden_size": molecule.get("hidden_size"),
        "num_hidden_layers": molecule.get("num_hidden_layers"),
        "molecule_encoder": molecule.get("encoder", "mlp"),
        "gnn_layer": molecule.get("gnn_layer"),
        "gnn_readout": molecule.get("gnn_readout"),
        "transformers_model": molecule.get("transformers_model"),
        "token_pooling": molecule.get("token_pooling"),
        "projection_dim": config.get("projection_dim"),
        "inverse_temperature": math.exp(config["logit_scale_init_value"]) if "logit_scale_init_value" in config else None,
        "loss": config.get("loss"),
    }


def _eval_result(entry: Mapping[str, Any] | EvalResult) -> EvalResult:
    if isinstance(entry, EvalResult):
        return entry
    required = ("task_type", "dataset_type", "dataset_name", "metric_type", "metric_value")
    missing = [k for k in required if k not in entry]
    if missing:
        raise ValueError(f"eval result {dict(entry)!r} lacks {missing}")
    return EvalResult(**dict(entry))


def _card_data_yaml(template: str, context: Mapping[str, Any], eval_results: list[EvalResult]) -> str:
    tags = list(TAGS) + [t for t in context.get("extra_tags") or () if t not in TAGS]
    license_ = context.get("license") or LICENSE
    if template == "model":
        data = ModelCardData(
            library_name="transformers",
            pipeline_tag="feature-extraction",
            license=license_,
            tags=tags,
            datasets=list(context.get("datasets") or []) or None,
            base_model=context.get("base_model"),
            model_name=context["model_id"] if eval_results else None,
            eval_results=eval_results or None,
        )
    else:
        data = DatasetCardData(
            license=license_,
            tags=tags,
            task_categories=["feature-extraction"],
            size_categories=[context["size_category"]] if context.get("size_category") else None,
        )
    return data.to_yaml()


def render_model_card(template: str = "model", *, templates_dir: str | Path | None = None, **context: Any) -> str:
    """Render ``model_cards/<template>.md`` into a Hub README (metadata header + Markdown).

    Args:
        template: ``"model"`` or ``"dataset"`` (any ``<name>.md`` in ``templates_dir`` with a known context).
        templates_dir: folder of the templates (default: the package's ``model_cards/``, shipped in the wheel).
        **context: for ``"model"``:

            - ``model_id`` (str): Hub id or folder name shown in the title and usage snippet;
            - ``description`` (str): free text placed under the title;
            - ``source``: ``"converted"`` (published weights) or ``"trained"`` (default);
            - ``recipe``: ``"retrieval"``, ``"zero-shot"`` or ``"bioactivity"`` (converted models);
            - ``checkpoint`` (str): upstream file the weights came from;
            - ``config``: :class:`~cloome_hf.CloomeConfig` or its dict (architecture table);
            - ``processor``: ``{"image_processor": {...}, "featurizer": {...}}`` settings
              (see :func:`cloome_hf.convert.processor_settings`);
            - ``training_config`` (mapping): hyper-parameters of a training run;
            - ``metrics`` (mapping name -> number): validation metrics of a training run;
            - ``eval_results``: list of :class:`huggingface_hub.EvalResult` or their keyword dicts
              (``task_type``, ``dataset_type``, ``dataset_name``, ``metric_type``, ``metric_value`` and
              optionally ``task_name``, ``dataset_split``, ``metric_name``, ...) -> ``model-index``;
            - ``datasets``, ``base_model``, ``license`` (default ``"mit"``), ``extra_tags``;
            - ``site_picture``: ``{"file": PNG in the repo, "legend": colour per channel}`` of an example site
              (drawn by :func:`~cloome_hf.inference.site_picture.write_site_picture`).

            for ``"dataset"``: ``dataset_id``, ``model_id`` (the embedding model), ``description``,
            ``num_rows``, ``columns`` (mapping name -> description), ``source_dataset``, ``preprocessing``
            (mapping), ``size_category``, ``license``, ``extra_tags``.

    Returns:
        The card text, starting with the ``---`` YAML metadata block.

    Raises:
        ValueError: unknown template, unknown context key, bad ``source``/``recipe`` or incomplete eval result.
    """
    if template not in _CONTEXT_KEYS:
        raise ValueError(f"unknown model card template {template!r}; choose from {sorted(_CONTEXT_KEYS)}")
    unknown = set(context) - _CONTEXT_KEYS[template]
    if unknown:
        raise ValueError(f"unknown context key(s) for template {template!r}: {sorted(unknown)}")
    templates_dir = Path(templates_dir) if templates_dir is not None else TEMPLATES_DIR
    ctx: dict[str, Any] = {k: None for k in _CONTEXT_KEYS[template]}
    ctx.update(context)

    eval_results: list[EvalResult] = []
    if template == "model":
        ctx["model_id"] = ctx["model_id"] or "cloome-hf-model"
        ctx["source"] = ctx["source"] or "trained"
        if ctx["source"] not in ("converted", "trained"):
            raise ValueError(f"source must be 'converted' or 'trained', got {ctx['source']!r}")
        recipe = get_recipe(ctx["recipe"]) if ctx["recipe"] is not None else None  # ValueError naming the known
        ctx["config"] = _config_dict(ctx["config"])
        ctx["architecture"] = _architecture(ctx["config"])
        eval_results = [_eval_result(e) for e in ctx["eval_results"] or ()]
        ctx["eval_results"] = eval_results
        # Tables 3 and 4 were obtained with the retrieval / zero-shot checkpoint's image embeddings.
        with_tables = ctx["source"] == "converted" and ctx["recipe"] in (None, "retrieval", "zero-shot")
        ctx["paper_results"] = PAPER_RESULTS if with_tables else ()
        ctx["recipe_description"] = recipe.description if recipe is not None else None
    else:
        ctx["dataset_id"] = ctx["dataset_id"] or "cloome-embeddings"
    ctx.update(
        card_data=_card_data_yaml(template, ctx, eval_results),
        channel_order=CHANNELS,
        paper_url=PAPER_URL,
        paper_doi=PAPER_DOI,
        upstream_repo=UPSTREAM_REPO,
        upstream_weights=UPSTREAM_WEIGHTS,
        license=ctx.get("license") or LICENSE,
    )
    try:
        return _environment(templates_dir).get_template(f"{template}.md").render(**ctx)
    except jinja2.TemplateNotFound as err:
        raise ValueError(f"model card template {template!r} not found in {str(templates_dir)!r}") from err


_SKIP_KEYS = {"n", "k", "seed", "n_candidates", "top1pct_cutoff", "random", "tie_breaking", "ci_low", "ci_high"}


def eval_results_from_json(
    results: Mapping[str, Any] | str | Path,
    *,
    dataset_name: str,
    dataset_type: str,
    task_type: str = "feature-extraction",
    task_name: str | None = None,
    dataset_split: str | None = None,
    source_name: str | None = None,
) -> list[dict[str, Any]]:
    """Flatten an evaluation report (``results.json`` or its dict) into ``model-index`` entries.

    Nested sections join into the metric type with ``/`` (``molecule_to_image/top1``). A leaf is a number or
    a ``{"value", "ci_low", "ci_high", ...}`` dict (its value is used; the interval goes into the metric
    name). Bookkeeping keys (``n``, ``k``, ``seed``, ``random`` baselines, ...) are skipped.

    Returns:
        keyword dicts for :class:`huggingface_hub.EvalResult`, to pass as ``eval_results`` to
        :func:`render_model_card`.
    """
    if not isinstance(results, Mapping):
        results = read_json(results, "evaluation results")
    entries: list[dict[str, Any]] = []

    def add(path: list[str], value: float, name: str | None = None) -> None:
        entry = {
            "task_type": task_type, "dataset_type": dataset_type, "dataset_name": dataset_name,
            "metric_type": "/".join(path), "metric_value": float(value),
        }
        for key, val in (("task_name", task_name), ("dataset_split", dataset_split), ("metric_name", name),
                         ("source_name", source_name)):
            if val is not None:
                entry[key] = val
        entries.append(entry)

    def walk(node: Any, path: list[str]) -> None:
        if isinstance(node, Mapping):
            if "value" in node and isinstance(node["value"], (int, float)):
                name = None
                if isinstance(node.get("ci_low"), (int, float)) and isinstance(node.get("ci_high"), (int, float)):
                    name = f"{'/'.join(path)} (95% CI {node['ci_low']:.4g}-{node['ci_high']:.4g})"
                add(path, node["value"], name)
                return
            for key, child in node.items():
                if key not in _SKIP_KEYS:
                    walk(child, path + [str(key)])
        elif isinstance(node, (int, float)) and not isinstance(node, bool) and path:
            if math.isfinite(node):
                add(path, node)

    walk(results, [])
    if not entries:
        raise ValueError("the evaluation results contain no numeric metrics")
    return entries


__all__ = ["PAPER_RESULTS", "TAGS", "eval_results_from_json", "render_model_card"]
