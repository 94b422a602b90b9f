"""The registry of molecule-tower kinds: one record per ``molecule_config.encoder``, as the image towers'.

Every molecule tower is built behind one signature::

    tower(**inputs, concentrations=None, output_hidden_states=False) -> BaseModelOutputWithPooling

where ``inputs`` are exactly the kind's ``input_names`` (``fingerprints``; ``x``, ``edge_index``, ``edge_attr``,
``batch``; ``input_ids``, ``attention_mask``), with ``pooler_output`` ``(N, tower.num_features)`` and a method
``num_molecules(**inputs)`` that checks the inputs' shapes and returns N. ``CloomeModel`` only calls that signature
(through :func:`build_molecule_model`), so a new molecule encoder is a new record here, never a branch in the model.

Each kind also names the featuriser that makes its inputs from SMILES (``featurizer``) and says what makes a given
featuriser unfit for a config (``check_featurizer``): the processor and the data loader only ask the registry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from .vision_tower_registry import loading_pretrained_tower_weights

#: Every molecule input name a registered kind may take (the keyword arguments of ``get_molecule_features``).
MOLECULE_INPUT_NAMES = ("fingerprints", "x", "edge_index", "edge_attr", "batch", "input_ids", "attention_mask")


@dataclass(frozen=True)
class MoleculeTowerKind:
    """One kind of molecule tower.

    Args:
        name: the ``molecule_config.encoder`` value.
        description: one line for error messages and docs.
        input_names: the model inputs the tower takes (a subset of :data:`MOLECULE_INPUT_NAMES`).
        resolve: ``resolve(molecule_config)``: check the config and record what a rebuild needs (a graph schema, a
            transformers config); ``ValueError`` when refused.
        build: ``build(molecule_config, load_weights)`` -> the tower (``load_weights`` False: the architecture
            only, a saved CloomeModel holds the weights).
        featurizer: ``featurizer(molecule_config, **options)`` -> the :class:`~cloome_hf.featurization_cloome.
            SmilesFeaturizer` making the tower's inputs.
        check_featurizer: ``check_featurizer(featurizer, molecule_config)`` -> the reasons (strings) why that
            featuriser does not feed a model of this config; empty when it does.
        rows_per_molecule: every input tensor holds one row per molecule, so that accelerate can cut a global
            batch between processes by rows; ``False`` (graph batches: rows of atoms and bonds) makes
            ``cloome train`` cut each global batch by molecules in the sampler instead.
    """

    name: str
    description: str
    input_names: tuple[str, ...]
    resolve: Callable
    build: Callable
    featurizer: Callable
    check_featurizer: Callable
    rows_per_molecule: bool = True


_KINDS: dict[str, MoleculeTowerKind] = {}


def register_molecule_tower(kind: MoleculeTowerKind) -> MoleculeTowerKind:
    """Add ``kind``; a name can be registered once."""
    if kind.name in _KINDS:
        raise ValueError(f"a molecule tower kind named {kind.name!r} is already registered")
    unknown = sorted(set(kind.input_names) - set(MOLECULE_INPUT_NAMES))
    if unknown:
        raise ValueError(f"molecule tower {kind.name!r} takes inputs {unknown} that CloomeModel does not accept; "
                         f"known inputs: {MOLECULE_INPUT_NAMES}")
    _KINDS[kind.name] = kind
    return kind


def molecule_tower_names() -> tuple[str, ...]:
    return tuple(_KINDS)


def get_molecule_tower(name: str) -> MoleculeTowerKind:
    if name not in _KINDS:
        raise ValueError(f"unknown molecule encoder {name!r}; registered encoders: {list(_KINDS)}")
    return _KINDS[name]


def build_molecule_model(config) -> nn.Module:
    """``CloomeModel.molecule_model`` for ``config`` (a :class:`~cloome_hf.CloomeMoleculeConfig`), behind the one
    signature (see the module docstring)."""
    return get_molecule_tower(config.encoder).build(config, load_weights=loading_pretrained_tower_weights())


def select_molecule_inputs(config, given: dict) -> dict:
    """The non-``None`` entries of ``given`` (molecule input name -> tensor), refused unless they are exactly the
    inputs of ``config.encoder``'s tower: ``ValueError`` naming what is missing or not taken."""
    kind = get_molecule_tower(config.encoder)
    present = {k: v for k, v in given.items() if v is not None}
    missing = [n for n in kind.input_names if n not in present]
    extra = sorted(set(present) - set(kind.input_names))
    if missing or extra:
        parts = ([f"missing {missing}"] if missing else []) + ([f"not taken: {extra}"] if extra else [])
        raise ValueError(f"the {kind.name!r} molecule tower takes {list(kind.input_names)} "
                         f"({'; '.join(parts)}); make them with the model's CloomeProcessor(smiles=...)")
    return {n: present[n] for n in kind.input_names}


def featurizer_problems(featurizer, config) -> list[str]:
    """Why ``featurizer`` cannot feed a molecule tower of ``config`` (empty when it can)."""
    kind = get_molecule_tower(config.encoder)
    if getattr(featurizer, "tower", None) != kind.name:
        return [f"the processor's {type(featurizer).__name__} makes inputs of the {getattr(featurizer, 'tower', '?')!r} "
                f"molecule tower but the model's molecule encoder is {kind.name!r}"]
    return list(kind.check_featurizer(featurizer, config))


__all__ = ["MOLECULE_INPUT_NAMES", "MoleculeTowerKind", "build_molecule_model", "featurizer_problems",
           "get_molecule_tower", "molecule_tower_names", "register_molecule_tower", "select_molecule_inputs"]
