"""The process settings a ``cloome`` command runs with, decided before torch is imported.

torch reads ``THP_MEM_ALLOC_ENABLE`` once, when it is imported: with ``1`` it backs large CPU tensors (the batches
of the input pipeline, 5.4 MB of float32 per 5 x 520 x 520 site) with transparent huge pages, so a fresh batch
costs one page fault per 2 MB instead of one per 4 kB. That was worth 1.6x of the loader's speed at the 520 crop
on the 2-core development machine. ``cloome_hf/__init__.py`` imports this module first (it imports nothing heavy)
and calls :func:`prepare_command_process`, so every way of starting a command takes the fast path with no
variable set by the user:

* the ``cloome`` console script (``sys.argv[0]`` is the script),
* ``python -m cloome_hf.cli`` and ``accelerate launch -m cloome_hf.cli`` (while the package is imported
  ``sys.argv[0]`` is still ``"-m"``; ``sys.orig_argv`` names the module),
* the ``scripts/*.py`` shims next to the package.

A library user's process (``import cloome_hf`` in their own program) is never changed, and a value the user set
(``THP_MEM_ALLOC_ENABLE=0``) is kept. :func:`runtime_report` says what the process got, measured, not assumed;
``cloome train`` records it in ``training_config.json``.
"""

from __future__ import annotations

import os
import sys

THP_VARIABLE = "THP_MEM_ALLOC_ENABLE"
#: The module ``python -m`` runs for the command line.
COMMAND_MODULES = ("cloome_hf.cli", "cloome_hf.cli.__main__")
_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: What :func:`prepare_command_process` found and did in this process.
COMMAND_PROCESS: dict[str, object] = {"started_as_command": False, "set_thp_before_torch": False}


def started_as_command(argv: list[str] | None = None, orig_argv: list[str] | None = None) -> bool:
    """Whether this process runs a ``cloome`` command: the console script, ``-m cloome_hf.cli`` or a shim in the
    ``scripts/`` folder beside the package (``argv`` / ``orig_argv`` default to ``sys.argv`` / ``sys.orig_argv``)."""
    argv = sys.argv if argv is None else argv
    orig_argv = getattr(sys, "orig_argv", []) if orig_argv is None else orig_argv
    first = argv[0] if argv else ""
    if os.path.basename(first) == "cloome":
        return True
    for i, arg in enumerate(orig_argv):
        if (arg == "-m" and i + 1 < len(orig_argv) and orig_argv[i + 1] in COMMAND_MODULES) or \
                (arg.startswith("-m") and arg[2:] in COMMAND_MODULES):
            return True
    script = os.path.abspath(first) if first.endswith(".py") else ""
    return os.path.dirname(script) == os.path.join(_PACKAGE_PARENT, "scripts")


def prepare_command_process() -> None:
    """In a command's process, before torch is imported: transparent huge pages for torch's CPU tensors (unless
    the user set ``THP_MEM_ALLOC_ENABLE`` already). Anywhere else: nothing."""
    if not started_as_command():
        return
    COMMAND_PROCESS["started_as_command"] = True
    if "torch" not in sys.modules and THP_VARIABLE not in os.environ:
        os.environ[THP_VARIABLE] = "1"  # DataLoader workers and launched processes inherit it
        COMMAND_PROCESS["set_thp_before_torch"] = True


def torch_uses_huge_pages(probe_mb: int = 64) -> bool:
    """Measured: whether a fresh ``probe_mb`` MB CPU tensor is backed by transparent huge pages (the resident
    huge pages of this process grow by at least one 2 MB page when it is touched). False where the kernel has no
    THP counters (not Linux). The probe is larger than glibc's largest dynamic mmap threshold (32 MB), so it is
    always fresh memory: a smaller one may reuse heap pages an earlier tensor touched, which no madvise turns
    into huge pages, and would then read as "no huge pages" in a process that has them."""
    import torch

    def huge_kb() -> int:
        try:
            with open("/proc/self/smaps_rollup") as f:
                return sum(int(line.split()[1]) for line in f if line.startswith("AnonHugePages"))
        except OSError:
            return -1

    before = huge_kb()
    if before < 0:
        return False
    probe = torch.ones(probe_mb << 20, dtype=torch.uint8)
    grown = huge_kb() - before
    del probe
    return grown >= 2048


def runtime_report() -> dict[str, object]:
    """What this process runs with: started as a command, ``THP_MEM_ALLOC_ENABLE`` as torch read it, and whether
    fresh CPU tensors really get huge pages."""
    return {**COMMAND_PROCESS, THP_VARIABLE: os.environ.get(THP_VARIABLE, ""),
            "torch_uses_huge_pages": torch_uses_huge_pages()}


__all__ = ["COMMAND_MODULES", "COMMAND_PROCESS", "THP_VARIABLE", "prepare_command_process", "runtime_report",
           "started_as_command", "torch_uses_huge_pages"]
