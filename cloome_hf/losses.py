"""Contrastive objectives for image-molecule pairs, and the registry that selects one by name (``config.loss``).

Registered losses, with the inputs each takes beyond the embeddings and ``logit_scale`` (optional ones in brackets):

* ``infonce`` - CLIP's symmetric InfoNCE (:func:`infonce_loss`).
* ``cloob`` (alias ``infoloob``) - InfoLOOB on Hopfield-retrieved embeddings (:func:`cloob_loss`): ``hopfield_beta``.
* ``siglip`` - SigLIP's pairwise sigmoid loss (:func:`siglip_loss`): ``logit_bias`` [``column_chunk_size``].
* ``s2l`` - MolPhenix's soft-label sigmoid loss (:func:`s2l_loss`): ``logit_bias`` [``phenomic_embeds``,
  ``column_chunk_size``].
* ``cwcl`` - CWCL with chemical (Tanimoto) weights (:func:`cwcl_loss`): ``fingerprints`` [``cwcl_threshold``].

:func:`contrastive_loss` is the one entry point for a model: ``contrastive_loss(config.loss, image_embeds,
molecule_embeds, logit_scale, **inputs)``. ``logit_scale`` is always the log of the logit multiplier: ln(1/tau) for
the softmax losses, SigLIP's t' (t = exp t') for the sigmoid ones. :func:`get_loss` also gives what a model needs
to hold a loss's parameters: their initial values and the range ``logit_scale`` is clamped to
(:class:`RegisteredLoss`).

Every function takes L2-normalised embeddings of shape ``(n, d)``; row i of the images matches row i of the
molecules. The functions are pure except for :func:`cloome_hf.distributed.gather_features`, the single place where
they talk to ``torch.distributed``: when a process group is initialised, every loss gathers the features of all
processes *with gradients* and computes the loss of its own rows against the global batch (open_clip's
"local loss" formulation). Averaging the per-process losses, and the gradients as DDP does, then gives
exactly the single-process loss and gradients on the concatenated batch.

Logits are computed in float32 even under autocast: the log-sum-exp of bf16 logits at tau^-1 = 100 loses
the positive pair's contribution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .distributed import gather_features

# Columns of the global batch per chunk of the sigmoid losses: bounds their memory at n x 4096 logits.
DEFAULT_COLUMN_CHUNK_SIZE = 4096
# S2L constants as re-implemented in CellCLIP's baselines (see s2l_loss).
S2L_DISTANCE_SCALE = 0.3
S2L_LABEL_THRESHOLD = 0.75
S2L_GAMMA = 1.7
S2L_DELTA = 0.75
# Tanimoto similarity from which two molecules count as analogues in CWCL (a common cut-off for close analogues).
CWCL_THRESHOLD = 0.7


def _similarities(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b.T`` in float32 with autocast switched off (autocast would cast the matmul back to bf16/fp16)."""
    with torch.autocast(device_type=a.device.type, enabled=False):
        return a.float() @ b.float().T


def _check_batch(anchors: torch.Tensor, candidates: torch.Tensor, min_pairs: int = 2) -> None:
    if anchors.ndim != 2 or candidates.ndim != 2 or anchors.shape[1] != candidates.shape[1]:
        raise ValueError(
            f"expected embeddings of shape (n, d) and (N, d), got {tuple(anchors.shape)} and {tuple(candidates.shape)}"
        )
    if candidates.shape[0] < min_pairs:
        raise ValueError(
            f"this contrastive loss needs at least {min_pairs} pairs in the (global) batch to have a negative, got "
            f"{candidates.shape[0]}"
        )


def infonce_loss(image_embeds: torch.Tensor, molecule_embeds: torch.Tensor, inv_tau: torch.Tensor | float) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP) loss: ``(CE(tau^-1 X Z^T, diag) + CE(tau^-1 Z X^T, diag)) / 2``.

    Args:
        image_embeds: ``(n, d)`` L2-normalised image embeddings ``X`` of this process.
        molecule_embeds: ``(n, d)`` L2-normalised molecule embeddings ``Z``; row i matches image i.
        inv_tau: inverse temperature 1/tau (14.3 for the published retrieval model).

    Returns:
        scalar loss, the mean over this process's rows against the global batch. A global batch of one pair is
        well defined, as in CLIP: each softmax runs over its single candidate, so the loss is 0.
    """
    all_images, offset = gather_features(image_embeds)
    all_molecules, _ = gather_features(molecule_embeds)
    _check_batch(image_embeds, all_molecules, min_pairs=1)
    labels = torch.arange(image_embeds.shape[0], device=image_embeds.device) + offset
    logits_per_image = inv_tau * _similarities(image_embeds, all_molecules)
    logits_per_molecule = inv_tau * _similarities(molecule_embeds, all_images)
    return 0.5 * (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_molecule, labels))


def hopfield_retrieval(queries: torch.Tensor, stored_patterns: torch.Tensor, beta: float) -> torch.Tensor:
    """One step of modern-Hopfield retrieval, re-normalised: ``normalize(softmax(beta q U^T) U)``.

    Args:
        queries: ``(n, d)`` state patterns.
        stored_patterns: ``(N, d)`` the memory ``U``.
        beta: inverse temperature of the retrieval (no learnable parameters).

    Returns:
        ``(n, d)`` unit-length retrieved patterns.
    """
    attention = torch.softmax(beta * _similarities(queries, stored_patterns), dim=-1)
    return F.normalize(_similarities(attention, stored_patterns.T), dim=-1)


def infoloob_loss(
    anchors: torch.Tensor,
    candidates: torch.Tensor,
    inv_tau: torch.Tensor | float,
    offset: int = 0,
    scale_by_tau: bool = True,
) -> torch.Tensor:
    """InfoLOOB ("leave one out bound"): the positive is excluded from the denominator.

    ``L = -(1/n) sum_i ln[ exp(tau^-1 a_i.c_{o+i}) / sum_{j != o+i} exp(tau^-1 a_i.c_j) ]``

    Args:
        anchors: ``(n, d)`` anchor embeddings (this process's rows).
        candidates: ``(N, d)`` embeddings of the global batch; the positive of anchor i is row ``offset + i``.
        inv_tau: inverse temperature 1/tau.
        offset: index of the first anchor's positive in ``candidates``.
        scale_by_tau: multiply the loss by tau, as the published CLOOB/CLOOME implementation does (it keeps
            the gradient magnitude independent of the temperature). The published weights were trained so.

    Returns:
        scalar loss.
    """
    _check_batch(anchors, candidates)
    rows = torch.arange(anchors.shape[0], device=anchors.device)
    logits = inv_tau * _similarities(anchors, candidates)
    positive = torch.zeros_like(logits, dtype=torch.bool)
    positive[rows, rows + offset] = True
    positive_logits = logits[rows, rows + offset]
    negative_lse = torch.logsumexp(logits.masked_fill(positive, float("-inf")), dim=1)
    loss = (negative_lse - positive_logits).mean()
    return loss / inv_tau if scale_by_tau else loss


def cloob_loss(
    image_embeds: torch.Tensor,
    molecule_embeds: torch.Tensor,
    inv_tau: torch.Tensor | float,
    beta: float,
    scale_by_tau: bool = True,
) -> torch.Tensor:
    """CLOOB loss: InfoLOOB on Hopfield-retrieved embeddings, one term anchored on each modality.

    With the stores ``U`` = images and ``V`` = molecules of the global batch, ``U_x`` / ``U_z`` are images
    retrieved by image / molecule queries and ``V_x`` / ``V_z`` molecules retrieved by image / molecule
    queries. The loss is ``InfoLOOB(U_x, U_z) + InfoLOOB(V_z, V_x)`` as in the published code (the paper's
    equation 6 prints the second denominator the other way round).

    Args:
        image_embeds, molecule_embeds: ``(n, d)`` L2-normalised embeddings of this process's pairs.
        inv_tau: inverse temperature (30 for the published bioactivity model).
        beta: Hopfield inverse temperature (22 for the published bioactivity model).
        scale_by_tau: see :func:`infoloob_loss`; the published default is on.
    """
    all_images, offset = gather_features(image_embeds)
    all_molecules, _ = gather_features(molecule_embeds)
    _check_batch(image_embeds, all_molecules)
    images_by_image = hopfield_retrieval(image_embeds, all_images, beta)
    images_by_molecule = hopfield_retrieval(all_molecules, all_images, beta)
    molecules_by_molecule = hopfield_retrieval(molecule_embeds, all_molecules, beta)
    molecules_by_image = hopfield_retrieval(all_images, all_molecules, beta)
    return infoloob_loss(images_by_image, images_by_molecule, inv_tau, offset, scale_by_tau) + infoloob_loss(
        molecules_by_molecule, molecules_by_image, inv_tau, offset, scale_by_tau
    )


def _check_pairs(image_embeds: torch.Tensor, molecule_embeds: torch.Tensor) -> None:
    if image_embeds.ndim != 2 or molecule_embeds.ndim != 2 or image_embeds.shape != molecule_embeds.shape:
        raise ValueError(
            "expected matched pairs of embeddings, both of shape (n, d), got "
            f"{tuple(image_embeds.shape)} images and {tuple(molecule_embeds.shape)} molecules"
        )


def _check_rows(name: str, tensor: torch.Tensor, rows: int) -> None:
    if tensor.ndim != 2 or tensor.shape[0] != rows:
        raise ValueError(f"{name} must have shape ({rows}, k), one row per pair, got {tuple(tensor.shape)}")


# --- sigmoid losses: SigLIP and S2L -------------------------------------------------------------------------------


def _sigmoid_chunk_sum(images, molecules, scale, bias, label_fn, row_keys, column_keys) -> torch.Tensor:
    """``-sum_ij [p_ij log sigma(l_ij) + q_ij log sigma(-l_ij)]`` over a chunk of columns; ``label_fn`` gives p, q."""
    logits = scale * _similarities(images, molecules) + bias
    attract, repel = label_fn(row_keys, column_keys)
    return -(attract * F.logsigmoid(logits) + repel * F.logsigmoid(-logits)).sum()


def _pairwise_sigmoid_loss(images, molecules, scale, bias, label_fn, row_keys, column_keys, column_chunk_size):
    """Mean over the ``n`` local rows of the pairwise sigmoid terms against all ``N`` columns, chunk by chunk.

    A chunk's logits, and its labels from ``label_fn(row_keys, column_keys[chunk])``, are recomputed in the
    backward pass (activation checkpointing), so neither pass holds more than ``n x column_chunk_size`` of them.
    """
    total_columns = molecules.shape[0]
    if column_chunk_size is None:
        column_chunk_size = total_columns
    if isinstance(column_chunk_size, bool) or not isinstance(column_chunk_size, int) or column_chunk_size < 1:
        raise ValueError(f"column_chunk_size must be a positive integer or None, got {column_chunk_size!r}")
    recompute = torch.is_grad_enabled() and column_chunk_size < total_columns
    total = images.new_zeros((), dtype=torch.float32)
    for start in range(0, total_columns, column_chunk_size):
        chunk = slice(start, start + column_chunk_size)
        args = (images, molecules[chunk], scale, bias, label_fn, row_keys, column_keys[chunk])
        term = checkpoint(_sigmoid_chunk_sum, *args, use_reentrant=False) if recompute else _sigmoid_chunk_sum(*args)
        total = total + term
    return total / images.shape[0]


def _siglip_labels(row_index: torch.Tensor, column_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    positive = (row_index[:, None] == column_index[None, :]).float()
    return positive, 1.0 - positive


def siglip_loss(
    image_embeds: torch.Tensor,
    molecule_embeds: torch.Tensor,
    scale: torch.Tensor | float,
    logit_bias: torch.Tensor | float,
    column_chunk_size: int | None = DEFAULT_COLUMN_CHUNK_SIZE,
) -> torch.Tensor:
    """SigLIP's sigmoid loss (Zhai et al., 2023): ``L = -(1/n) sum_i sum_j log sigma(z_ij l_ij)``.

    ``l_ij = t x_i.y_j + b``; ``z_ij = +1`` for the pair's own molecule (j = i) and ``-1`` for every other one.
    SigLIP initialises ``t' = ln 10`` (``t = exp t'``) and ``b = -10`` (the model's ``logit_scale`` and
    ``logit_bias``, as in transformers' ``SiglipModel``).

    Args:
        image_embeds: ``(n, d)`` L2-normalised image embeddings ``x`` of this process.
        molecule_embeds: ``(n, d)`` L2-normalised molecule embeddings ``y``; row i matches image i.
        scale: ``t = exp(t')``, a scalar (tensor or float).
        logit_bias: ``b``, a scalar (tensor or float).
        column_chunk_size: molecules of the global batch per chunk (``None``: all at once). Chunking bounds the
            memory of the forward and backward pass at ``n x column_chunk_size`` logits; the value is unchanged.

    Returns:
        scalar loss: this process's ``n`` rows against all ``N`` molecules of the global batch, divided by ``n``.
    """
    _check_pairs(image_embeds, molecule_embeds)
    all_molecules, offset = gather_features(molecule_embeds)
    _check_batch(image_embeds, all_molecules)
    rows = torch.arange(image_embeds.shape[0], device=image_embeds.device) + offset
    columns = torch.arange(all_molecules.shape[0], device=image_embeds.device)
    return _pairwise_sigmoid_loss(
        image_embeds, all_molecules, scale, logit_bias, _siglip_labels, rows, columns, column_chunk_size
    )


def s2l_soft_labels(
    phenomic_rows: torch.Tensor,
    phenomic_columns: torch.Tensor,
    distance_scale: float = S2L_DISTANCE_SCALE,
    threshold: float = S2L_LABEL_THRESHOLD,
) -> torch.Tensor:
    """MolPhenix's phenomic similarity: ``s_ij = 1 - (4/pi) arctan(||e_i - e_j||^2 / c)``, set to 0 below ``threshold``.

    Args:
        phenomic_rows: ``(n, k)`` phenomic embeddings ``e_i``; L2-normalised here, detached.
        phenomic_columns: ``(N, k)`` phenomic embeddings ``e_j``; L2-normalised here, detached.
        distance_scale: ``c`` (0.3). ``s_ij >= 0.75`` needs ``||e_i - e_j||^2 <= c tan(pi/16) ~ 0.06`` at c = 0.3.
        threshold: labels below it become 0 (0.75).

    Returns:
        ``(n, N)`` float32 labels in ``{0} U [threshold, 1]``; 1 for identical embeddings.
    """
    with torch.no_grad(), torch.autocast(device_type=phenomic_rows.device.type, enabled=False):
        rows = F.normalize(phenomic_rows.float(), dim=-1)
        columns = F.normalize(phenomic_columns.float(), dim=-1)
        squared_distance = (2.0 - 2.0 * rows @ columns.T).clamp_min(0.0)
        labels = 1.0 - (4.0 / math.pi) * torch.atan(squared_distance / distance_scale)
        return torch.where(labels >= threshold, labels, torch.zeros_like(labels))


def _s2l_labels(phenomic_rows, phenomic_columns, distance_scale, threshold, gamma, delta):
    similarity = s2l_soft_labels(phenomic_rows, phenomic_columns, distance_scale, threshold)
    return similarity, gamma - delta * similarity


def s2l_loss(
    image_embeds: torch.Tensor,
    molecule_embeds: torch.Tensor,
    scale: torch.Tensor | float,
    logit_bias: torch.Tensor | float,
    phenomic_embeds: torch.Tensor | None = None,
    column_chunk_size: int | None = DEFAULT_COLUMN_CHUNK_SIZE,
    distance_scale: float = S2L_DISTANCE_SCALE,
    threshold: float = S2L_LABEL_THRESHOLD,
    gamma: float = S2L_GAMMA,
    delta: float = S2L_DELTA,
) -> torch.Tensor:
    """MolPhenix's S2L (Fradkin et al., NeurIPS 2024): a sigmoid loss with soft labels from phenomic similarity.

    ``L = -(1/n) sum_i sum_j [s_ij log sigma(l_ij) + (gamma - delta s_ij) log sigma(-l_ij)]`` with
    ``l_ij = t x_i.y_j + b`` as in :func:`siglip_loss` and ``s_ij`` from :func:`s2l_soft_labels` on the detached
    phenomic embeddings (``s_ii = 1``). The form and the constants ``c = 0.3``, threshold 0.75, ``gamma = 1.7``,
    ``delta = 0.75`` are those of CellCLIP's re-implementation (``src/clip/methods.py``, ``s2l_loss``).

    Where that re-implementation differs from the paper, this follows the paper:

    * the soft labels come from *detached* phenomic embeddings (the paper: a frozen, pretrained phenomics model,
      Phenom1). CellCLIP computes them from the trained image features, so gradients flow through the labels;
    * the label is the similarity ``1 - (4/pi) arctan(d/c)`` (1 for identical embeddings), as CellCLIP's code
      computes it; its docstring writes the paper's function as ``(4/pi) arctan(d/c) - 1``, i.e. ``-s``;
    * CellCLIP is single-process; here the rows are this process's images against the gathered global batch.

    CellCLIP takes rows = molecules, columns = images; with symmetric labels the sum is the same.
    As a consequence of the formula, the positive pair (``s_ii = 1``) is also pushed apart with weight
    ``gamma - delta = 0.95``: its optimum is ``sigma(l_ii) = 1 / (1 + gamma - delta)``, while negatives (``s = 0``)
    are pushed apart with weight ``gamma``. Retrieval ranks by ``l``, so only the ordering matters.

    Args:
        image_embeds, molecule_embeds: ``(n, d)`` L2-normalised embeddings of this process's pairs.
        scale: ``t = exp(t')``; logit_bias: ``b`` (scalars).
        phenomic_embeds: ``(n, k)`` phenomic embeddings ``e`` of this process's images (from a frozen model);
            ``None``: the (detached) ``image_embeds`` of the model being trained.
        column_chunk_size: see :func:`siglip_loss`.
        distance_scale, threshold: see :func:`s2l_soft_labels`; gamma, delta: weights of the repelling term.

    Returns:
        scalar loss: this process's rows against the global batch, divided by ``n``.
    """
    _check_pairs(image_embeds, molecule_embeds)
    phenomic = (image_embeds if phenomic_embeds is None else phenomic_embeds).detach()
    _check_rows("phenomic_embeds", phenomic, image_embeds.shape[0])
    if not (math.isfinite(distance_scale) and distance_scale > 0):
        raise ValueError(f"distance_scale c must be a positive finite number, got {distance_scale!r}")
    all_molecules, _ = gather_features(molecule_embeds)
    all_phenomic, _ = gather_features(phenomic)
    _check_batch(image_embeds, all_molecules)
    label_fn = partial(_s2l_labels, distance_scale=distance_scale, threshold=threshold, gamma=gamma, delta=delta)
    return _pairwise_sigmoid_loss(
        image_embeds, all_molecules, scale, logit_bias, label_fn, phenomic, all_phenomic, column_chunk_size
    )


# --- CWCL with chemical weights -----------------------------------------------------------------------------------


def tanimoto_similarity(fingerprints_a: torch.Tensor, fingerprints_b: torch.Tensor) -> torch.Tensor:
    """Tanimoto similarity ``T_ij = sum_k min(a_ik, b_jk) / sum_k max(a_ik, b_jk)`` of non-negative fingerprints.

    For 0/1 bits this is ``|a & b| / |a | b|``; for count fingerprints it is the usual count generalisation (RDKit's
    ``TanimotoSimilarity`` of count vectors). Pairs of empty fingerprints get 0, as in RDKit. Computed without an
    ``(n, N, F)`` intermediate: with ``S = sum a + sum b`` and the L1 distance ``D``, ``T = (S - D) / (S + D)``.

    Args:
        fingerprints_a: ``(n, F)`` bits or counts (float32 holds counts exactly up to 2^24).
        fingerprints_b: ``(N, F)``.

    Returns:
        ``(n, N)`` float32 similarities in [0, 1].
    """
    if fingerprints_a.ndim != 2 or fingerprints_b.ndim != 2 or fingerprints_a.shape[1] != fingerprints_b.shape[1]:
        raise ValueError(
            f"expected fingerprints of shape (n, F) and (N, F), got {tuple(fingerprints_a.shape)} and "
            f"{tuple(fingerprints_b.shape)}"
        )
    with torch.no_grad(), torch.autocast(device_type=fingerprints_a.device.type, enabled=False):
        a, b = fingerprints_a.float(), fingerprints_b.float()
        for name, fp in (("fingerprints_a", a), ("fingerprints_b", b)):
            if not torch.isfinite(fp).all() or (fp < 0).any():
                raise ValueError(f"{name}: Tanimoto similarity needs finite, non-negative bits or counts")
        l1 = torch.cdist(a, b, p=1)
        totals = a.sum(dim=1)[:, None] + b.sum(dim=1)[None, :]
        union = totals + l1  # 2 sum max
        return torch.where(union > 0, (totals - l1) / union.clamp_min(1e-12), torch.zeros_like(union))


def chemical_weights(
    fingerprints: torch.Tensor, all_fingerprints: torch.Tensor, offset: int, threshold: float
) -> torch.Tensor:
    """CWCL weights ``w_ij = T_ij`` where ``T_ij >= threshold``, else 0, and ``w_ii = 1`` (the pair itself).

    Args:
        fingerprints: ``(n, F)`` this process's molecules; all_fingerprints: ``(N, F)`` the global batch's.
        offset: global index of the first local row (its own molecule is column ``offset + i``).
        threshold: Tanimoto cut-off in (0, 1].

    Returns:
        ``(n, N)`` float32 weights.
    """
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
        raise ValueError(f"cwcl_threshold must lie in (0, 1], got {threshold!r}")
    similarity = tanimoto_similarity(fingerprints, all_fingerprints)
    weights = torch.where(similarity >= threshold, similarity, torch.zeros_like(similarity))
    rows = torch.arange(fingerprints.shape[0], device=weights.device)
    weights[rows, rows + offset] = 1.0
    return weights


def cwcl_loss(
    image_embeds: torch.Tensor,
    molecule_embeds: torch.Tensor,
    inv_tau: torch.Tensor | float,
    fingerprints: torch.Tensor,
    cwcl_threshold: float = CWCL_THRESHOLD,
) -> torch.Tensor:
    """Continuously weighted contrastive loss (Srinivasa et al., 2023) with chemical weights.

    ``L = (L_x->y + L_y->x) / 2`` with
    ``L_x->y = -(1/n) sum_i (1 / sum_j w_ij) sum_j w_ij log softmax_j(tau^-1 x_i.y_j)`` and ``L_y->x`` the same
    with images and molecules swapped. ``w`` is :func:`chemical_weights` of the molecules' fingerprints, so close
    analogues (Tanimoto >= ``cwcl_threshold``) count as partial positives instead of hard negatives. With no such
    pair in the batch it is :func:`infonce_loss`.

    Args:
        image_embeds, molecule_embeds: ``(n, d)`` L2-normalised embeddings of this process's pairs.
        inv_tau: inverse temperature 1/tau.
        fingerprints: ``(n, F)`` the fingerprints of this process's molecules (bits or counts).
        cwcl_threshold: Tanimoto cut-off in (0, 1].

    Returns:
        scalar loss, the mean over this process's rows against the global batch.
    """
    _check_pairs(image_embeds, molecule_embeds)
    _check_rows("fingerprints", fingerprints, image_embeds.shape[0])
    all_images, offset = gather_features(image_embeds)
    all_molecules, _ = gather_features(molecule_embeds)
    all_fingerprints, _ = gather_features(fingerprints.detach().float())
    _check_batch(image_embeds, all_molecules)
    weights = chemical_weights(fingerprints, all_fingerprints, offset, cwcl_threshold)
    targets = weights / weights.sum(dim=1, keepdim=True)
    logits_per_image = inv_tau * _similarities(image_embeds, all_molecules)
    logits_per_molecule = inv_tau * _similarities(molecule_embeds, all_images)
    return 0.5 * (F.cross_entropy(logits_per_image, targets) + F.cross_entropy(logits_per_molecule, targets))


# --- registry -----------------------------------------------------------------------------------------------------


#: CLIP's bound on the softmax losses' ln(1/tau): at most 100 ("clipped to prevent scaling the logits by more than
#: 100", Radford et al. 2021), never below 1.
SOFTMAX_LOGIT_SCALE_RANGE = (0.0, math.log(100.0))


@dataclass(frozen=True)
class RegisteredLoss:
    """A loss known by name: ``function(image_embeds, molecule_embeds, exp(logit_scale), **inputs)``.

    Besides the function, what a model needs to hold the loss's parameters:

    * ``logit_scale_init``: the initial ``logit_scale`` (ln(1/tau) = ln 14.3 for the softmax losses, as the
      published CLOOME retrieval model; SigLIP's t' = ln 10 for the sigmoid ones);
    * ``logit_scale_range``: ``(low, high)`` that ``CloomeModel.clamp_logit_scale`` keeps it in after every step,
      or ``None`` for no clamp;
    * ``logit_bias_init``: the initial ``logit_bias`` (SigLIP's b = -10), or ``None`` when the loss takes none.
    """

    name: str
    function: Callable[..., torch.Tensor]
    required: tuple[str, ...]
    optional: tuple[str, ...]
    logit_scale_init: float = math.log(14.3)
    logit_scale_range: tuple[float, float] | None = SOFTMAX_LOGIT_SCALE_RANGE
    logit_bias_init: float | None = None


_LOSSES: dict[str, RegisteredLoss] = {}
_ALIASES: dict[str, str] = {}


def register_loss(
    name: str,
    function: Callable[..., torch.Tensor],
    required=(),
    optional=(),
    aliases=(),
    *,
    logit_scale_init: float = math.log(14.3),
    logit_scale_range: tuple[float, float] | None = SOFTMAX_LOGIT_SCALE_RANGE,
    logit_bias_init: float | None = None,
) -> RegisteredLoss:
    """Make ``function`` selectable as ``name`` and ``aliases``; ``required`` / ``optional``: its keyword inputs;
    the other arguments: see :class:`RegisteredLoss`."""
    for key in (name, *aliases):
        if key in _LOSSES or key in _ALIASES:
            raise ValueError(f"a loss named {key!r} is already registered")
    entry = RegisteredLoss(name, function, tuple(required), tuple(optional), float(logit_scale_init),
                           None if logit_scale_range is None else tuple(map(float, logit_scale_range)),
                           None if logit_bias_init is None else float(logit_bias_init))
    _LOSSES[name] = entry
    _ALIASES.update({alias: name for alias in aliases})
    return entry


def available_losses(include_aliases: bool = False) -> tuple[str, ...]:
    """Names :func:`contrastive_loss` accepts (what ``config.loss`` may be)."""
    return tuple(_LOSSES) + (tuple(_ALIASES) if include_aliases else ())


def get_loss(name: str) -> RegisteredLoss:
    """The registered loss called ``name`` (or an alias of it); an unknown name raises ``ValueError``."""
    entry = _LOSSES.get(_ALIASES.get(name, name)) if isinstance(name, str) else None
    if entry is None:
        raise ValueError(f"unknown loss {name!r}; choose one of {available_losses(include_aliases=True)}")
    return entry


def contrastive_loss(
    name: str,
    image_embeds: torch.Tensor,
    molecule_embeds: torch.Tensor,
    logit_scale: torch.Tensor | float,
    **inputs,
) -> torch.Tensor:
    """The loss ``name`` of a batch of matched pairs: the one call a model makes.

    Args:
        name: a registered name (``config.loss``), see :func:`available_losses`.
        image_embeds, molecule_embeds: ``(n, d)`` L2-normalised embeddings; row i of each is pair i.
        logit_scale: log of the logit multiplier: ln(1/tau) (infonce, cloob, cwcl) or t' (siglip, s2l).
        **inputs: what the model has; each loss takes those it needs and ignores the rest (``None`` = not given):
            ``logit_bias`` (siglip, s2l: b), ``hopfield_beta`` (cloob), ``fingerprints`` (cwcl: ``(n, F)``),
            ``phenomic_embeds`` (s2l: ``(n, k)``, detached; default the image embeddings), ``cwcl_threshold``,
            ``column_chunk_size`` (siglip, s2l).

    Returns:
        scalar loss of this process's rows against the global batch.
    """
    entry = get_loss(name)
    known = {key for loss in _LOSSES.values() for key in (*loss.required, *loss.optional)}
    unknown = sorted(set(inputs) - known)
    if unknown:
        raise ValueError(f"unknown loss inputs {unknown}; the registered losses take {sorted(known)}")
    given = {key: value for key, value in inputs.items() if value is not None}
    missing = [key for key in entry.required if key not in given]
    if missing:
        raise ValueError(f"loss {entry.name!r} needs {missing}")
    _check_pairs(image_embeds, molecule_embeds)
    scale = logit_scale.exp() if isinstance(logit_scale, torch.Tensor) else math.exp(logit_scale)
    kwargs = {key: given[key] for key in (*entry.required, *entry.optional) if key in given}
    return entry.function(image_embeds, molecule_embeds, scale, **kwargs)


def _cloob_from_inputs(image_embeds, molecule_embeds, inv_tau, hopfield_beta):
    return cloob_loss(image_embeds, molecule_embeds, inv_tau, hopfield_beta)


# SigLIP's initialisation (Zhai et al. 2023): t' = ln 10, b = -10. The sigmoid losses' scale is not clamped: the
# SigLIP reference code (big_vision) and transformers' SiglipModel do not clamp it, and a clamp at CLIP's ln 100
# would bind below where SigLIP training ends (open_clip's SigLIP SO400M/14: t' = 4.72, t = 112, open_clip #746).
# Their logits are computed in float32 from unit vectors, so a large t cannot overflow.
_SIGMOID_PARAMETERS = dict(logit_scale_init=math.log(10.0), logit_scale_range=None, logit_bias_init=-10.0)

register_loss("infonce", infonce_loss)
register_loss("cloob", _cloob_from_inputs, required=("hopfield_beta",), aliases=("infoloob",))
register_loss("siglip", siglip_loss, required=("logit_bias",), optional=("column_chunk_size",), **_SIGMOID_PARAMETERS)
register_loss("s2l", s2l_loss, required=("logit_bias",), optional=("phenomic_embeds", "column_chunk_size"),
              **_SIGMOID_PARAMETERS)
register_loss("cwcl", cwcl_loss, required=("fingerprints",), optional=("cwcl_threshold",))


__all__ = [
    "CWCL_THRESHOLD",
    "DEFAULT_COLUMN_CHUNK_SIZE",
    "RegisteredLoss",
    "SOFTMAX_LOGIT_SCALE_RANGE",
    "available_losses",
    "chemical_weights",
    "cloob_loss",
    "contrastive_loss",
    "cwcl_loss",
    "get_loss",
    "hopfield_retrieval",
    "infoloob_loss",
    "infonce_loss",
    "register_loss",
    "s2l_loss",
    "s2l_soft_labels",
    "siglip_loss",
    "tanimoto_similarity",
]
