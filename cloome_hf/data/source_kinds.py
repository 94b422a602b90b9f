"""The one resolver of site-source kinds: which :class:`~cloome_hf.data.sources.SiteSource` reads a table.

Kinds (:data:`SITE_KINDS`): ``"bray_npz"`` (index CSV + ``root/{SAMPLE_KEY}.npz``), ``"tiff"`` (index CSV + one
TIFF per channel) and ``"jump"`` (a CellProfiler LoadData table, :class:`~cloome_hf.data.jump.JumpSource`).
``"auto"`` picks one by the rule of :func:`open_source`. This module imports both ``sources`` and ``jump``, so
neither of those imports the other back.
"""

from __future__ import annotations

import os
from typing import Any

import pandas as pd

from .jump import JumpSource
from .remote import is_table_location, read_table
from .sources import BrayNpzSource, SiteSource, TiffSource

SITE_KINDS = ("bray_npz", "tiff", "jump")


def looks_like_load_data(table: pd.DataFrame) -> bool:
    """True for a CellProfiler LoadData table: ``Metadata_Plate`` and ``URL_Orig*`` or ``FileName_Orig*`` columns."""
    return "Metadata_Plate" in table and any(str(c).startswith(("URL_Orig", "FileName_Orig")) for c in table.columns)


def open_source(kind: str = "auto", *, index=None, root=None, load_data=None, compounds=None, wells=None,
                errors: str = "raise", expected_shape=None, processor=None, **jump_options) -> SiteSource:
    """Build the source of kind ``kind`` (one of :data:`SITE_KINDS`, or ``"auto"``).

    ``"bray_npz"`` / ``"tiff"`` read ``index`` (+ ``root``); ``"jump"`` reads ``load_data`` (or ``index``, taken
    as the LoadData table), optional ``compounds`` / ``wells``. ``"auto"``: ``jump`` when ``load_data`` or
    ``compounds`` is given or ``index`` is a LoadData table (``Metadata_Plate`` + ``URL_Orig*`` /
    ``FileName_Orig*`` columns), else ``bray_npz`` when ``root/{first SAMPLE_KEY}.npz`` exists, else ``tiff``.
    ``jump_options`` go to :class:`~cloome_hf.data.jump.JumpSource` (``plates``, ``illumination``,
    ``extra_channels``, ``storage_options``, ``retries``, ``retry_wait``, ``read_threads``, controls).
    """
    if kind == "jump" and load_data is None:
        load_data, index = index, None
    if kind == "auto":
        kind, index, load_data = _auto_kind(index, root, load_data, compounds, jump_options.get("storage_options"))
    if kind in ("bray_npz", "tiff") and jump_options:
        raise ValueError(f"option(s) {sorted(jump_options)} apply to the 'jump' (LoadData) layout only, not {kind!r}")
    if kind == "bray_npz":
        return BrayNpzSource(index, root, errors, expected_shape, processor)
    if kind == "tiff":
        return TiffSource(index, root, errors, expected_shape, processor)
    if kind == "jump":
        if load_data is None:
            raise ValueError("the 'jump' layout needs load_data= (a CellProfiler LoadData table)")
        return JumpSource(load_data, compounds, root, errors, expected_shape, processor, wells, **jump_options)
    raise ValueError(f"unknown source kind {kind!r}; expected {', '.join(map(repr, SITE_KINDS))} or 'auto'")


def _auto_kind(index, root, load_data, compounds, storage_options):
    """``(kind, index, load_data)`` by the ``"auto"`` rule of :func:`open_source`."""
    if load_data is not None:
        return "jump", None, load_data
    if index is None:
        raise ValueError("give index= (Bray / TIFF layouts) or load_data= (JUMP / LoadData layout)")
    if compounds is not None:
        return "jump", None, index
    table, _ = read_table(index, "index", storage_options)
    if looks_like_load_data(table):
        return "jump", None, table
    first = table.get("SAMPLE_KEY", pd.Series([""])).iloc[:1].tolist()
    npz = root is not None and first and os.path.isfile(os.path.join(os.fspath(root), f"{first[0]}.npz"))
    return ("bray_npz" if npz else "tiff"), table, None


def site_source_of(source: Any, *, kind: str = "auto", root=None, compounds=None, wells=None,
                   errors: str = "raise", source_options: dict[str, Any] | None = None) -> SiteSource | None:
    """The :class:`~cloome_hf.data.sources.SiteSource` of an index / load_data table given as ``source`` (itself
    when it already is one), reading only the tables, no image; ``None`` for every other source (synthetic,
    datasets folders, Parquet shards, Hub ids). The kind is chosen by :func:`open_source`."""
    if isinstance(source, SiteSource):
        if root is not None or compounds is not None or wells is not None or source_options:
            raise ValueError(f"root / compounds / wells / source_options apply when a table is opened, not to "
                             f"the already opened {source.kind} source {source.where}")
        return source
    if not (kind in SITE_KINDS or (kind == "auto" and is_table_location(source))):
        return None
    return open_source(kind, index=os.fspath(source), compounds=compounds, wells=wells, root=root, errors=errors,
                       **(source_options or {}))
