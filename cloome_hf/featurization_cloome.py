"""SMILES / InChI -> RDKit fingerprints for the CLOOME molecule encoder.

`MoleculeFeaturizer(kind="morgan")` (the default, what the published weights were trained on) is bit-for-bit
RDKit's classic `AllChem.GetMorganFingerprintAsBitVect(mol, 3, nBits=1024, useChirality=True)`, computed with the
current `rdFingerprintGenerator` API. Other kinds:

- `morgan_count`: Morgan counts (same radius / chirality / size);
- `rdkit_count`: RDKit path fingerprint counts (`min_path`..`max_path` bonds);
- `morgan_rdkit_max`: element-wise maximum of `morgan_count` and `rdkit_count`, both folded to
  `fingerprint_size` (default 8192). This is our reading of the paper's retrieval featurisation, "max-pooling
  combination of Morgan and RDKit count-based fingerprints, final length 8192".

Duplicate strings in a batch are featurised once; more than `parallel_threshold` unique strings are featurised in a
process pool with a progress bar.

Doses travel next to the fingerprints as concentrations in uM (`check_concentrations` is the one check of them, for
the processor, the data loader and the sources); a dose-conditioned model encodes them itself
(`CloomeMoleculeConfig.concentration_encoding`).
"""

from __future__ import annotations

import math
import multiprocessing
import os
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np


FINGERPRINT_KINDS = ("morgan", "morgan_count", "rdkit_count", "morgan_rdkit_max")
_DEFAULT_SIZES = {"morgan": 1024, "morgan_count": 1024, "rdkit_count": 1024, "morgan_rdkit_max": 8192}
_CHUNK_SIZE = 500


def molecule_text_problem(text: Any) -> str | None:
    """Why ``text`` is no SMILES / InChI this package reads before RDKit sees it, or ``None``.

    RDKit stops reading a SMILES at the first whitespace (the rest is taken as a name) and so would silently
    featurise a *different* molecule for ``"CC O"``; SMILES and InChI are ASCII, so a non-ASCII character (a
    Greek Omicron looking like O, a combining accent, a zero-width space) is refused as well. Whitespace
    around the string is allowed (stripped).
    """
    if not isinstance(text, str):
        return f"not a string but {type(text).__name__}"
    stripped = text.strip()
    if not stripped:
        return "empty"
    for j, char in enumerate(stripped):
        if not char.isascii():
            return (f"non-ASCII character {char!r} (U+{ord(char):04X}) at character {j}: SMILES and InChI are "
                    "ASCII, this is a look-alike or a stray mark")
        if char.isspace():
            return f"whitespace at character {j}: RDKit would read only {stripped[:j]!r}"
    return None


def parse_molecule(text: Any):
    """SMILES or InChI (``InChI=`` prefix) -> sanitised RDKit Mol, or ``None`` when it cannot be parsed or
    :func:`molecule_text_problem` refuses it. The one parsing rule of the package (featuriser, sources,
    InChIKeys, splits)."""
    from rdkit import Chem
    from rdkit.rdBase import BlockLogs

    if molecule_text_problem(text) is not None:
        return None
    blocker = BlockLogs()  # parse failures are reported by us, with their position, not printed by RDKit
    try:
        text = text.strip()
        return Chem.MolFromInchi(text) if text.startswith("InChI=") else Chem.MolFromSmiles(text)
    finally:
        del blocker


def invalid_message(text: Any, position: int) -> str:
    """``"Invalid SMILES '...' at position i"``, with the reason when the string itself is malformed."""
    problem = molecule_text_problem(text)
    return f"Invalid SMILES {text!r} at position {position}" + (f" ({problem})" if problem else "")


def smiles_diagnosis(text: str) -> str:
    """Why RDKit refuses a SMILES, with the character it points at: ``"extra open parentheses, around character
    5 of 'C1CC(N'"`` or a chemistry problem (``"Explicit valence for atom # 1 C, 6, is greater than permitted"``);
    ``""`` when it parses. For messages shown to a person (the search page), not for the parsing rule itself."""
    import logging
    import re

    from rdkit import Chem, rdBase

    lines: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record):
            lines.append(re.sub(r"^\[[0-9:]+\]\s*", "", record.getMessage()))

    logger, handler = logging.getLogger("rdkit"), _Collect()
    propagate, logger.propagate = logger.propagate, False
    logger.addHandler(handler)
    rdBase.LogToPythonLogger()
    try:
        parsed = Chem.MolFromSmiles(str(text).strip())
    finally:
        rdBase.LogToCppStreams()
        logger.removeHandler(handler)
        logger.propagate = propagate
    if parsed is not None:
        return ""
    reason = next((m.group(1) for line in lines if (m := re.match(r"SMILES Parse Error: (.+?) (while|for input)",
                                                                 line))), None)
    where = next((int(m.group(1)) for line in lines if (m := re.search(r"around position (\d+)", line))), None)
    if reason and where is not None:
        return f"{reason}, around character {where} of {str(text).strip()!r}"
    return reason or (lines[0] if lines else "RDKit cannot parse it")


class SmilesFeaturizer:
    """What every molecule featuriser shares: each distinct string featurised once, a process pool above
    ``parallel_threshold`` unique strings, the one parsing rule (:func:`parse_molecule`) and its refusals by
    position.

    A subclass sets ``tower`` (the molecule-tower kind it feeds, see :mod:`cloome_hf.molecule_tower_registry`)
    and ``model_input_names``, and implements ``to_dict``, ``_empty_rows(n)``, ``_encode(mol, text)`` (one row) and
    ``collate(rows)`` (rows -> the model's input arrays). Rows are a float matrix (fingerprints) or a 1-D object
    array of per-molecule records (graphs, token ids); either indexes with an integer array.
    """

    tower = "mlp"
    model_input_names: tuple[str, ...] = ()
    parallel_threshold = 2000
    num_workers: int | None = None

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]):
        return cls(**dict(config))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self.to_dict() == other.to_dict()

    def _empty_rows(self, n: int) -> np.ndarray:
        return np.empty(n, dtype=object)

    def _featurize_unique(self, strings: Sequence[str]) -> tuple[np.ndarray, list[int]]:
        """Serial work unit: the rows of ``strings`` (failed rows left empty) and the failed positions."""
        out = self._empty_rows(len(strings))
        failed = []
        for i, text in enumerate(strings):
            mol = parse_molecule(text)
            if mol is None:
                failed.append(i)
            else:
                out[i] = self._encode(mol, text)
        return out, failed

    def _num_workers(self, num_unique: int) -> int:
        if self.num_workers is not None:
            available = int(self.num_workers)
        else:
            available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        return max(1, min(available, math.ceil(num_unique / _CHUNK_SIZE)))

    def _featurize_parallel(self, strings: Sequence[str], workers: int) -> tuple[np.ndarray, list[int]]:
        from tqdm.auto import tqdm

        # fork starts workers in milliseconds; they only run RDKit, so inheriting the parent's state is harmless.
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        chunks = [strings[i : i + _CHUNK_SIZE] for i in range(0, len(strings), _CHUNK_SIZE)]
        out = self._empty_rows(len(strings))
        failed: list[int] = []
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method)) as pool:
            results = pool.map(_featurize_chunk, [self] * len(chunks), chunks)
            for k, (rows, bad) in enumerate(tqdm(results, total=len(chunks), desc="featurising", unit="chunk")):
                start = k * _CHUNK_SIZE
                out[start : start + len(rows)] = rows
                failed.extend(start + i for i in bad)
        return out, failed

    def _rows_for_transfer(self, rows: np.ndarray) -> np.ndarray:
        """A worker's rows as they are sent back to the parent (a subclass may shrink them)."""
        return rows

    def featurize(self, smiles: Iterable[str] | str, errors: str = "raise") -> tuple[np.ndarray, list[int]]:
        """Featurise a list of SMILES / InChI strings.

        Args:
            smiles: strings (a single string is treated as a list of one).
            errors: "raise" -> ValueError naming the first invalid string and its position;
                "skip" -> invalid entries are dropped.

        Returns:
            (rows of the valid entries, failed_indices: positions in the input).
        """
        if errors not in ("raise", "skip"):
            raise ValueError(f"errors must be 'raise' or 'skip', got {errors!r}")
        if isinstance(smiles, str):
            strings = [smiles]
        elif smiles is None or isinstance(smiles, (bytes, bytearray)) or not isinstance(smiles, Iterable):
            raise ValueError(invalid_message(smiles, 0) + ": expected a string or a list of strings")
        else:
            strings = list(smiles)
        # Featurise each distinct string once; `inverse` maps input positions back to the unique rows.
        unique: dict[Any, int] = {}
        inverse = np.empty(len(strings), dtype=np.int64)
        for i, text in enumerate(strings):
            key = text if isinstance(text, str) else ("__not_a_string__", i)
            inverse[i] = unique.setdefault(key, len(unique))
        unique_strings = [k if isinstance(k, str) else None for k in unique]
        workers = self._num_workers(len(unique_strings))
        if len(unique_strings) > self.parallel_threshold and workers > 1:
            rows, failed_unique = self._featurize_parallel(unique_strings, workers)
        else:
            rows, failed_unique = self._featurize_unique(unique_strings)
        bad_unique = np.zeros(len(unique_strings), dtype=bool)
        bad_unique[failed_unique] = True
        failed = np.flatnonzero(bad_unique[inverse]).tolist()
        if failed and errors == "raise":
            first = failed[0]
            more = f" (and {len(failed) - 1} more invalid entries)" if len(failed) > 1 else ""
            raise ValueError(invalid_message(strings[first], first) + more)
        keep = inverse if not failed else inverse[~bad_unique[inverse]]
        return rows[keep], failed

    def __call__(self, smiles: Iterable[str] | str) -> np.ndarray:
        """The rows of ``smiles``; raises ValueError on the first invalid string."""
        return self.featurize(smiles, errors="raise")[0]

    def model_inputs(self, smiles: Iterable[str] | str) -> dict[str, np.ndarray]:
        """``smiles`` -> the model's molecule inputs (``collate`` of their rows)."""
        return self.collate(self(smiles))


def _check_featurizer_sizes(fingerprint_size, radius, min_path, max_path, parallel_threshold, num_workers) -> None:
    """The sizes of a (possibly hostile) ``processor_config.json``, bounded as the model's are
    (:mod:`cloome_hf.config_bounds`): a Morgan radius past 16 bonds or RDKit paths past 32 only cost time."""
    from .config_bounds import MAX_FINGERPRINT_SIZE, check_featurizer_parallelism, checked_int

    checked_int("featurizer.fingerprint_size", fingerprint_size, MAX_FINGERPRINT_SIZE)
    checked_int("featurizer.radius", radius, 16, low=0)
    checked_int("featurizer.min_path", min_path, 32)
    checked_int("featurizer.max_path", max_path, 32)
    check_featurizer_parallelism(parallel_threshold, num_workers)


class MoleculeFeaturizer(SmilesFeaturizer):
    """Turn SMILES (or InChI) strings into fingerprint matrices (the ``mlp`` molecule tower's input).

    Args:
        kind: one of `FINGERPRINT_KINDS`.
        fingerprint_size: number of bits / count bins (default 1024, 8192 for `morgan_rdkit_max`).
        radius: Morgan radius (3 = ECFP6-like, as in CLOOME).
        use_chirality: include chirality in Morgan atom invariants.
        min_path, max_path: bond path lengths of the RDKit path fingerprint.
        parallel_threshold: use a process pool only above this many unique strings (start-up costs ~0.1-1 s).
        num_workers: pool size (default: the CPUs this process may use).

    Call: `featurizer(smiles) -> (N, fingerprint_size) float32`; an invalid or empty string raises a
    `ValueError` naming it and its position. `featurize(smiles, errors="skip")` returns the valid rows and the
    failed positions instead.
    """

    tower = "mlp"
    model_input_names = ("fingerprints",)

    def __init__(
        self,
        kind: str = "morgan",
        fingerprint_size: int | None = None,
        radius: int = 3,
        use_chirality: bool = True,
        min_path: int = 1,
        max_path: int = 7,
        parallel_threshold: int = 2000,
        num_workers: int | None = None,
    ):
        if kind not in FINGERPRINT_KINDS:
            raise ValueError(f"Unknown fingerprint kind {kind!r}; choose one of {FINGERPRINT_KINDS}")
        fingerprint_size = _DEFAULT_SIZES[kind] if fingerprint_size is None else fingerprint_size
        _check_featurizer_sizes(fingerprint_size, radius, min_path, max_path, parallel_threshold, num_workers)
        if max_path < min_path:
            raise ValueError(f"Invalid radius/path settings: radius={radius}, min_path={min_path}, max_path={max_path}")
        self.kind = kind
        self.fingerprint_size = fingerprint_size
        self.radius = int(radius)
        self.use_chirality = bool(use_chirality)
        self.min_path = int(min_path)
        self.max_path = int(max_path)
        self.parallel_threshold = int(parallel_threshold)
        self.num_workers = num_workers
        self._generators = None  # RDKit generators are not picklable: built lazily in each process

    # ------------------------------------------------------------------ config
    def to_dict(self) -> dict[str, Any]:
        """Settings that define the output (plus the parallelism knobs), JSON-serialisable."""
        return {
            "kind": self.kind,
            "fingerprint_size": self.fingerprint_size,
            "radius": self.radius,
            "use_chirality": self.use_chirality,
            "min_path": self.min_path,
            "max_path": self.max_path,
            "parallel_threshold": self.parallel_threshold,
            "num_workers": self.num_workers,
        }

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MoleculeFeaturizer) and self.to_dict() == other.to_dict()

    def __getstate__(self):
        return self.to_dict()

    def __setstate__(self, state):
        self.__init__(**state)

    # ------------------------------------------------------------------ featurisation
    def _fingerprint_fns(self):
        if self._generators is None:
            from rdkit.Chem import rdFingerprintGenerator as rfg

            size = self.fingerprint_size
            morgan = rfg.GetMorganGenerator(radius=self.radius, fpSize=size, includeChirality=self.use_chirality)
            rdkit = rfg.GetRDKitFPGenerator(minPath=self.min_path, maxPath=self.max_path, fpSize=size)
            self._generators = {
                "morgan": morgan.GetFingerprintAsNumPy,
                "morgan_count": morgan.GetCountFingerprintAsNumPy,
                "rdkit_count": rdkit.GetCountFingerprintAsNumPy,
                "morgan_rdkit_max": lambda mol: np.maximum(
                    morgan.GetCountFingerprintAsNumPy(mol), rdkit.GetCountFingerprintAsNumPy(mol)
                ),
            }
        return self._generators[self.kind]

    def _empty_rows(self, n: int) -> np.ndarray:
        return np.zeros((n, self.fingerprint_size), dtype=np.float32)

    def _encode(self, mol, text: str) -> np.ndarray:
        return self._fingerprint_fns()(mol)

    def _rows_for_transfer(self, rows: np.ndarray) -> np.ndarray:
        """Fingerprints are small non-negative integers: sending them back as uint8/uint16 instead of float32 cuts
        the pickling cost 2-4x (an 8192-bin chunk of 500 molecules is 16 MB as float32), and the cast back is
        exact."""
        peak = rows.max(initial=0)
        for dtype in (np.uint8, np.uint16):
            if peak <= np.iinfo(dtype).max:
                return rows.astype(dtype)
        return rows

    def collate(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Fingerprint rows -> ``{"fingerprints": (N, fingerprint_size) float32}``."""
        return {"fingerprints": np.asarray(rows, dtype=np.float32)}


def _featurize_chunk(featurizer: SmilesFeaturizer, strings: Sequence[str]) -> tuple[np.ndarray, list[int]]:
    """Process-pool entry point (module level so it pickles; a featuriser pickles as its settings)."""
    rows, failed = featurizer._featurize_unique(strings)
    return featurizer._rows_for_transfer(rows), failed


def check_concentrations(values: Any, count: int | None = None, where: str = "concentrations",
                         labels: Sequence[Any] | None = None) -> np.ndarray:
    """Concentrations in uM as a ``(N,)`` float64 array: each finite and ``>= 0``, or NaN for an unknown dose.

    Args:
        values: one number per molecule (``None`` / ``pd.NA`` count as unknown).
        count: the number of molecules they belong to (``ValueError`` when it differs).
        where: what to call them in error messages.
        labels: per value, what names it in an error message (e.g. the sample key); default its position.

    Raises ``ValueError`` naming the first value that is not a number, negative or infinite.
    """
    import pandas as pd

    items = list(np.ravel(np.asarray(values, dtype=object))) if not np.isscalar(values) else [values]
    if count is not None and len(items) != count:
        raise ValueError(f"{where}: got {len(items)} concentrations for {count} molecules")
    out = np.empty(len(items), dtype=np.float64)
    for i, value in enumerate(items):
        try:
            out[i] = np.nan if value is None or value is pd.NA else float(value)
        except (TypeError, ValueError):
            out[i] = -np.inf  # refused below, naming it
        if not (np.isnan(out[i]) or (np.isfinite(out[i]) and out[i] >= 0)):
            name = f"position {i}" if labels is None else repr(labels[i])
            raise ValueError(f"{where}: concentration {value!r} at {name} is not a dose in uM (a finite number "
                             ">= 0, or NaN / missing when unknown)")
    return out


__all__ = ["FINGERPRINT_KINDS", "MoleculeFeaturizer", "SmilesFeaturizer", "check_concentrations", "invalid_message",
           "molecule_text_problem", "parse_molecule", "smiles_diagnosis"]
