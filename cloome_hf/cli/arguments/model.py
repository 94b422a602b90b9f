"""The shared group *model*: which saved CLOOME model a command reads (``embed``, ``evaluate``, ``search``,
``push``; ``train`` starts from it)."""

from __future__ import annotations

from dataclasses import dataclass

from .parser import arg


@dataclass
class ModelSourceArguments:
    _argument_group_name = "model"

    model: str | None = arg(None, "a saved CLOOME folder or Hub id (model and processor saved together)",
                            old=("--model_dir", "--model_name_or_path"))
    revision: str | None = arg(None, "Hub revision (branch, tag or commit) of --model")


__all__ = ["ModelSourceArguments"]
