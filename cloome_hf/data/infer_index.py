"""An index CSV inferred from the file names of a TIFF folder (``cloome prepare --kind tiff --root DIR``
without ``--index``).

Two naming schemes are recognised, each file's path taken relative to the root:

* **Phenix / Harmony (CellProfiler's usual input)**: ``[PLATE/]r03c05f02p01-ch1sk1fk1fl1.tiff`` - row 3, column 5
  (well ``C05``), field (site) 2, plane 1, channel 1. The plate is the folder the file is in (the root's own
  name for files directly in it). Numbered channels need ``channels`` (``{"1": "Hoechst", ...}``), since the
  order of the stains is the experiment's choice.
* **per-plate folders**: ``PLATE/[PREFIX_]A01_s1_CHANNEL.tif`` - well, site, channel, where CHANNEL is a
  channel name or JUMP alias (``Hoechst``, ``DNA``, ...; any case) or a token that ``channels`` maps
  (``w1`` -> ``Hoechst``). ImageXpress-style names (``plate_A01_s1_w1.tif``) are this scheme.

The molecules come from a well table (``plate, well, smiles`` columns; also ``PLATE_ID`` / ``Metadata_Plate``,
``WELL_POSITION`` / ``Metadata_Well``, ``SMILES`` / ``Metadata_SMILES``); its other columns are copied into the
index. A well the table does not list gets an empty SMILES, and ``prepare`` leaves it out (listed in its
report). The result is refused, with an example of what was found, when the files follow both schemes or
neither, when some files follow no scheme, when a channel token is neither a channel name nor mapped, and when a
site holds a channel twice. A site that lacks a channel keeps an empty ``IMG_<channel>``: ``prepare`` leaves it
out and lists it in its report.
"""

from __future__ import annotations

import os
import re
from typing import Mapping

import pandas as pd

from ..channels import CHANNELS, canonical_channel_name

PHENIX = re.compile(r"r(?P<row>\d{2})c(?P<col>\d{2})f(?P<site>\d{2})p(?P<plane>\d{2})-ch(?P<channel>\d+)"
                    r"(?:sk\d+fk\d+fl\d+)?\.tiff?", re.IGNORECASE)
PER_PLATE = re.compile(r"(?:.*_)?(?P<well>[A-Pa-p]\d{1,2})_s(?P<site>\d+)_(?P<channel>[A-Za-z0-9_]+)\.tiff?")
SCHEMES = {"phenix": PHENIX, "per_plate": PER_PLATE}
EXAMPLES = {"phenix": "PLATE/r03c05f02p01-ch1sk1fk1fl1.tiff", "per_plate": "PLATE/A01_s1_Hoechst.tif"}
_COLUMN_NAMES = {"plate": ("plate", "PLATE_ID", "Metadata_Plate"), "well": ("well", "WELL_POSITION", "Metadata_Well"),
                 "smiles": ("smiles", "SMILES", "Metadata_SMILES")}


def normalise_well(well: str) -> str:
    """``a1`` / ``A1`` / ``A01`` -> ``A01``."""
    match = re.fullmatch(r"\s*([A-Za-z]+)0*(\d+)\s*", str(well))
    if match is None:
        raise ValueError(f"well {well!r} is not a row letter and a column number (e.g. A01)")
    return f"{match.group(1).upper()}{int(match.group(2)):02d}"


def parse_channel_map(text: str | None) -> dict[str, str]:
    """``"1=Hoechst,2=ERSyto"`` -> ``{"1": "Hoechst", "2": "ERSyto"}`` (channel names or JUMP aliases)."""
    if not text:
        return {}
    out = {}
    for part in text.split(","):
        token, sep, name = part.partition("=")
        if not sep or not token.strip() or canonical_channel_name(name.strip()) not in CHANNELS:
            raise ValueError(f"--channels entry {part!r} is not TOKEN=CHANNEL with CHANNEL one of "
                             f"{', '.join(CHANNELS)} (or DNA, ER, RNA, AGP)")
        out[token.strip().lower()] = canonical_channel_name(name.strip())
    return out


def _tiff_files(root: str) -> list[str]:
    found = []
    for folder, _, names in os.walk(root):
        found += [os.path.relpath(os.path.join(folder, n), root) for n in names
                  if n.lower().endswith((".tif", ".tiff"))]
    return sorted(found)


def _parse(scheme: str, relative: str, root: str) -> dict[str, str] | None:
    match = SCHEMES[scheme].fullmatch(os.path.basename(relative))
    if match is None:
        return None
    folder = os.path.dirname(relative)
    plate = folder.replace(os.sep, "/") if folder else os.path.basename(os.path.abspath(root))
    if scheme == "phenix":
        row, col = int(match["row"]), int(match["col"])
        if not 1 <= row <= 26:
            return None
        well, site = f"{chr(ord('A') + row - 1)}{col:02d}", str(int(match["site"]))
        if int(match["plane"]) != 1:
            return {"plate": plate, "well": well, "site": site, "channel": "", "plane": match["plane"]}
    else:
        well, site = normalise_well(match["well"]), str(int(match["site"]))
    return {"plate": plate, "well": well, "site": site, "channel": match["channel"]}


def _pick_scheme(root: str, files: list[str]) -> str:
    """The one scheme every file follows; ``ValueError`` with examples otherwise."""
    if not files:
        raise ValueError(f"no .tif / .tiff files under {root}")
    fits = {s: [f for f in files if _parse(s, f, root) is not None] for s in SCHEMES}
    complete = [s for s, matched in fits.items() if len(matched) == len(files)]
    known = "; ".join(f"{s}: {e}" for s, e in EXAMPLES.items())
    if len(complete) == 1:
        return complete[0]
    if len(complete) > 1:
        raise ValueError(f"the file names under {root} fit more than one naming scheme ({', '.join(complete)}; "
                         f"e.g. {files[0]!r}): write an index CSV and pass --index")
    best = max(fits, key=lambda s: len(fits[s]))
    odd = [f for f in files if f not in set(fits[best])]
    raise ValueError(f"cannot infer an index from the file names under {root}: {len(odd)} of {len(files)} files "
                     f"follow no known scheme (e.g. {odd[0]!r}; found e.g. {files[0]!r}); known schemes: {known}. "
                     "Write an index CSV and pass --index")


def _channel_of(token: str, channels: Mapping[str, str]) -> str | None:
    if token.lower() in channels:
        return channels[token.lower()]
    name = canonical_channel_name(token)
    return name if name in CHANNELS else None


def read_well_table(path) -> pd.DataFrame:
    """A well table (a path or DataFrame: plate, well, smiles + other columns) in the names :func:`infer_tiff_index` uses."""
    from .remote import read_table

    table, where = read_table(path, "well")
    renamed = {}
    for name, options in _COLUMN_NAMES.items():
        column = next((c for c in options if c in table.columns), None)
        if column is None:
            raise ValueError(f"well table {where} has no {name} column (one of {', '.join(options)}); has "
                             f"{list(table.columns)}")
        renamed[column] = name
    table = table.rename(columns=renamed)
    table["well"] = [normalise_well(w) for w in table["well"]]
    table["plate"] = table["plate"].astype(str)
    dup = table[table.duplicated(["plate", "well"])]
    if len(dup):
        raise ValueError(f"well table {where} lists plate {dup.plate.iloc[0]}, well {dup.well.iloc[0]} twice")
    return table


def infer_tiff_index(root, wells, channels: Mapping[str, str] | None = None) -> pd.DataFrame:
    """The index (``SAMPLE_KEY, PLATE_ID, WELL_POSITION, SITE, SMILES, IMG_<channel>`` + the well table's other
    columns; file paths relative to ``root``) of the TIFFs under ``root``, with molecules from ``wells`` (a well
    table path or DataFrame, see the module docstring). ``channels`` maps channel tokens of the file names to
    channel names. Refusals name what was found (module docstring)."""
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"--root {root} is not a folder")
    channels = {str(k).lower(): canonical_channel_name(v) for k, v in (channels or {}).items()}
    files = _tiff_files(root)
    scheme = _pick_scheme(root, files)
    parsed_files = [(f, _parse(scheme, f, root)) for f in files]
    parsed_files = [(f, p) for f, p in parsed_files if "plane" not in p]  # planes after the first are not sites
    unmapped = sorted({p["channel"] for _, p in parsed_files if _channel_of(p["channel"], channels) is None})
    if unmapped:
        tokens = sorted({p["channel"] for _, p in parsed_files})
        raise ValueError(f"the file names under {root} use the channel token(s) {tokens} (e.g. "
                         f"{parsed_files[0][0]!r}), and {unmapped} are not channel names: say which is which with "
                         f"--channels TOKEN=CHANNEL,... (e.g. --channels 1=Hoechst,2=ERSyto,3=ERSytoBleed,"
                         f"4=Ph_golgi,5=Mito)")
    sites: dict[tuple[str, str, str], dict[str, str]] = {}
    for f, parsed in parsed_files:
        channel = _channel_of(parsed["channel"], channels)
        key = (parsed["plate"], parsed["well"], parsed["site"])
        site = sites.setdefault(key, {})
        if channel in site:
            raise ValueError(f"plate {key[0]}, well {key[1]}, site {key[2]} has channel {channel} twice: "
                             f"{site[channel]!r} and {f!r}")
        site[channel] = f
    table = read_well_table(wells)
    molecules = table.set_index(["plate", "well"])
    rows = []
    for (plate, well, site), found in sorted(sites.items(), key=lambda kv: (kv[0][0], kv[0][1], int(kv[0][2]))):
        extra = molecules.loc[(plate, well)].to_dict() if (plate, well) in molecules.index else {"smiles": ""}
        rows.append({"SAMPLE_KEY": f"{plate}-{well}-{site}", "PLATE_ID": plate, "WELL_POSITION": well,
                     "SITE": site, "SMILES": extra.pop("smiles"), **{f"IMG_{c}": found.get(c, "") for c in CHANNELS},
                     **extra})
    listed = {(p, w) for p, w, _ in sites}
    if not listed & set(molecules.index):
        example = next(iter(sorted(listed)))
        raise ValueError(f"the well table lists none of the wells found (e.g. plate {example[0]}, well "
                         f"{example[1]}; the table has e.g. plate {table.plate.iloc[0]}, well {table.well.iloc[0]})")
    return pd.DataFrame(rows)


__all__ = ["EXAMPLES", "infer_tiff_index", "normalise_well", "parse_channel_map", "read_well_table"]
