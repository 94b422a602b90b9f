"""SMILES -> token ids for the ``transformers`` molecule tower (a chemical language model and its tokenizer).

Every string passes the package's one parsing rule first (:func:`~cloome_hf.featurization_cloome.parse_molecule`:
the same refusals by position as for fingerprints); the model then reads RDKit's canonical SMILES of the molecule
(``canonicalize=True``, the default: two spellings of one molecule give one embedding, and an InChI becomes a
SMILES, what chemical language models were trained on) or the string as given.

**Too long:** a molecule of more tokens than ``max_length`` (the tower's limit) is a ``ValueError`` naming the
molecule, its token count and the limit, unless ``truncation=True``, which cuts it to ``max_length`` tokens and
warns how many molecules were cut. Never silent.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from .featurization_cloome import SmilesFeaturizer

#: Where the processor saves the tokenizer, beside ``processor_config.json``.
TOKENIZER_FOLDER = "molecule_tokenizer"


class TokenFeaturizer(SmilesFeaturizer):
    """SMILES / InChI -> ``input_ids`` rows; :meth:`collate` -> padded ``input_ids`` and ``attention_mask``.

    Args:
        tokenizer: a transformers tokenizer (``AutoTokenizer.from_pretrained`` of the tower).
        max_length: the most tokens (special tokens included) the tower reads.
        truncation: cut longer molecules to ``max_length`` (with a warning) instead of refusing them.
        canonicalize: feed RDKit's canonical SMILES instead of the given string.
    """

    tower = "transformers"
    model_input_names = ("input_ids", "attention_mask")

    def __init__(self, tokenizer, max_length: int, truncation: bool = False, canonicalize: bool = True,
                 parallel_threshold: int = 2000, num_workers: int | None = None):
        if tokenizer is None:
            raise ValueError("a transformers molecule tower needs its tokenizer: the processor has none (it is saved "
                             f"in {TOKENIZER_FOLDER}/ beside processor_config.json)")
        from .config_bounds import MAX_TOKENS, check_featurizer_parallelism, checked_int

        checked_int("featurizer.max_length", max_length, MAX_TOKENS, low=2)
        check_featurizer_parallelism(parallel_threshold, num_workers)
        if tokenizer.pad_token_id is None:
            raise ValueError(f"the tokenizer {type(tokenizer).__name__} has no padding token; set one before use")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.truncation = bool(truncation)
        self.canonicalize = bool(canonicalize)
        self.parallel_threshold = parallel_threshold
        self.num_workers = num_workers

    def to_dict(self) -> dict[str, Any]:
        return {"tower": self.tower, "tokenizer": TOKENIZER_FOLDER, "max_length": self.max_length,
                "truncation": self.truncation, "canonicalize": self.canonicalize,
                "parallel_threshold": self.parallel_threshold, "num_workers": self.num_workers}

    @classmethod
    def from_dict(cls, config: Mapping[str, Any], tokenizer=None) -> TokenFeaturizer:
        config = {k: v for k, v in config.items() if k not in ("tower", "tokenizer")}
        return cls(tokenizer, **config)

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, TokenFeaturizer) and self.to_dict() == other.to_dict()
                and self.tokenizer.get_vocab() == other.tokenizer.get_vocab())

    def _text(self, mol, text: str) -> str:
        if not self.canonicalize:
            return text.strip()
        from rdkit import Chem

        return Chem.MolToSmiles(mol)

    def _encode(self, mol, text: str) -> np.ndarray:
        ids = self.tokenizer(self._text(mol, text), add_special_tokens=True)["input_ids"]
        return np.asarray(ids, dtype=np.int32)

    def featurize(self, smiles, errors: str = "raise"):
        if not isinstance(smiles, str) and isinstance(smiles, Iterable):
            smiles = list(smiles)  # read twice: featurised, then named in an error
        rows, failed = super().featurize(smiles, errors)
        lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
        too_long = np.flatnonzero(lengths > self.max_length)
        if too_long.size and not self.truncation:
            strings = [smiles] if isinstance(smiles, str) else list(smiles)
            kept = [i for i in range(len(strings)) if i not in set(failed)]
            first = int(too_long[0])
            raise ValueError(f"molecule {strings[kept[first]]!r} at position {kept[first]} is {lengths[first]} tokens "
                             f"long, more than the molecule tower's limit of {self.max_length} "
                             f"({too_long.size} such molecules); pass truncation=True to cut them")
        if too_long.size:
            warnings.warn(f"{too_long.size} molecules are longer than {self.max_length} tokens and are truncated "
                          "(truncation=True)", stacklevel=2)
            rows = rows.copy()
            for i in too_long:
                rows[i] = np.concatenate([rows[i][:self.max_length - 1], rows[i][-1:]])  # keep the end token
        return rows, failed

    def collate(self, rows) -> dict[str, np.ndarray]:
        """Token id rows -> ``input_ids`` (N, L) int64 padded with the tokenizer's pad id (on its padding side)
        and ``attention_mask`` (N, L) int64, L the longest row."""
        rows = list(rows)
        length = max((len(r) for r in rows), default=0)
        ids = np.full((len(rows), length), self.tokenizer.pad_token_id, dtype=np.int64)
        mask = np.zeros((len(rows), length), dtype=np.int64)
        left = getattr(self.tokenizer, "padding_side", "right") == "left"
        for i, row in enumerate(rows):
            span = slice(length - len(row), length) if left else slice(0, len(row))
            ids[i, span] = row
            mask[i, span] = 1
        return {"input_ids": ids, "attention_mask": mask}


__all__ = ["TOKENIZER_FOLDER", "TokenFeaturizer"]
