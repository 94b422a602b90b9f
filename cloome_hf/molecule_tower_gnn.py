"""The ``gnn`` molecule tower: message passing over the RDKit molecular graph, with torch-geometric's layers.

``x`` (atoms, D_atom) one-hot atom features -> a linear embedding -> ``num_hidden_layers`` message-passing layers
(each ``h + relu(layer_norm(conv(h)))``) -> a readout per molecule -> ``(N, hidden_size)``. ``gnn_layer``:

* ``"gin"``: GIN (Xu et al. 2019, ``GINConv``), atoms only (bond features unused);
* ``"gine"``: GIN with edge features (Hu et al. 2020, ``GINEConv``), the bond one-hot added to each message;
* ``"nnconv"``: the edge-conditioned MPNN of Gilmer et al. 2017 (``NNConv``): each bond's features give the
  matrix of its message.

``gnn_readout``: ``"sum"``, ``"mean"`` or ``"attention"`` (a learned gate over the atoms of each molecule,
``AttentionalAggregation``). Layer norm (not batch norm) and per-molecule readouts keep a molecule's embedding
independent of the other molecules in its batch, in training as in evaluation. The dose, for a dose-conditioned
model, is appended after the readout.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling

from .featurization_graph import schema_widths
from .molecule_tower_mlp import CloomeConcentrationEncoding, with_dose
from .molecule_tower_registry import MoleculeTowerKind, register_molecule_tower

GNN_LAYERS = ("gin", "gine", "nnconv")
GNN_READOUTS = ("sum", "mean", "attention")


def _mlp(width: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width))


def _conv(kind: str, width: int, bond_width: int) -> nn.Module:
    from torch_geometric.nn import GINConv, GINEConv, NNConv

    if kind == "gin":
        return GINConv(_mlp(width), train_eps=True)
    if kind == "gine":
        return GINEConv(_mlp(width), train_eps=True, edge_dim=bond_width)
    return NNConv(width, width, nn.Linear(bond_width, width * width), aggr="mean")


class GraphMoleculeTower(nn.Module):
    """Graph network behind the molecule-tower signature (see :mod:`cloome_hf.molecule_tower_registry`)."""

    def __init__(self, config):
        super().__init__()
        self.atom_width, self.bond_width = schema_widths(config.graph_schema)
        width = config.hidden_size
        self.layer_kind = config.gnn_layer
        self.atom_embedding = nn.Linear(self.atom_width, width)
        self.convs = nn.ModuleList(_conv(config.gnn_layer, width, self.bond_width)
                                   for _ in range(config.num_hidden_layers))
        self.norms = nn.ModuleList(nn.LayerNorm(width) for _ in range(config.num_hidden_layers))
        self.readout_kind = config.gnn_readout
        self.gate = nn.Linear(width, 1) if config.gnn_readout == "attention" else None
        self.concentration_encoding = (CloomeConcentrationEncoding(config) if config.concentration_encoding
                                       else None)
        self.num_features = width + config.num_concentration_features

    def num_molecules(self, x: torch.Tensor, edge_index: torch.Tensor, edge_attr: torch.Tensor,
                      batch: torch.Tensor) -> int:
        """N, the molecules of ``batch``; ``ValueError`` naming the tensor of a wrong shape, dtype or index."""
        atoms = x.shape[0]
        checks = [("x", x.ndim == 2 and x.shape[1] == self.atom_width and x.is_floating_point(),
                   f"(atoms, {self.atom_width}) float", x),
                  ("edge_index", edge_index.ndim == 2 and edge_index.shape[0] == 2 and not
                   edge_index.is_floating_point(), "(2, edges) integer", edge_index),
                  ("edge_attr", edge_attr.ndim == 2 and edge_attr.shape == (edge_index.shape[-1], self.bond_width),
                   f"(edges, {self.bond_width})", edge_attr),
                  ("batch", batch.ndim == 1 and batch.shape[0] == atoms and not batch.is_floating_point(),
                   f"({atoms},) integer", batch)]
        for name, ok, expected, tensor in checks:
            if not ok:
                raise ValueError(f"{name} must have shape {expected}, got {tuple(tensor.shape)} {tensor.dtype}")
        if atoms == 0:
            raise ValueError("the molecule graph batch has no atoms")
        if edge_index.numel() and not (0 <= int(edge_index.min()) and int(edge_index.max()) < atoms):
            raise ValueError(f"edge_index refers to atoms outside x (which has {atoms} atoms)")
        if int(batch[0]) != 0 or bool((batch[1:] < batch[:-1]).any()):
            raise ValueError("batch must number the molecules 0, 1, ... in order, as CloomeProcessor makes it")
        return int(batch[-1]) + 1

    def _readout(self, hidden: torch.Tensor, batch: torch.Tensor, size: int) -> torch.Tensor:
        from torch_geometric.utils import scatter, softmax

        if self.readout_kind == "attention":
            weights = softmax(self.gate(hidden), batch, num_nodes=hidden.shape[0], dim=0)
            return scatter(weights * hidden, batch, dim=0, dim_size=size, reduce="sum")
        return scatter(hidden, batch, dim=0, dim_size=size, reduce=self.readout_kind)

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor, edge_attr: torch.Tensor, batch: torch.Tensor,
                concentrations: torch.Tensor | None = None,
                output_hidden_states: bool = False) -> BaseModelOutputWithPooling:
        """``pooler_output``: ``(N, num_features)`` per-molecule readout (and dose features); ``last_hidden_state``
        the ``(atoms, hidden_size)`` atom states; ``hidden_states`` the atom states after each layer."""
        size = self.num_molecules(x, edge_index, edge_attr, batch)
        hidden = self.atom_embedding(x.to(self.atom_embedding.weight.dtype))
        edge_index = edge_index.long()
        edge_attr = edge_attr.to(hidden.dtype)
        states = [hidden]
        for conv, norm in zip(self.convs, self.norms):
            message = conv(hidden, edge_index) if self.layer_kind == "gin" else conv(hidden, edge_index, edge_attr)
            hidden = hidden + torch.relu(norm(message))
            states.append(hidden)
        pooled = with_dose(self.concentration_encoding, self._readout(hidden, batch.long(), size), concentrations)
        return BaseModelOutputWithPooling(last_hidden_state=hidden, pooler_output=pooled,
                                          hidden_states=tuple(states) if output_hidden_states else None)


def _resolve(config) -> None:
    from .featurization_graph import checked_graph_schema, graph_schema

    if config.gnn_layer not in GNN_LAYERS:
        raise ValueError(f"gnn_layer must be one of {GNN_LAYERS}, got {config.gnn_layer!r}")
    if config.gnn_readout not in GNN_READOUTS:
        raise ValueError(f"gnn_readout must be one of {GNN_READOUTS}, got {config.gnn_readout!r}")
    if config.graph_schema is None:
        config.graph_schema = graph_schema(config.atom_features, config.bond_features, config.graph_feature_values)
    else:
        config.graph_schema = checked_graph_schema(config.graph_schema)
    config.atom_features = list(config.graph_schema["atom"])
    config.bond_features = list(config.graph_schema["bond"])
    if config.gnn_layer != "gin" and not config.bond_features:
        raise ValueError(f"gnn_layer {config.gnn_layer!r} passes bond features: bond_features must not be empty")


def _featurizer(config, **options):
    from .featurization_graph import GraphFeaturizer

    return GraphFeaturizer(config.graph_schema, **{k: v for k, v in options.items()
                                                   if k in ("parallel_threshold", "num_workers")})


def _problems(featurizer, config) -> list[str]:
    from .featurization_graph import schema_difference

    difference = schema_difference(config.graph_schema, featurizer.schema)
    return [] if difference is None else [f"the processor's graph schema differs from the model's: {difference}"]


register_molecule_tower(MoleculeTowerKind(
    name="gnn",
    description="a graph network over the RDKit molecular graph (torch-geometric GIN, GINE or NNConv; sum, mean or "
                "attention readout)",
    input_names=("x", "edge_index", "edge_attr", "batch"),
    resolve=_resolve,
    build=lambda config, load_weights: GraphMoleculeTower(config),
    featurizer=_featurizer,
    check_featurizer=_problems,
    rows_per_molecule=False,
))

__all__ = ["GNN_LAYERS", "GNN_READOUTS", "GraphMoleculeTower"]
