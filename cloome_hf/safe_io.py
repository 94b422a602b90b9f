"""Writing and reading the package's side files safely: atomic writes, clear errors, one writer per folder.

* :func:`atomic_write_text` / :func:`atomic_write_json` - a temporary file named after this process, then one
  rename: a reader sees the old file or the new one, never half of one, and two writers never share a ``.tmp``.
* :func:`read_json` - a malformed, truncated or foreign file is a ``ValueError`` naming it, not a bare
  ``JSONDecodeError`` / ``KeyError``.
* :class:`OutputLock` - the second process writing into a folder refuses, naming the holder; a lock survives
  only while its holder lives.
"""

from __future__ import annotations

import json
import math
import os
import socket
from typing import Any

LOCK_FILE = ".cloome.lock"


def temporary_name(path: str | os.PathLike) -> str:
    """A temporary sibling of ``path`` unique to this process (and thread-safe within it for distinct paths)."""
    return f"{os.fspath(path)}.tmp-{os.getpid()}"


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    tmp = temporary_name(path)
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def json_safe(value: Any) -> Any:
    """The one JSON policy of the package: NaN / inf -> ``null`` (strict JSON has no such numbers, and readers
    in other languages refuse them), numpy scalars and arrays -> Python numbers and lists, tuples -> lists,
    keys -> strings. Other objects (paths, say) are written as their ``str`` by :func:`atomic_write_json`."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if type(value).__module__ == "numpy" and hasattr(value, "tolist"):  # numpy scalar or array
        return json_safe(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def atomic_write_json(path: str | os.PathLike, value: Any) -> None:
    """Write ``value`` as indented, strict JSON (:func:`json_safe`) to ``path`` atomically."""
    atomic_write_text(path, json.dumps(json_safe(value), indent=2, default=str, allow_nan=False) + "\n")


def read_json(path: str | os.PathLike, what: str = "file", expect: type = dict) -> Any:
    """The JSON value of ``path``; ``ValueError`` naming the file when it is unreadable, malformed or not an
    ``expect`` (dict by default)."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read the {what} {path}: {err}") from err
    if not isinstance(value, expect):
        raise ValueError(f"the {what} {path} holds a {type(value).__name__}, expected a JSON {expect.__name__}")
    return value


def require_keys(value: dict, keys, path: str | os.PathLike, what: str) -> None:
    """``ValueError`` naming the file and the keys a JSON object lacks."""
    missing = [k for k in keys if k not in value]
    if missing:
        raise ValueError(f"the {what} {os.fspath(path)} lacks {missing}: damaged or not written by cloome-hf")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


class OutputLock:
    """Exclusive use of an output folder by one process (or one ``accelerate`` job, whose main process holds it).

    ``with OutputLock(folder):`` creates ``folder/.cloome.lock`` naming the holder (host, pid, command). A second
    writer refuses with that name. A lock left by a process that no longer runs on this host is taken over; one
    from another host is refused (its process cannot be checked) until removed by hand.
    """

    def __init__(self, folder: str | os.PathLike, command: str = "cloome"):
        self.folder, self.command = os.fspath(folder), command
        self.path = os.path.join(self.folder, LOCK_FILE)
        self._held = False

    def _holder(self) -> dict | None:
        try:
            with open(self.path, encoding="utf-8") as f:
                return json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}

    def acquire(self) -> "OutputLock":
        os.makedirs(self.folder, exist_ok=True)
        me = {"host": socket.gethostname(), "pid": os.getpid(), "command": self.command}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is None:
                    continue  # released in between
                stale = holder.get("host") == me["host"] and isinstance(holder.get("pid"), int) and \
                    not _alive(holder["pid"])
                if not stale:
                    raise ValueError(f"{self.folder} is in use by another run ({holder.get('command', '?')}, "
                                     f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}); wait for it or "
                                     f"use another output folder (remove {self.path} if that run is gone)") from None
                os.remove(self.path)
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(me, f)
            self._held = True
            return self
        raise ValueError(f"could not lock {self.folder}: {self.path} keeps reappearing")

    def release(self) -> None:
        if self._held:
            self._held = False
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


__all__ = ["LOCK_FILE", "OutputLock", "atomic_write_json", "atomic_write_text", "read_json", "require_keys",
           "temporary_name"]
