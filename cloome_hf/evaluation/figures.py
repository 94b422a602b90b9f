"""Report figures (matplotlib, PNG): embedding t-SNE (paper Figs. 2–3) and a retrieval gallery (Fig. 5)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure  # no pyplot: no global backend or figure state, works headless

__all__ = ["evaluation_figures", "plot_embedding_tsne", "plot_retrieval_gallery"]


def plot_embedding_tsne(
    embeds,
    labels,
    path,
    *,
    title: str = "t-SNE of image embeddings",
    max_points: int = 3000,
    max_legend: int = 12,
    seed: int = 0,
    figsize=(8, 6),
    dpi: int = 100,
) -> Path:
    """t-SNE of ``(N, D)`` embeddings, points coloured by ``labels`` (molecule or MoA).

    The ``max_legend`` most frequent labels get their own colour and legend entry, the rest are grey; at most
    ``max_points`` seeded random points are embedded (t-SNE is quadratic). Saves a ``figsize * dpi`` PNG.
    """
    from sklearn.manifold import TSNE

    x = np.asarray(embeds, dtype=np.float32)
    labels = pd.Series(np.asarray(labels, dtype=object)).fillna("unknown").astype(str).to_numpy()
    if x.ndim != 2 or len(labels) != len(x) or len(x) < 3:
        raise ValueError(f"need (N >= 3, D) embeds and N labels, got {x.shape} and {len(labels)}")
    rng = np.random.default_rng(seed)
    if len(x) > max_points:
        keep = np.sort(rng.choice(len(x), max_points, replace=False))
        x, labels = x[keep], labels[keep]
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    perplexity = float(min(30.0, (len(x) - 1) / 3))
    # Barnes-Hut pays a fixed per-iteration overhead that dominates for small N; exact is faster there.
    method = "exact" if len(x) <= 200 else "barnes_hut"
    xy = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed, metric="cosine",
              method=method).fit_transform(x)

    top = pd.Series(labels).value_counts().index[:max_legend]
    fig = Figure(figsize=figsize, dpi=dpi)
    ax = fig.subplots()
    other = ~np.isin(labels, top)
    ax.scatter(xy[other, 0], xy[other, 1], s=6, c="lightgrey", label="other" if other.any() else None)
    cmap = matplotlib.colormaps["tab20"]
    for i, lab in enumerate(top):
        sel = labels == lab
        ax.scatter(xy[sel, 0], xy[sel, 1], s=10, color=cmap(i % 20), label=str(lab)[:30])
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.subplots_adjust(left=0.03, right=0.72, top=0.93, bottom=0.03)
    return _save(fig, path, dpi)


def _molecule_image(smiles: str, size: int = 200):
    from rdkit.Chem import Draw

    from ..featurization_cloome import parse_molecule

    mol = parse_molecule(smiles)
    if mol is None:
        return None
    return np.asarray(Draw.MolToImage(mol, size=(size, size)))


def plot_retrieval_gallery(
    sites,
    top_smiles,
    top_scores,
    true_positions,
    path,
    *,
    query_titles=None,
    channel_names=None,
    colours=None,
    dpi: int = 100,
    panel_inches: float = 2.0,
) -> Path:
    """Query sites next to their top-k retrieved molecules, the true match framed in green.

    Args:
        sites: ``(Q, C, H, W)`` query images, drawn by :func:`~cloome_hf.inference.site_picture.site_picture`
            (``channel_names``: their channels, default the canonical order; ``colours``: overrides by channel).
        top_smiles: ``Q`` lists of ``k`` SMILES, best first.
        top_scores: ``(Q, k)`` cosine similarities.
        true_positions: ``(Q,)`` position of the true molecule within each row's top-k, or -1 if not retrieved.
        path: PNG path. Figure size is ``((k + 1) * panel_inches, Q * (panel_inches + 0.4))`` inches at ``dpi``.
    """
    from ..channels import CHANNELS
    from ..inference.site_picture import site_picture

    sites = np.asarray(sites)
    channel_names = list(CHANNELS if channel_names is None else channel_names)
    n_q = len(sites)
    k = len(top_smiles[0]) if n_q else 0
    if n_q == 0 or k == 0 or len(top_smiles) != n_q or len(true_positions) != n_q:
        raise ValueError(
            f"need Q >= 1 sites with one top-k list and one true position each, got {n_q} sites, "
            f"{len(top_smiles)} lists, {len(true_positions)} positions"
        )
    fig = Figure(figsize=((k + 1) * panel_inches, n_q * (panel_inches + 0.4)), dpi=dpi)
    axes = fig.subplots(n_q, k + 1, squeeze=False)
    for q in range(n_q):
        ax = axes[q, 0]
        ax.imshow(site_picture(sites[q], channel_names, colours))
        ax.set_title(query_titles[q] if query_titles is not None else f"query {q}", fontsize=7)
        for j in range(k):
            ax = axes[q, j + 1]
            img = _molecule_image(top_smiles[q][j])
            if img is None:
                ax.text(0.5, 0.5, "invalid\nSMILES", ha="center", va="center", fontsize=7)
            else:
                ax.imshow(img)
            is_true = int(true_positions[q]) == j
            ax.set_title(f"#{j + 1} cos {float(top_scores[q][j]):.2f}" + (" TRUE" if is_true else ""), fontsize=7,
                         color="green" if is_true else "black")
            for spine in ax.spines.values():
                spine.set_visible(is_true)
                spine.set_color("green")
                spine.set_linewidth(3)
        for ax in axes[q]:
            ax.set_xticks([])
            ax.set_yticks([])
        axes[q, 0].spines[:].set_visible(False)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.95, bottom=0.01, wspace=0.05, hspace=0.25)
    return _save(fig, path, dpi)


def _save(fig, path, dpi) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, format="png")  # no bbox_inches="tight": keep the documented pixel size
    return path


def evaluation_figures(embeddings, ds, output_dir, *, moa=None, seed: int = 0, gallery_queries: int = 4,
                       tsne_max_points: int = 3000) -> dict[str, str]:
    """The figures of ``cloome evaluate``: t-SNE by molecule (and by MoA where annotated) and a retrieval
    gallery of seeded query sites from the retrieval set with their top-5 molecules.

    Args:
        embeddings: :class:`cloome_hf.inference.Embeddings` of ``ds``.
        ds: the evaluated dataset (its sites are drawn in the canonical channel colours).
        moa: ``(N,)`` MoA labels or ``None``.

    Returns ``{figure name: file name}`` of the PNGs written into ``output_dir``.
    """
    from ..channels import CHANNELS, channel_permutation
    from ..data.schema import channels_of, decode_row
    from ..data.splits import one_site_per_molecule

    output_dir = Path(output_dir)
    names = np.asarray(ds["name"], dtype=object) if "name" in ds.column_names else \
        embeddings.metadata["inchikey"].to_numpy()
    plot_embedding_tsne(embeddings.image, names, output_dir / "tsne_molecule.png", seed=seed,
                        max_points=tsne_max_points, title="t-SNE of image embeddings, by molecule")
    figures = {"tsne_molecule": "tsne_molecule.png"}
    annotated = np.zeros(len(embeddings.image), bool) if moa is None else pd.notna(pd.Series(moa)).to_numpy()
    if annotated.sum() >= 3:  # only annotated sites: "unknown" would otherwise be the largest class
        plot_embedding_tsne(embeddings.image[annotated], np.asarray(moa)[annotated], output_dir / "tsne_moa.png",
                            seed=seed, max_points=tsne_max_points, title="t-SNE of image embeddings, by MoA")
        figures["tsne_moa"] = "tsne_moa.png"

    sub = one_site_per_molecule(embeddings.metadata["inchikey"], seed)
    queries = np.sort(np.random.default_rng(seed).choice(sub, size=min(gallery_queries, len(sub)), replace=False))
    candidates = embeddings.molecule_index[sub]  # the retrieval candidate set: one entry per molecule
    sims = embeddings.image[queries] @ embeddings.molecule[candidates].T  # embeddings are unit-norm: cosine
    # Ranks and the top 5 come from this one matrix: a true score recomputed elsewhere can differ in the last bit.
    true_cols = np.array([int(np.flatnonzero(candidates == embeddings.molecule_index[q])[0]) for q in queries])
    ranks = (sims >= sims[np.arange(len(queries)), true_cols][:, None]).sum(1)  # pessimistic, as in the table
    top = np.argsort(-sims, axis=1, kind="stable")[:, :5]
    smiles = embeddings.molecules["smiles"].to_numpy()
    top_smiles = [[smiles[candidates[j]] for j in row] for row in top]
    true_pos = [int(np.flatnonzero(row == col)[0]) if (row == col).any() else -1 for row, col in zip(top, true_cols)]
    order = channel_permutation(channels_of(ds), CHANNELS)
    sites = [decode_row(ds[int(q)])[order] for q in queries]
    titles = [f"{embeddings.metadata['sample_key'].iloc[q]} (true rank {r})" for q, r in zip(queries, ranks)]
    plot_retrieval_gallery(sites, top_smiles, np.take_along_axis(sims, top, axis=1), true_pos,
                           output_dir / "retrieval_gallery.png", query_titles=titles)
    figures["retrieval_gallery"] = "retrieval_gallery.png"
    return figures


def plot_map_vs_pvalue(results: dict, path, task: str, *, dpi: int = 100) -> Path:
    """One panel per method: mAP (y) against -log10 corrected p (x), coloured by retrieved, the significance
    threshold dashed, as the JUMP papers draw it. ``results``: method name -> task result of :mod:`.jump`."""
    rows_key = "per_compound" if task == "jump_activity" else "per_label"
    fig = Figure(figsize=(4.2 * len(results), 4), dpi=dpi)
    axes = fig.subplots(1, len(results), squeeze=False)[0]
    for ax, (name, res) in zip(axes, results.items()):
        rows = res[rows_key]
        x = np.array([-math.log10(max(r["corrected_p_value"], 1e-300)) for r in rows])
        y = np.array([r["map"] for r in rows])
        hit = np.array([r["retrieved"] for r in rows], dtype=bool)
        ax.scatter(x[~hit], y[~hit], s=12, c="#9e9e9e", label="not retrieved")
        ax.scatter(x[hit], y[hit], s=12, c="#d62728", label="retrieved")
        ax.axvline(-math.log10(res["threshold"]), color="k", ls="--", lw=0.8)
        frac = res["fraction_retrieved"]["value"]
        ax.set(title=f"{name}\n{100 * frac:.1f}% retrieved, mAP {res['mean_map']:.3f}",
               xlabel="-log10(corrected p-value)", ylabel="mAP", ylim=(-0.02, 1.02))
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
