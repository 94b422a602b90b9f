"""The one home of Cell Painting channel names, their aliases and the published intensity settings.

Bray 2017 and the published CLOOME weights use the order :data:`CHANNELS`; JUMP (cpg0016) names the same stains
DNA, ER, RNA, AGP and Mito (:data:`JUMP_CHANNELS`). Channel-order mix-ups are the most common complaint of users
of Cell Painting models, so every reader of a site maps names through :func:`canonical_channel_name` and every
consumer of a stored dataset re-orders through :func:`channel_permutation`.
"""

from __future__ import annotations

from collections.abc import Sequence

#: Canonical channel order of Bray 2017 and of the published CLOOME weights.
CHANNELS: tuple[str, ...] = ("Mito", "ERSyto", "ERSytoBleed", "Ph_golgi", "Hoechst")

#: JUMP (cpg0016) stain names -> canonical names, in JUMP's own order.
JUMP_CHANNELS: dict[str, str] = {"DNA": "Hoechst", "ER": "ERSyto", "RNA": "ERSytoBleed", "AGP": "Ph_golgi",
                                 "Mito": "Mito"}

#: Per-channel means (canonical order) of the 8-bit training images; the published models compute ``x / m - 1``.
CLOOME_CHANNEL_MEAN: tuple[float, ...] = (47.1314, 40.8138, 53.7692, 46.2656, 28.7243)

#: The 16 -> 8 bit rule that built the published training data: the n-th largest pixel, n = H * W * fraction,
#: maps to ``intensity_scale``.
DEFAULT_CLIP_FRACTION = 2.8e-5
DEFAULT_INTENSITY_SCALE = 256.0

#: Height and width of a Bray 2017 site.
SITE_SIZE: tuple[int, int] = (520, 696)


def canonical_channel_name(name: str) -> str:
    """A channel name or JUMP alias (case-insensitive) in its canonical spelling; other names pass through."""
    lowered = str(name).lower()
    for canonical in CHANNELS:
        if lowered == canonical.lower():
            return canonical
    for alias, canonical in JUMP_CHANNELS.items():
        if lowered == alias.lower():
            return canonical
    return str(name)


def channel_permutation(stored: Sequence[str], wanted: Sequence[str]) -> list[int]:
    """Index into ``stored`` of each channel of ``wanted`` (names or aliases), for ``image[permutation]``.

    Raises ``ValueError`` naming every wanted channel the stored order lacks.
    """
    have = [canonical_channel_name(c) for c in stored]
    want = [canonical_channel_name(c) for c in wanted]
    missing = [c for c in want if c not in have]
    if missing:
        raise ValueError(f"the stored channels {list(stored)} lack {missing}, which the model needs "
                         f"(its channel order is {list(wanted)})")
    return [have.index(c) for c in want]


def published_channel_means(channel_order: Sequence[str]) -> list[float]:
    """The published mean of each channel of ``channel_order``; ``ValueError`` naming channels without one."""
    order = [canonical_channel_name(c) for c in channel_order]
    unknown = [c for c in order if c not in CHANNELS]
    if unknown:
        raise ValueError(f"no published intensity mean for channel(s) {unknown}: give image_mean and image_std")
    return [CLOOME_CHANNEL_MEAN[CHANNELS.index(c)] for c in order]


__all__ = [
    "CHANNELS", "CLOOME_CHANNEL_MEAN", "DEFAULT_CLIP_FRACTION", "DEFAULT_INTENSITY_SCALE", "JUMP_CHANNELS",
    "SITE_SIZE", "canonical_channel_name", "channel_permutation", "published_channel_means",
]
