"""Contrastive objectives of CLOOME: InfoNCE (CLIP) and InfoLOOB with Hopfield retrieval (CLOOB).

All functions take L2-normalised embeddings of shape ``(n, d)`` and ``inv_tau`` = 1/tau (a scalar tensor
or float). They are pure except for :func:`cloome_hf.distributed.gather_features`, the single place where they talk
to ``torch.distributed``: when a process group is initialised, every loss gathers the features of all
processes *with gradients* and computes the loss of its own rows against the global batch (open_clip's
"local loss" formulation). Averaging the per-process losses, and the gradients as DDP does, then gives
exactly the single-process loss and gradients on the concatenated batch.

Logits are computed in float32 even under autocast: the log-sum-exp of bf16 logits at tau^-1 = 100 loses
the positive pair's contribution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .distributed import gather_features


def _similarities(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b.T`` in float32 with autocast switched off (autocast would cast the matmul back to bf16/fp16)."""
    with torch.autocast(device_type=a.device.type, enabled=False):
        return a.float() @ b.float().T


def _check_batch(anchors: torch.Tensor, candidates: torch.Tensor) -> None:
    if anchors.ndim != 2 or candidates.ndim != 2 or anchors.shape[1] != candidates.shape[1]:
        raise ValueError(
            f"expected embeddings of shape (n, d) and (N, d), got {tuple(anchors.shape)} and {tuple(candidates.shape)}"
        )
    if candidates.shape[0] < 2:
        raise ValueError(
            f"a contrastive loss needs at least 2 pairs in the (global) batch to have a negative, got {candidates.shape[0]}"
        )


def infonce_loss(image_embeds: torch.Tensor, molecule_embeds: torch.Tensor, inv_tau: torch.Tensor | float) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP) loss: ``(CE(tau^-1 X Z^T, diag) + CE(tau^-1 Z X^T, diag)) / 2``.

    Args:
        image_embeds: ``(n, d)`` L2-normalised image embeddings ``X`` of this process.
        molecule_embeds: ``(n, d)`` L2-normalised molecule embeddings ``Z``; row i matches image i.
        inv_tau: inverse temperature 1/tau (14.3 for the published retrieval model).

    Returns:
        scalar loss, the mean over this process's rows against the global batch.
    """
    all_images, offset = gather_features(image_embeds)
    all_molecules, _ = gather_features(molecule_embeds)
    _check_batch(image_embeds, all_molecules)
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


__all__ = ["cloob_loss", "hopfield_retrieval", "infoloob_loss", "infonce_loss"]
