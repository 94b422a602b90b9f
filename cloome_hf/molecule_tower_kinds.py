"""The registered molecule-tower kinds (``molecule_config.encoder``): ``mlp``, ``gnn`` and ``transformers``.

Importing this module registers them (see :mod:`cloome_hf.molecule_tower_registry`). Like the image towers, they
are flat files of the package, because a saved model folder carries the model's code for ``trust_remote_code``
loading and transformers copies single files only. torch-geometric is imported only when a ``gnn`` tower is built.
"""

# Imported one by one (and spelled so that transformers copies them with a saved model).
from .molecule_tower_mlp import CloomeMoleculeEncoder  # noqa: F401
from .molecule_tower_gnn import GraphMoleculeTower  # noqa: F401
from .molecule_tower_transformers import TransformersMoleculeTower  # noqa: F401
from .molecule_tower_registry import (build_molecule_model, featurizer_problems, get_molecule_tower,
                                      select_molecule_inputs)

__all__ = ["build_molecule_model", "featurizer_problems", "get_molecule_tower", "select_molecule_inputs"]
