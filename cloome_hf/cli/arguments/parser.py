"""How every ``cloome`` command parses its arguments: dataclasses through transformers' ``HfArgumentParser``.

A command declares its arguments as a tuple of dataclasses, the shared groups of this package
(:mod:`.model`, :mod:`.data`, :mod:`.synthetic`, :mod:`.output`) plus one of its own, and parses them with
:func:`parse_command`::

    @dataclass
    class SearchArguments:
        k: int = arg(10, "hits per query")

    ARGUMENTS = (ModelSourceArguments, OutputArguments, SearchArguments)

    def main(argv=None):
        args = parse_command("search", ARGUMENTS, argv, description=__doc__, required=("output_dir",))
        args.model, args.k, ...                    # one namespace with every group's fields

A field is declared once, with :func:`arg`: its default, its help, its argparse extras (``choices``, ``nargs``)
and its *old spellings* (``old=("--model_dir",)``): hidden aliases that are rewritten to the field's name before
parsing, with a note on stderr, for one release. A field name is unique across the groups a command uses.
Argument errors raise through ``argparse``'s ``error``, which the CLI's boundary (:mod:`cloome_hf.cli.errors`)
turns into ``cloome <command>: error: ...`` and exit status 2.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import sys
from dataclasses import MISSING, field
from types import MappingProxyType
from typing import Any, Iterable, Mapping, Sequence

from transformers import HfArgumentParser

#: The metadata key of a field's old spellings (never passed on to argparse).
OLD_SPELLINGS = "old_spellings"


def arg(default: Any = MISSING, help: str = "", *, old: Sequence[str] = (), **argparse_options) -> Any:
    """A dataclass field of a command's arguments: ``default`` (a list default is copied per instance), ``help``,
    argparse extras (``choices``, ``nargs``, ``metavar``) and ``old`` spellings (hidden aliases)."""
    metadata = {"help": help, **argparse_options}
    if old:
        metadata[OLD_SPELLINGS] = tuple(old)
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def image_size_pair(values: int | Sequence[int] | None, flag: str = "--image_size") -> tuple[int, int] | None:
    """``H [W]`` (one value = a square) as ``(height, width)``; the one reading of every image-size flag."""
    if values is None:
        return None
    values = [values] if isinstance(values, int) else list(values)
    if len(values) not in (1, 2) or any(int(v) <= 0 for v in values):
        raise ValueError(f"{flag} takes H [W], one or two positive sizes, not {' '.join(map(str, values))}")
    return (int(values[0]), int(values[-1]))


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults after every option, the description's examples kept as written."""


class CommandParser(HfArgumentParser):
    """``HfArgumentParser`` over a command's dataclasses, which also knows their old spellings."""

    def __init__(self, command: str, groups: Sequence[type], *, aliases: Mapping[str, str] | None = None, **kw):
        self.command = command
        self.groups = tuple(groups)
        self.old_spellings = {old: f"--{f.name}" for g in self.groups for f in dataclasses.fields(g)
                              for old in f.metadata.get(OLD_SPELLINGS, ())}
        self.old_spellings.update(aliases or {})
        kw.setdefault("formatter_class", _HelpFormatter)
        kw.setdefault("prog", f"cloome {command}")
        super().__init__(self.groups, **kw)

    @staticmethod
    def _parse_dataclass_field(parser, dataclass_field):
        if OLD_SPELLINGS in dataclass_field.metadata:  # a hidden alias is not an argparse option
            dataclass_field = copy.copy(dataclass_field)
            dataclass_field.metadata = MappingProxyType(
                {k: v for k, v in dataclass_field.metadata.items() if k != OLD_SPELLINGS})
        HfArgumentParser._parse_dataclass_field(parser, dataclass_field)

    def new_spellings(self, argv: Iterable[str]) -> list[str]:
        """``argv`` with every old spelling (``--old`` or ``--old=value``) replaced by its field's name."""
        out = []
        for token in argv:
            name, eq, value = token.partition("=")
            new = self.old_spellings.get(name) if token.startswith("--") else None
            if new is None:
                out.append(token)
                continue
            print(f"cloome {self.command}: note: {name} is now {new}; the old spelling goes in the next release",
                  file=sys.stderr)
            out.append(new + eq + value)
        return out

    def parse_groups(self, argv: Sequence[str] | None, required: Sequence[str] = ()) -> tuple:
        """One instance per group; an unknown argument or a missing required field is a usage error."""
        argv = self.new_spellings(list(sys.argv[1:] if argv is None else argv))
        namespace, unknown = self.parse_known_args(argv)
        if unknown:
            self.error(f"unrecognized arguments: {' '.join(unknown)}")
        missing = [f"--{name}" for name in required if getattr(namespace, name, None) in (None, "")]
        if missing:
            self.error(f"the following arguments are required: {', '.join(missing)}")
        values = vars(namespace)
        return tuple(g(**{f.name: values[f.name] for f in dataclasses.fields(g) if f.init}) for g in self.groups)


def command_error(command: str, message: str):
    """A usage error of ``cloome {command}`` found after parsing (e.g. two options that exclude each other): one
    line at the CLI's boundary, ``argparse``'s exit status 2 elsewhere."""
    argparse.ArgumentParser(prog=f"cloome {command}").error(message)


def parse_command(command: str, groups: Sequence[type], argv: Sequence[str] | None = None, *,
                  required: Sequence[str] = (), defaults: Mapping[str, Any] | None = None,
                  aliases: Mapping[str, str] | None = None, **parser_options) -> argparse.Namespace:
    """Parse ``argv`` for ``cloome {command}`` into one namespace holding every field of ``groups``.

    ``required``: fields that must be given (checked after parsing, so that a default, e.g. from a config file,
    may not stand in for them). ``defaults``: this command's own defaults of shared fields. ``aliases``: old
    spellings only this command has (``{"--old": "--new"}``). ``parser_options``: ``description``, ``epilog``.
    """
    parser = CommandParser(command, groups, aliases=aliases, **parser_options)
    if defaults:
        parser.set_defaults(**defaults)
    merged = argparse.Namespace()
    for group in parser.parse_groups(argv, required):
        vars(merged).update(dataclasses.asdict(group))
    return merged


__all__ = ["OLD_SPELLINGS", "CommandParser", "arg", "command_error", "image_size_pair", "parse_command"]
