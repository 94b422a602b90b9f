"""SMILES -> molecular graphs for the ``gnn`` molecule tower: atoms and bonds as one-hot feature rows.

A **graph schema** names the atom and bond features and the values each may take::

    {"atom": {"element": ["C", "N", ...], "degree": [0, 1, ...], ...}, "bond": {"bond_type": [...], ...}}

It is recorded in ``molecule_config.graph_schema`` and in the processor, and a processor whose schema differs from
its model's is refused, naming the feature. A feature's one-hot block has one column per value, in the order of
its values; the blocks follow the order of :data:`ATOM_FEATURES` / :data:`BOND_FEATURES` (not of the mapping: saved
JSON sorts keys).

**Atoms outside the schema** (an element, charge or degree the schema does not list) are an error naming the atom,
its value and the molecule, never a silent "other" column: a graph tower trained on organic molecules has not
learned what a platinum atom is, and an unknown bucket would hide that it is being asked. Widen the values
(``graph_feature_values`` of :class:`~cloome_hf.CloomeMoleculeConfig`) to accept more. Unparsable SMILES are
handled as for fingerprints (refused, or skipped with ``errors="skip"``); a schema violation is raised in both
modes.

Per molecule the featuriser keeps small integer arrays (category indices, not one-hot floats: 100k molecules take
tens of MB); :meth:`GraphFeaturizer.collate` builds the batch tensors of torch-geometric: ``x`` (atoms, D_atom)
float32, ``edge_index`` (2, E) int64 (each bond in both directions), ``edge_attr`` (E, D_bond) float32 and
``batch`` (atoms,) int64, the molecule of each atom.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .featurization_cloome import SmilesFeaturizer

# The organic elements and the metals and counter-ions of screening libraries (salts: Na, K, Ca, ...).
_ELEMENTS = ["H", "Li", "B", "C", "N", "O", "F", "Na", "Mg", "Al", "Si", "P", "S", "Cl", "K", "Ca", "Mn", "Fe", "Co",
             "Ni", "Cu", "Zn", "As", "Se", "Br", "Sr", "Ag", "Sn", "Sb", "I", "Ba", "Pt", "Au", "Hg", "Bi"]
_HYBRIDIZATIONS = ["S", "SP", "SP2", "SP3", "SP3D", "SP3D2", "UNSPECIFIED"]
_CHIRALITIES = ["CHI_UNSPECIFIED", "CHI_TETRAHEDRAL_CW", "CHI_TETRAHEDRAL_CCW", "CHI_OTHER"]

#: name -> (default values, value of an RDKit atom)
ATOM_FEATURES = {
    "element": (_ELEMENTS, lambda a: a.GetSymbol()),
    "degree": (list(range(7)), lambda a: a.GetDegree()),
    "formal_charge": (list(range(-3, 4)), lambda a: a.GetFormalCharge()),
    "num_hs": (list(range(5)), lambda a: a.GetTotalNumHs()),
    "hybridization": (_HYBRIDIZATIONS, lambda a: str(a.GetHybridization())),
    "aromatic": ([False, True], lambda a: a.GetIsAromatic()),
    "in_ring": ([False, True], lambda a: a.IsInRing()),
    "chirality": (_CHIRALITIES, lambda a: str(a.GetChiralTag())),
}
#: name -> (default values, value of an RDKit bond)
BOND_FEATURES = {
    "bond_type": (["SINGLE", "DOUBLE", "TRIPLE", "AROMATIC"], lambda b: str(b.GetBondType())),
    "conjugated": ([False, True], lambda b: b.GetIsConjugated()),
    "in_ring": ([False, True], lambda b: b.IsInRing()),
    "stereo": (["STEREONONE", "STEREOANY", "STEREOZ", "STEREOE", "STEREOCIS", "STEREOTRANS"],
               lambda b: str(b.GetStereo())),
}
DEFAULT_ATOM_FEATURES = ("element", "degree", "formal_charge", "num_hs", "hybridization", "aromatic", "in_ring",
                         "chirality")
DEFAULT_BOND_FEATURES = ("bond_type", "conjugated", "in_ring", "stereo")
_REGISTRIES = {"atom": ATOM_FEATURES, "bond": BOND_FEATURES}


def graph_schema(atom_features=DEFAULT_ATOM_FEATURES, bond_features=DEFAULT_BOND_FEATURES,
                 feature_values: Mapping[str, list] | None = None) -> dict[str, dict[str, list]]:
    """The schema of the named features with their default values; ``feature_values`` replaces the values of a
    feature (``{"element": [...]}``, or ``{"bond.in_ring": [...]}`` where an atom and a bond feature share a
    name). ``ValueError`` naming an unknown feature."""
    overrides = dict(feature_values or {})
    schema: dict[str, dict[str, list]] = {}
    for part, names in (("atom", atom_features), ("bond", bond_features)):
        if isinstance(names, str):
            raise ValueError(f"{part}_features must be a list of feature names, got {names!r}")
        schema[part] = {}
        for name in names:
            if name not in _REGISTRIES[part]:
                raise ValueError(f"unknown {part} feature {name!r}; known {part} features: "
                                 f"{sorted(_REGISTRIES[part])}")
            values = overrides.pop(f"{part}.{name}" if f"{part}.{name}" in overrides else name, None)
            schema[part][name] = list(_REGISTRIES[part][name][0] if values is None else values)
    if overrides:
        raise ValueError(f"graph_feature_values names features that are not in the schema: {sorted(overrides)}")
    return checked_graph_schema(schema)


def checked_graph_schema(schema: Any) -> dict[str, dict[str, list]]:
    """``schema`` if it is a valid graph schema (known features, non-empty distinct values), else ``ValueError``."""
    if not isinstance(schema, Mapping) or set(schema) != {"atom", "bond"}:
        raise ValueError(f"a graph schema maps 'atom' and 'bond' to their features, got {schema!r}")
    out = {}
    for part in ("atom", "bond"):
        features = schema[part]
        if not isinstance(features, Mapping):
            raise ValueError(f"graph schema {part!r} must map feature names to values, got {features!r}")
        for name, values in features.items():
            if name not in _REGISTRIES[part]:
                raise ValueError(f"unknown {part} feature {name!r} in the graph schema; known: "
                                 f"{sorted(_REGISTRIES[part])}")
            if not isinstance(values, (list, tuple)) or not values or len(set(map(repr, values))) != len(values):
                raise ValueError(f"graph schema {part} feature {name!r} needs a non-empty list of distinct values, "
                                 f"got {values!r}")
        # The one-hot blocks follow the registry's order, whatever the mapping's: JSON files of transformers
        # configs and processors are written with sorted keys.
        out[part] = {name: list(features[name]) for name in _REGISTRIES[part] if name in features}
    if not out["atom"]:
        raise ValueError("a graph schema needs at least one atom feature")
    return out


def schema_widths(schema: Mapping) -> tuple[int, int]:
    """(atom feature width, bond feature width): the one-hot columns of ``x`` and ``edge_attr``."""
    return tuple(sum(len(v) for v in schema[part].values()) for part in ("atom", "bond"))


def schema_difference(expected: Mapping, given: Mapping) -> str | None:
    """What differs between two schemas (the first feature whose presence, order or values differ), or None."""
    for part in ("atom", "bond"):
        a, b = expected.get(part, {}), given.get(part, {})
        if list(a) != list(b):
            return f"{part} features {list(b)} instead of {list(a)}"
        for name in a:
            if list(a[name]) != list(b[name]):
                return f"{part} feature {name!r} takes values {list(b[name])} instead of {list(a[name])}"
    return None


class MoleculeGraph:
    """One molecule's graph as category indices: ``atoms`` (n_atoms, n_atom_features) and ``bonds``
    (n_bonds, n_bond_features) int16, ``pairs`` (n_bonds, 2) int32 (atom indices of each bond)."""

    __slots__ = ("atoms", "bonds", "pairs")

    def __init__(self, atoms: np.ndarray, bonds: np.ndarray, pairs: np.ndarray):
        self.atoms, self.bonds, self.pairs = atoms, bonds, pairs


class GraphFeaturizer(SmilesFeaturizer):
    """SMILES / InChI -> :class:`MoleculeGraph` rows; :meth:`collate` -> ``x``, ``edge_index``, ``edge_attr``,
    ``batch``.

    Args:
        schema: a graph schema (see the module docstring; default :func:`graph_schema`).
        parallel_threshold, num_workers: as :class:`~cloome_hf.featurization_cloome.MoleculeFeaturizer`.

    Raises ``ValueError`` naming the atom (or bond), the value and the molecule for a value outside the schema.
    """

    tower = "gnn"
    model_input_names = ("x", "edge_index", "edge_attr", "batch")

    def __init__(self, schema: Mapping | None = None, parallel_threshold: int = 2000, num_workers: int | None = None):
        from .config_bounds import check_featurizer_parallelism

        check_featurizer_parallelism(parallel_threshold, num_workers)
        self.schema = checked_graph_schema(graph_schema() if schema is None else schema)
        self.parallel_threshold = parallel_threshold
        self.num_workers = num_workers
        self._lookup = {part: [(name, {repr(v): i for i, v in enumerate(values)}, _REGISTRIES[part][name][1])
                               for name, values in self.schema[part].items()] for part in ("atom", "bond")}
        widths = {part: [len(v) for v in self.schema[part].values()] for part in ("atom", "bond")}
        self._offsets = {part: np.cumsum([0] + w[:-1]).astype(np.int64) for part, w in widths.items()}
        self.atom_width, self.bond_width = schema_widths(self.schema)

    def to_dict(self) -> dict[str, Any]:
        return {"tower": self.tower, "schema": self.schema, "parallel_threshold": self.parallel_threshold,
                "num_workers": self.num_workers}

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> GraphFeaturizer:
        config = dict(config)
        config.pop("tower", None)
        if "schema" not in config:
            raise ValueError("the graph featuriser settings have no 'schema': a gnn processor must record the graph "
                             "feature schema it was made with")
        return cls(**config)

    def __getstate__(self):
        return self.to_dict()

    def __setstate__(self, state):
        self.__init__(**{k: v for k, v in state.items() if k != "tower"})

    def _categories(self, part: str, items, text: str) -> np.ndarray:
        lookup = self._lookup[part]
        out = np.empty((len(items), len(lookup)), dtype=np.int16)
        for i, item in enumerate(items):
            for j, (name, index, value_of) in enumerate(lookup):
                value = value_of(item)
                column = index.get(repr(value))
                if column is None:
                    what = (f"atom {i} ({item.GetSymbol()})" if part == "atom" else
                            f"bond {i} (atoms {item.GetBeginAtomIdx()}-{item.GetEndAtomIdx()})")
                    raise ValueError(f"molecule {text!r}: {what} has {name} {value!r}, which the graph schema does "
                                     f"not list ({self.schema[part][name]}); widen graph_feature_values to encode "
                                     "it")
                out[i, j] = column
        return out

    def _encode(self, mol, text: str) -> MoleculeGraph:
        if mol.GetNumAtoms() == 0:
            raise ValueError(f"molecule {text!r} has no atoms: a graph tower cannot encode it")
        bonds = list(mol.GetBonds())
        pairs = np.array([(b.GetBeginAtomIdx(), b.GetEndAtomIdx()) for b in bonds], dtype=np.int32).reshape(-1, 2)
        return MoleculeGraph(self._categories("atom", list(mol.GetAtoms()), text),
                             self._categories("bond", bonds, text), pairs)

    def _one_hot(self, part: str, categories: np.ndarray, width: int) -> np.ndarray:
        out = np.zeros((len(categories), width), dtype=np.float32)
        if categories.size:
            np.put_along_axis(out, categories.astype(np.int64) + self._offsets[part], 1.0, axis=1)
        return out

    def collate(self, rows) -> dict[str, np.ndarray]:
        """Graphs -> one disjoint graph: ``x``, ``edge_index`` (both directions of each bond, atoms numbered
        across the batch), ``edge_attr`` and ``batch`` (the position of each atom's molecule in ``rows``)."""
        rows = list(rows)
        sizes = np.array([len(g.atoms) for g in rows], dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        atoms = np.concatenate([g.atoms for g in rows]) if rows else np.zeros((0, len(self._lookup["atom"])),
                                                                               np.int16)
        bonds = np.concatenate([g.bonds for g in rows] + [np.zeros((0, len(self._lookup["bond"])), np.int16)])
        pairs = np.concatenate([g.pairs.astype(np.int64) + s for g, s in zip(rows, starts)]
                               + [np.zeros((0, 2), np.int64)])
        edge_index = np.concatenate([pairs.T, pairs.T[::-1]], axis=1)
        edge_attr = self._one_hot("bond", bonds, self.bond_width)
        return {"x": self._one_hot("atom", atoms, self.atom_width),
                "edge_index": np.ascontiguousarray(edge_index),
                "edge_attr": np.concatenate([edge_attr, edge_attr]),
                "batch": np.repeat(np.arange(len(rows), dtype=np.int64), sizes)}


__all__ = ["ATOM_FEATURES", "BOND_FEATURES", "DEFAULT_ATOM_FEATURES", "DEFAULT_BOND_FEATURES", "GraphFeaturizer",
           "MoleculeGraph", "checked_graph_schema", "graph_schema", "schema_difference", "schema_widths"]
