"""The one resolver of file locations: every path or URL a table gives (and every table a user names) becomes
something to open here, by one rule.

* **Allowed schemes** (:data:`REMOTE_SCHEMES`, plus local paths and ``file:`` URLs); any other scheme
  (``ftp://``, ``memory://``, ``sftp://``, fsspec chains such as ``simplecache::s3://``) is refused by name.
  Schemes are case-insensitive (``S3://``, ``FILE:///``).
* **Local paths stay under the root.** With a ``root``, a relative path is taken under it, and a relative path,
  an absolute path, a ``file:`` URL or the key of a URL (``s3://bucket/KEY`` -> ``root/KEY``, the local mirror)
  that ``..`` leads out of the root is refused; so is a key whose percent-decoded form does (``%2e%2e``). The
  path handed back is normalised, so a ``..`` after a symbolic link (``link/../x``) cannot climb out of the link's
  target: what the OS opens is what was checked. Links the root itself holds (a mirror on another disk) are the
  user's setup and are followed. Without a root, locations are used as they are: the user chose no folder to
  confine them to.
* ``file:`` URLs follow RFC 8089: ``file:///abs``, ``file://localhost/abs``, ``file:/abs``, percent-decoded; a
  ``file://host/...`` of another host is refused (``file://images/x`` is not ``images/x``), and so is a Windows
  path (``C:\\...``, ``\\\\server\\share``): neither can be opened here. Backslashes of a relative path (a table
  made on Windows) are separators. A plain path is literal: ``%20`` in it is three characters.
"""

from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

#: URL schemes read through fsspec (``s3a`` / ``gcs`` are the aliases s3fs and gcsfs register).
REMOTE_SCHEMES = ("s3", "s3a", "gs", "gcs", "http", "https")
#: Everything a location may be: a local path, a ``file:`` URL or one of :data:`REMOTE_SCHEMES`.
ALLOWED_SCHEMES = ("file",) + REMOTE_SCHEMES

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]+):(.*)$", re.DOTALL)  # two letters at least: C: is a drive
_WINDOWS = re.compile(r"^(?:/?[A-Za-z]:[\\/]|[A-Za-z]:$|\\\\)")


class LocationError(ValueError):
    """A location refused by the rule: its ``reason`` completes "``value`` ..."."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Location:
    """A parsed location: ``scheme`` ``""`` for a local ``path``; else a remote ``url`` and its ``key``."""

    scheme: str
    path: str = ""
    url: str = ""
    key: str = ""

    @property
    def is_remote(self) -> bool:
        return bool(self.scheme)


def url_scheme(value: str) -> str | None:
    """The lower-cased scheme of a ``scheme://`` location or a ``file:`` URL, ``None`` for a plain path (which
    may hold a colon: ``plate:1/x.tif`` is a file name)."""
    match = _SCHEME.match(value)
    if not match or _WINDOWS.match(value):
        return None
    scheme = match.group(1).lower()
    return scheme if scheme == "file" or match.group(2).startswith("//") else None


def parse_location(value: str) -> Location:
    """``value`` as a :class:`Location`, or :class:`LocationError` saying why it cannot be one."""
    value = str(value).strip()
    if not value:
        raise LocationError("is empty")
    if "\x00" in value:
        raise LocationError("holds a NUL character")
    if "::" in value.split("?", 1)[0] and "://" in value:
        raise LocationError(f"is a chained fsspec URL; the allowed schemes are {list(ALLOWED_SCHEMES)}")
    scheme = url_scheme(value)
    if scheme is None:
        return Location("", path=_local(value))
    if scheme == "file":
        return Location("", path=_local(_file_url_path(value)))
    if scheme not in REMOTE_SCHEMES:
        raise LocationError(f"has the scheme {scheme!r}, which is not allowed; the allowed schemes are "
                            f"{list(ALLOWED_SCHEMES)} and local paths")
    parts = urlsplit(value)
    if not parts.netloc:
        raise LocationError(f"names no bucket or host ({scheme}://BUCKET/KEY)")
    return Location(scheme, url=f"{scheme}://{value.split('://', 1)[1]}", key=parts.path.lstrip("/"))


def _file_url_path(value: str) -> str:
    rest = value.split(":", 1)[1]
    if rest.startswith("//"):
        host, _, path = rest[2:].partition("/")
        if host not in ("", "localhost"):
            raise LocationError(f"is a file URL of the host {host!r}, which cannot be read here; a local file URL is "
                                "file:///absolute/path, a relative path has no scheme")
        rest = "/" + path
    path = unquote(rest)
    if not path:
        raise LocationError("is a file URL without a path")
    return path


def _local(path: str) -> str:
    if _WINDOWS.match(path):
        raise LocationError("is a Windows path, which cannot be opened here; give paths relative to the root")
    return path.replace("\\", "/") if not os.path.isabs(path) else path


def stays_under(root: str, path: str) -> bool:
    """True when ``path`` stays inside ``root`` once ``..`` and ``.`` are resolved (lexically: the root's own
    links are followed, see the module docstring). A URL root is compared as a URL."""
    remote = url_scheme(os.fspath(root)) in REMOTE_SCHEMES
    norm = posixpath.normpath if remote else os.path.abspath  # abspath: root "." holds "./m" too
    root, path = norm(os.fspath(root)), norm(os.fspath(path))
    sep = "/" if remote else os.sep
    return path == root or path.startswith(root.rstrip("/" + os.sep) + sep)


def _outside(path: str, root: str) -> LocationError:
    return LocationError(f"resolves to {path}, outside the root folder {root}; refusing to read files outside it")


def resolve(value: str, root: str | os.PathLike | None = None) -> str:
    """What to open for ``value``: a local path or a URL (scheme lower-cased), by the rule of the module
    docstring; :class:`LocationError` when the rule refuses it. Under a root the result is normalised (no ``.``
    or ``..`` left), so the file the OS opens is the one the rule checked, whatever links the root holds."""
    location = parse_location(value)
    if root is None:
        return location.url if location.is_remote else location.path
    root = os.fspath(root)
    root = local_path(root) if url_scheme(root) == "file" else root
    if location.is_remote:
        decoded = unquote(location.key)
        if decoded != location.key and posixpath.normpath("/" + decoded) != "/" + posixpath.normpath(decoded):
            raise LocationError(f"has the key {location.key!r}, which decodes to {decoded!r}: outside the root "
                                f"folder {root}; refusing to read files outside it")
        relative, absolute = location.key, None
    else:
        relative, absolute = (None, location.path) if os.path.isabs(location.path) else (location.path, None)
    if url_scheme(root) in REMOTE_SCHEMES:
        target = absolute or f"{root.rstrip('/')}/{posixpath.normpath(relative)}"
    else:
        target = os.path.normpath(absolute or os.path.join(root, relative))
    if not stays_under(root, target):
        raise _outside(target, root)
    return target


def resolve_table_value(where: str, row: int, column: str, value: str, root) -> str:
    """:func:`resolve` for the ``column`` value of a table's ``row``; the refusal names the table, row, column and
    value (a hostile table is refused whole, before any site is read)."""
    try:
        return resolve(value, root)
    except LocationError as err:
        raise ValueError(f"{where}, row {row}: {column} {value!r} {err.reason}") from None


def local_path(value: str) -> str:
    """The local path of a plain path or ``file:`` URL (``ValueError`` for anything else)."""
    location = parse_location(value)
    if location.is_remote:
        raise LocationError(f"is a {location.scheme} URL, not a local path")
    return location.path


__all__ = ["ALLOWED_SCHEMES", "Location", "LocationError", "REMOTE_SCHEMES", "local_path", "parse_location", "resolve",
           "resolve_table_value", "stays_under", "url_scheme"]
