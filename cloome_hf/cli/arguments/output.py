"""The shared group *output*: the folder a command writes (the resume contract of
:mod:`cloome_hf.output_folder` applies where the command resumes)."""

from __future__ import annotations

from dataclasses import dataclass

from .parser import arg


@dataclass
class OutputArguments:
    _argument_group_name = "output"

    output_dir: str | None = arg(None, "the folder to write")


@dataclass
class ResumableOutputArguments(OutputArguments):
    """An output folder a rerun resumes into (``train``, ``embed``), which ``--overwrite_output_dir`` starts clean."""

    overwrite_output_dir: bool = arg(False, "replace what an earlier run with other settings left in --output_dir "
                                            "(only that command's own files)")


__all__ = ["OutputArguments", "ResumableOutputArguments"]
