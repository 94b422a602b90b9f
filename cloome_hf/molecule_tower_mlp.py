"""The ``mlp`` molecule tower, the published one: an MLP over a fingerprint vector (and, when the config asks for
it, an encoding of the dose, :class:`CloomeConcentrationEncoding`, which the other molecule towers share).

Its weight names (``molecule_model.layers.N.dense`` / ``.norm``) are those the published checkpoints convert to.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling

from .configuration_cloome import CloomeMoleculeConfig
from .molecule_tower_registry import MoleculeTowerKind, register_molecule_tower


class CloomeMoleculeBlock(nn.Module):
    """``relu(batch_norm(dense(x)))``: ``(N, in_features)`` -> ``(N, hidden_size)``."""

    def __init__(self, in_features: int, hidden_size: int):
        super().__init__()
        self.dense = nn.Linear(in_features, hidden_size)
        self.norm = nn.BatchNorm1d(hidden_size)
        self.activation = nn.ReLU()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.activation(self.norm(self.dense(hidden_states)))


class CloomeConcentrationEncoding(nn.Module):
    """The dose as molecule-tower inputs: ``(N,)`` concentrations in uM -> ``(N, num_concentration_features)``.

    * ``"one_hot"``: a one-hot of the bucket of ``log10(c)`` between the ``concentration_buckets`` edges (left-closed:
      ``edge_{k-1} <= c < edge_k``; ``len(edges) + 1`` buckets);
    * ``"linear"``: ``(log10(c / 1 uM), 1)``; the first dense layer's weights over it are the learned projection.

    An unknown dose (NaN) and a zero dose (vehicle controls) encode as all zeros: no dose information. Negative or
    infinite concentrations are refused (``ValueError`` naming the first).
    """

    def __init__(self, config: CloomeMoleculeConfig):
        super().__init__()
        self.encoding = config.concentration_encoding
        self.num_features = config.num_concentration_features
        edges = torch.tensor(config.concentration_buckets or [], dtype=torch.float32)
        self.register_buffer("bucket_edges", edges, persistent=False)  # from the config, not the weights

    def forward(self, concentrations: torch.Tensor) -> torch.Tensor:
        dose = concentrations.float()
        invalid = ~(torch.isnan(dose) | (torch.isfinite(dose) & (dose >= 0)))
        if invalid.any():  # one host sync, only for dose-conditioned models
            i = int(invalid.nonzero()[0])
            raise ValueError(f"concentrations[{i}] = {dose[i].item()} is not a dose in uM (finite and >= 0, or NaN)")
        known = (dose > 0).unsqueeze(1)  # NaN > 0 is False
        if self.encoding == "one_hot":
            buckets = torch.bucketize(dose.nan_to_num(0.0), self.bucket_edges, right=True)
            features = F.one_hot(buckets, self.num_features).float()
        else:
            features = torch.stack([torch.log10(dose.clamp_min(1e-30)), torch.ones_like(dose)], dim=1)
        return torch.where(known, features, torch.zeros_like(features))


class CloomeMoleculeEncoder(nn.Module):
    """MLP over a fingerprint (and the dose encoding): ``(N, fingerprint_size)`` -> ``(N, hidden_size)``."""

    def __init__(self, config: CloomeMoleculeConfig):
        super().__init__()
        self.concentration_encoding = (CloomeConcentrationEncoding(config) if config.concentration_encoding
                                       else None)
        sizes = ([config.fingerprint_size + config.num_concentration_features]
                 + [config.hidden_size] * config.num_hidden_layers)
        self.layers = nn.ModuleList(CloomeMoleculeBlock(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.fingerprint_size = config.fingerprint_size
        self.num_features = config.hidden_size

    def num_molecules(self, fingerprints: torch.Tensor) -> int:
        """N of ``(N, fingerprint_size)`` fingerprints; ``ValueError`` for another shape, or for one molecule in
        training mode (BatchNorm)."""
        expected = self.fingerprint_size
        if fingerprints.ndim != 2 or fingerprints.shape[1] != expected:
            raise ValueError(f"fingerprints must have shape (batch, {expected}), got {tuple(fingerprints.shape)}")
        if self.training and fingerprints.shape[0] == 1:
            raise ValueError("BatchNorm needs more than one molecule per batch in training mode, got a batch of 1")
        return fingerprints.shape[0]

    def forward(self, fingerprints: torch.Tensor, concentrations: torch.Tensor | None = None,
                output_hidden_states: bool = False) -> BaseModelOutputWithPooling:
        """``last_hidden_state`` = ``pooler_output`` = the last block's ``(N, hidden_size)`` activations; with
        ``output_hidden_states``, the input (fingerprint and dose features) and every block's activations
        (``num_hidden_layers + 1`` tensors). ``concentrations``: ``(N,)`` uM, for a dose-conditioned tower."""
        hidden = fingerprints.to(self.layers[0].dense.weight.dtype)
        if self.concentration_encoding is not None:
            dose = self.concentration_encoding(concentrations).to(hidden.dtype)
            hidden = torch.cat([hidden, dose], dim=1)
        hidden_states = [hidden]
        for layer in self.layers:
            hidden = layer(hidden)
            hidden_states.append(hidden)
        states = tuple(hidden_states) if output_hidden_states else None
        return BaseModelOutputWithPooling(last_hidden_state=hidden, pooler_output=hidden, hidden_states=states)


def with_dose(encoding: CloomeConcentrationEncoding | None, pooled: torch.Tensor,
              concentrations: torch.Tensor | None) -> torch.Tensor:
    """``pooled`` with the dose features appended (the non-MLP towers encode the dose after pooling)."""
    if encoding is None:
        return pooled
    return torch.cat([pooled, encoding(concentrations).to(pooled.dtype)], dim=1)


def _fingerprint_featurizer(config, fingerprint_kind: str = "morgan", **options):
    from .featurization_cloome import MoleculeFeaturizer

    return MoleculeFeaturizer(kind=fingerprint_kind, fingerprint_size=config.fingerprint_size, **options)


def _fingerprint_problems(featurizer, config) -> list[str]:
    if featurizer.fingerprint_size != config.fingerprint_size:
        return [f"the featurizer makes {featurizer.fingerprint_size}-dimensional '{featurizer.kind}' fingerprints but "
                f"the model's molecule encoder expects fingerprint_size={config.fingerprint_size}"]
    return []


register_molecule_tower(MoleculeTowerKind(
    name="mlp",
    description="the published fingerprint MLP (Linear -> BatchNorm -> ReLU blocks over a Morgan / RDKit "
                "fingerprint)",
    input_names=("fingerprints",),
    resolve=lambda config: None,
    build=lambda config, load_weights: CloomeMoleculeEncoder(config),
    featurizer=_fingerprint_featurizer,
    check_featurizer=_fingerprint_problems,
))

__all__ = ["CloomeConcentrationEncoding", "CloomeMoleculeBlock", "CloomeMoleculeEncoder", "with_dose"]
