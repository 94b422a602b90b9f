"""The CLI's error boundary: a refused input ends in two lines, not a traceback.

    cloome embed: error: molecule table lib.csv does not exist
    cloome embed: hint: check the path; relative paths are read from /home/me/project

The package raises ``ValueError`` (bad values, refused resumes, used output folders, invalid SMILES) and
``OSError`` (missing files, unreachable models); :func:`run_at_boundary` turns both, and argparse's usage
errors, into that form and the exit status 2. ``--debug`` anywhere in the arguments lets the exception through
with its traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from typing import Callable, Iterator, Sequence

DEBUG_FLAG = "--debug"
USAGE_STATUS = 2

#: The errors a user's input causes (anything else is a bug, and keeps its traceback).
USER_ERRORS = (ValueError, OSError, argparse.ArgumentTypeError)


class UsageError(Exception):
    """An argparse usage error (unknown option, missing required argument, invalid choice), as an exception."""


@contextlib.contextmanager
def usage_errors_as_exceptions() -> Iterator[None]:
    """While active, every ``argparse`` parser (also ``HfArgumentParser``) raises :class:`UsageError` instead of
    printing its whole usage and exiting: the boundary then prints one line and a pointer to ``--help``."""
    original = argparse.ArgumentParser.error

    def error(parser, message):
        raise UsageError(message)

    argparse.ArgumentParser.error = error
    try:
        yield
    finally:
        argparse.ArgumentParser.error = original


def split_debug_flag(argv: Sequence[str]) -> tuple[list[str], bool]:
    """``(argv without --debug, whether it was there)``; the flag may stand anywhere."""
    rest = [a for a in argv if a != DEBUG_FLAG]
    return rest, len(rest) != len(argv)


def hint_for(error: BaseException, command: str) -> str:
    """One line of what to do about ``error``, raised by ``cloome {command}``."""
    if isinstance(getattr(error, "hint", None), str):  # e.g. cloome_hf.data.prepare.IncompleteOutputError
        return error.hint
    help_line = f"run 'cloome {command} --help' for the options" if command else "run 'cloome --help'"
    if isinstance(error, UsageError):
        return help_line
    text = str(error).lower()
    if "in use by another run" in text:
        return "wait for that run to end, or write to another --output_dir"
    if any(s in text for s in ("already holds", "use a new output_dir", "written by a run with other settings",
                               "other settings", "refusing to write", "not empty")):
        return ("write to a new --output_dir, or resume with the same settings (--overwrite_output_dir, where the "
                "command has it, starts the folder clean)")
    if "smiles" in text:
        return "fix or leave out that molecule: RDKit must parse its SMILES"
    if "recipe" in text:
        return f"pick one of the names listed; {help_line}"
    if isinstance(error, FileNotFoundError) or any(s in text for s in ("does not exist", "not found", "no such")):
        return f"check the path: relative paths are read from {os.getcwd()}"
    return f"{help_line}; add {DEBUG_FLAG} to see the traceback"


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def run_at_boundary(command: str, call: Callable[[], object], debug: bool) -> int:
    """Run ``call`` (a command); return 0, or print a refused input as two lines and return 2."""
    prefix = f"cloome {command}" if command else "cloome"
    try:
        with usage_errors_as_exceptions():
            call()
    except (UsageError, *USER_ERRORS) as error:
        if debug:
            raise
        message = one_line(error) or type(error).__name__
        print(f"{prefix}: error: {message}", file=sys.stderr)
        print(f"{prefix}: hint: {hint_for(error, command)}", file=sys.stderr)
        return USAGE_STATUS
    return 0


__all__ = ["DEBUG_FLAG", "USER_ERRORS", "UsageError", "hint_for", "run_at_boundary",
           "split_debug_flag", "usage_errors_as_exceptions"]
