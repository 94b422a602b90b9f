"""Molecules of a Cell Painting dataset: validated once, fingerprinted once per unique molecule, joined by key.

Bray 2017 has 30k molecules for 760k sites; featurising per site or per epoch would redo the same RDKit work
25 times per pass. :class:`FingerprintTable` holds one row per molecule key (the ``inchikey`` column) and
the loaders join sites to it by key.
"""

from __future__ import annotations

import os
import zipfile
from typing import Iterable, Sequence

import numpy as np

from ..featurization_cloome import molecule_text_problem, parse_molecule


def inchikeys_from_smiles(smiles: Sequence[str], errors: str = "raise") -> list[str | None]:
    """InChIKey of each SMILES (parsed by :func:`~cloome_hf.featurization_cloome.parse_molecule`, the
    featuriser's rule). ``errors="raise"``: ``ValueError`` naming the first invalid SMILES and its position;
    ``"skip"``: ``None`` for invalid entries."""
    from rdkit import Chem
    from rdkit.rdBase import BlockLogs

    out: list[str | None] = []
    blocker = BlockLogs()  # RDKit's InChI warnings off: problems are reported here, naming the SMILES
    try:
        for i, s in enumerate(smiles):
            mol = parse_molecule(s)
            key = Chem.MolToInchiKey(mol) if mol is not None else ""
            if not key:
                if errors == "raise":
                    problem = molecule_text_problem(s)
                    raise ValueError(f"invalid SMILES {s!r} at position {i}" + (f" ({problem})" if problem else ""))
                out.append(None)
            else:
                out.append(key)
    finally:
        del blocker
    return out


def invalid_smiles(smiles: Iterable[str]) -> list[int]:
    """Positions of the strings the featuriser refuses (:func:`~cloome_hf.featurization_cloome.parse_molecule`:
    unparsable, empty, not a string, internal whitespace, non-ASCII); each distinct string parsed once."""
    seen: dict[str, bool] = {}
    bad = []
    for i, s in enumerate(smiles):
        if not isinstance(s, str):
            bad.append(i)
            continue
        if s not in seen:
            seen[s] = parse_molecule(s) is not None
        if not seen[s]:
            bad.append(i)
    return bad


class FingerprintTable:
    """One featurised row per molecule key: a fingerprint, or the record another molecule tower's featuriser makes
    (a graph, token ids; see :mod:`cloome_hf.molecule_tower_registry`).

    Attributes:
        keys: list of molecule keys (InChIKeys), row order of ``fingerprints``.
        smiles: the SMILES featurised for each key.
        fingerprints: ``(num_molecules, fingerprint_size)`` float32, or a ``(num_molecules,)`` object array of the
            featuriser's records.
        invalid: ``{key: smiles}`` of molecules whose SMILES failed featurisation (``errors="skip"``).
        collate: the featuriser's ``collate`` (rows -> the model's molecule inputs); ``None``: fingerprints.
    """

    def __init__(self, keys: Sequence[str], smiles: Sequence[str], fingerprints: np.ndarray, invalid=None,
                 collate=None):
        if len(keys) != len(fingerprints) or len(keys) != len(smiles):
            raise ValueError(f"{len(keys)} keys, {len(smiles)} SMILES and {len(fingerprints)} fingerprint rows differ")
        self.keys = list(keys)
        self.smiles = list(smiles)
        records = isinstance(fingerprints, np.ndarray) and fingerprints.dtype == object
        self.fingerprints = fingerprints if records else np.ascontiguousarray(fingerprints, dtype=np.float32)
        self.collate = collate
        self.invalid = dict(invalid or {})
        self._row = {k: i for i, k in enumerate(self.keys)}
        if len(self._row) != len(self.keys):
            raise ValueError("FingerprintTable keys must be unique")

    @classmethod
    def from_molecules(cls, keys: Sequence[str], smiles: Sequence[str], featurizer, errors: str = "raise"):
        """Featurise each distinct key once (first SMILES seen for a key wins).

        ``errors="raise"``: ``ValueError`` naming the first invalid SMILES and its key; ``"skip"``: invalid
        molecules are left out and listed in :attr:`invalid`.
        """
        if errors not in ("raise", "skip"):
            raise ValueError(f"errors must be 'raise' or 'skip', got {errors!r}")
        first: dict[str, str] = {}
        for k, s in zip(keys, smiles):
            first.setdefault(k, s)
        uniq_keys, uniq_smiles = list(first), list(first.values())
        fps, failed = featurizer.featurize(uniq_smiles, errors="skip")
        if failed and errors == "raise":
            i = failed[0]
            raise ValueError(f"invalid SMILES {uniq_smiles[i]!r} of molecule {uniq_keys[i]!r} "
                             f"({len(failed)} invalid molecules in all)")
        bad = set(failed)
        good = [i for i in range(len(uniq_keys)) if i not in bad]
        return cls([uniq_keys[i] for i in good], [uniq_smiles[i] for i in good], fps,
                   invalid={uniq_keys[i]: uniq_smiles[i] for i in failed}, collate=getattr(featurizer, "collate", None))

    @classmethod
    def from_dataset(cls, ds, featurizer, errors: str = "raise", key_column: str = "inchikey"):
        """Featurise the unique molecules of a ``datasets.Dataset`` (reads only its key and SMILES columns)."""
        meta = ds.select_columns([key_column, "smiles"])
        return cls.from_molecules(list(meta[key_column]), list(meta["smiles"]), featurizer, errors)

    def __len__(self) -> int:
        return len(self.keys)

    def __contains__(self, key: str) -> bool:
        return key in self._row

    def rows(self, keys: Sequence[str]) -> np.ndarray:
        """Row index of each key; ``ValueError`` naming the first key without a fingerprint."""
        try:
            return np.fromiter((self._row[k] for k in keys), dtype=np.int64, count=len(keys))
        except KeyError as err:
            raise ValueError(f"no fingerprint for molecule {err.args[0]!r} (invalid SMILES or not in the table)") \
                from None

    def lookup(self, keys: Sequence[str]) -> np.ndarray:
        """The rows of the given keys: ``(len(keys), fingerprint_size)`` float32 fingerprints, or records."""
        return self.fingerprints[self.rows(keys)]

    def model_inputs(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        """The molecule tower's inputs for the given keys, in order (``{"fingerprints": ...}``, graph tensors, token
        ids): one batch of the data loader."""
        rows = self.lookup(keys)
        return {"fingerprints": rows} if self.collate is None else self.collate(rows)

    def save(self, path: str | os.PathLike) -> None:
        """Write an ``.npz`` (``keys``, ``smiles``, ``fingerprints``); a table of fingerprints only."""
        if self.fingerprints.dtype == object:
            raise ValueError(f"only a fingerprint table is saved as .npz, not one of molecule records ({path})")
        np.savez(path, keys=np.array(self.keys), smiles=np.array(self.smiles), fingerprints=self.fingerprints)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "FingerprintTable":
        """Read a :meth:`save` file (never unpickling); ``ValueError`` naming a damaged or foreign one."""
        try:
            with np.load(path, allow_pickle=False) as f:
                missing = [k for k in ("keys", "smiles", "fingerprints") if k not in f.files]
                if missing:
                    raise ValueError(f"the fingerprint table {os.fspath(path)} lacks {missing}")
                return cls(f["keys"].tolist(), f["smiles"].tolist(), f["fingerprints"])
        except ValueError as err:
            if os.fspath(path) in str(err):
                raise
            raise ValueError(f"cannot read the fingerprint table {os.fspath(path)}: {err}") from err
        except (OSError, EOFError, zipfile.BadZipFile) as err:
            raise ValueError(f"cannot read the fingerprint table {os.fspath(path)}: {type(err).__name__}: {err}") \
                from err
