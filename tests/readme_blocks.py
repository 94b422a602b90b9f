"""Support for tests/test_readme.py: README.md's code blocks by section, and its shell command lines turned into
``cloome`` argument lists that the test runs in-process (``cloome_hf.cli.main``, the console script's own entry),
from a working folder outside the clone."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def section(name: str) -> str:
    """The text between ``<!-- BEGIN name -->`` and ``<!-- END name -->``."""
    return README.split(f"<!-- BEGIN {name} -->", 1)[1].split(f"<!-- END {name} -->", 1)[0]


def blocks(text: str, language: str) -> list[str]:
    """The fenced ``language`` code blocks of ``text``, in order."""
    return [block.split("```", 1)[0] for block in text.split(f"```{language}\n")[1:]]


def command_lines(block: str) -> list[str]:
    """A shell block's commands: continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", block)
    lines = (line.split(" # ", 1)[0].strip() for line in joined.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def cloome_argv(command: str, variables: dict[str, str] | None = None) -> list[str]:
    """The ``cloome`` arguments of one README command line, ``cloome CMD ...`` or ``accelerate launch [FLAGS] -m
    cloome_hf.cli CMD ...`` (its launcher FLAGS are checked with accelerate's own parser; this machine runs the
    command as the one process such a launch starts). Optional ``[--flag value]`` groups are kept, so they run too;
    ``$NAME`` takes ``variables[NAME]``."""
    for name, value in (variables or {}).items():
        command = command.replace(f"${name}", value)
    words = shlex.split(re.sub(r"\[(--[^\]]*)\]", r"\1", command))
    if words[0] == "cloome":
        return words[1:]
    assert words[:2] == ["accelerate", "launch"], f"not a cloome command: {command}"
    from accelerate.commands.launch import launch_command_parser

    launch = launch_command_parser().parse_args(words[2:])  # exits on a flag accelerate does not know
    assert launch.module and launch.training_script == "cloome_hf.cli", command
    return list(launch.training_script_args)


def run_cloome(argv: list[str], cwd=None) -> str:
    """Run ``cloome *argv`` in this process (``conftest.run_cloome``: from a fresh accelerate state, as a fresh
    ``cloome`` process starts; a README line is one process); return what it printed to stdout, then stderr; fail
    with that output unless it exits 0."""
    import conftest

    proc = conftest.run_cloome(argv, cwd)
    printed = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"cloome {' '.join(argv)} exited {proc.returncode}:\n{printed[-3000:]}"
    return printed
