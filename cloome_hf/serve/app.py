"""The search page of ``cloome serve``: Molecule -> sites, Site -> molecules, About.

:class:`SearchService` answers the queries through the very calls ``cloome search`` makes
(:meth:`CloomeIndex.encode_molecules` + :meth:`CloomeIndex.search_images`, :meth:`CloomeIndex.encode_images` +
:meth:`CloomeIndex.search_molecules`), so a page result equals the command's for the same query.
:func:`build_app` only lays out the page; a refused query (an invalid SMILES, an unknown site key, a site with the
wrong channels) is shown as its one-line message in the page, never as a traceback.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pandas as pd

from ..channels import CHANNELS
from ..inference.site_picture import CHANNEL_COLOURS, site_picture

#: Metadata columns shown for each hit, where the store has them.
SITE_COLUMNS = ("score", "sample_key", "plate", "well", "smiles", "inchikey")
MOLECULE_COLUMNS = ("score", "smiles", "inchikey", "name")


def _store_part(store: str, part: str) -> str:
    """``store/part`` for a ``cloome embed`` folder, else ``store`` itself (a folder of the part's Parquet files)."""
    inner = os.path.join(store, part)
    return inner if os.path.isdir(inner) else store


class SearchService:
    """A loaded index, its encoder and (where reachable) the source sites, answering the page's queries.

    Args:
        index: a :class:`~cloome_hf.inference.search.CloomeIndex` with its encoder loaded.
        sites: optional ``datasets.Dataset`` of the source sites (schema columns), for pictures and key lookup.
        about: provenance shown on the About tab (model, stores, embedding info).
    """

    def __init__(self, index, sites=None, about: dict[str, Any] | None = None):
        self.index, self.sites, self.about = index, sites, dict(about or {})
        self._row_of_key = {}
        if sites is not None and "sample_key" in sites.column_names:
            self._row_of_key = {key: i for i, key in enumerate(sites["sample_key"])}

    @classmethod
    def from_stores(cls, images: str, molecules: str | None = None, model: str | None = None) -> "SearchService":
        """Open an image store (a ``cloome embed`` folder) and optionally another molecule store, as
        ``cloome search --embeddings`` does; the model is the store's, at its revision, unless ``model`` names one."""
        from ..inference.search import CloomeIndex, EmbeddingIndex
        from ..inference.store import read_info

        index = CloomeIndex.from_store(images, model_id=model)
        if molecules is not None:
            index.molecules = EmbeddingIndex.from_dataset(_store_part(molecules, "molecules"))
        index.load_encoder()
        info = read_info(images)
        return cls(index, sites=_open_sites(info.get("dataset"), info.get("split")), about={
            "model": index.model_id, "revision": index.revision, "image store": os.path.abspath(images),
            "molecule store": os.path.abspath(molecules) if molecules else ("(in the image store)"
                                                                           if index.molecules else "(none)"),
            "source dataset": info.get("dataset"), "sites indexed": len(index.images),
            "molecules indexed": len(index.molecules) if index.molecules is not None else 0,
            "model commit": (info.get("model_info") or {}).get("commit_hash")})

    @property
    def num_channels(self) -> int:
        return int(getattr(self.index.model.config.vision_config, "num_channels", len(CHANNELS)))

    # ----- queries: the cloome search code path --------------------------------------------------------
    def molecule_to_sites(self, smiles: str, k: int = 5) -> pd.DataFrame:
        """The top-k sites for one SMILES; ``ValueError`` with the featuriser's message for an invalid one."""
        smiles = [str(smiles).strip()]
        query = self.index.encode_molecules(smiles)
        return self.index.search_images(smiles=smiles, k=int(k), query_embeds=query)

    def site_to_molecules(self, site, k: int = 5) -> pd.DataFrame:
        """The top-k library molecules for one site: a ``(C, H, W)`` array or a file path the processor reads."""
        if self.index.molecules is None:
            raise ValueError("this page has no molecule library: start it with --molecules STORE")
        query = self.index.encode_images([site])
        return self.index.search_molecules(query_embeds=query, k=int(k))

    # ----- sites ---------------------------------------------------------------------------------------
    def site_by_key(self, key: str) -> np.ndarray:
        from ..data.schema import decode_row

        key = str(key).strip()
        if self.sites is None:
            raise ValueError("the store's source dataset is not reachable here, so sites cannot be picked by key")
        if key not in self._row_of_key:
            raise ValueError(f"no site with sample_key {key!r} in the source dataset")
        return decode_row(self.sites[self._row_of_key[key]])

    def picture(self, key: str) -> np.ndarray | None:
        """The composite picture of a stored site, or ``None`` where its pixels are not reachable."""
        try:
            site = self.site_by_key(key)
        except ValueError:
            return None
        return site_picture(site, CHANNELS[:site.shape[0]] if site.shape[0] <= len(CHANNELS) else CHANNELS)


def _open_sites(dataset: str | None, split: str | None):
    """The source sites of a store, when it is a ``save_to_disk`` folder here (else ``None``: no pictures)."""
    if not dataset or not os.path.isdir(dataset):
        return None
    import datasets

    try:
        ds = datasets.load_from_disk(dataset)
    except (FileNotFoundError, ValueError):
        return None
    if isinstance(ds, datasets.DatasetDict):
        ds = ds[split] if split in ds else next(iter(ds.values()))
    return ds


def read_uploaded_site(path: str, channels: int) -> np.ndarray:
    """An uploaded site file (what ``cloome search --images`` reads: .npz, .npy, TIFF) as ``(C, H, W)``;
    ``ValueError`` naming the file when it does not hold ``channels`` channels."""
    from ..image_files import read_image_file

    site = read_image_file(path)
    if site.ndim == 3 and site.shape[0] != channels and site.shape[-1] == channels:
        site = np.moveaxis(site, -1, 0)  # Bray .npz sites are H x W x C
    if site.ndim != 3 or site.shape[0] != channels:
        raise ValueError(f"{os.path.basename(path)}: a site needs {channels} channels, got an array of shape "
                         f"{site.shape}")
    return site


def _hits_markdown(table: pd.DataFrame, columns) -> str:
    shown = [c for c in columns if c in table.columns]
    rows = ["| rank | " + " | ".join(shown) + " |", "|---" * (len(shown) + 1) + "|"]
    for _, hit in table.iterrows():
        cells = [f"{hit[c]:.4f}" if c == "score" else str(hit[c]) for c in shown]
        rows.append(f"| {int(hit['rank']) + 1} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _error(err: Exception) -> str:
    return f"**Error:** {err}"


def _molecule_drawing(smiles: str):
    from rdkit.Chem import Draw

    from ..featurization_cloome import parse_molecule

    mol = parse_molecule(smiles)
    return None if mol is None else np.asarray(Draw.MolToImage(mol, size=(300, 300)))


def _site_caption(hit: pd.Series) -> str:
    parts = [f"{hit['score']:.3f}"] + [str(hit[c]) for c in ("plate", "well", "smiles") if c in hit.index]
    return " · ".join(parts)


def build_app(service: SearchService, default_k: int = 5):
    """The Gradio Blocks page over ``service`` (not launched)."""
    import gradio as gr

    def molecule_query(smiles, k):
        try:
            hits = service.molecule_to_sites(smiles, k)
        except ValueError as err:
            return None, [], _error(err)
        gallery = [(pic, _site_caption(hit)) for _, hit in hits.iterrows()
                   if (pic := service.picture(hit.get("sample_key"))) is not None]
        return _molecule_drawing(smiles), gallery, _hits_markdown(hits, SITE_COLUMNS)

    def site_query(key, upload, k):
        try:
            site = read_uploaded_site(upload, service.num_channels) if upload else service.site_by_key(key)
            hits = service.site_to_molecules(upload or site, k)  # a file goes in as `cloome search --images` has it
        except ValueError as err:
            return None, [], _error(err)
        channels = CHANNELS[:site.shape[0]]
        drawings = [(d, f"{hit['score']:.3f} · {hit.get('smiles', '')}") for _, hit in hits.iterrows()
                    if (d := _molecule_drawing(str(hit.get("smiles", "")))) is not None]
        return site_picture(site, channels, grid=True), drawings, _hits_markdown(hits, MOLECULE_COLUMNS)

    legend = ", ".join(f"{name}: rgb{tuple(int(255 * c) for c in rgb)}" for name, rgb in CHANNEL_COLOURS.items())
    about = "\n".join(f"- **{name}**: {value}" for name, value in service.about.items())
    with gr.Blocks(title="CLOOME search") as app:
        gr.Markdown("# CLOOME search\nQuery Cell Painting sites with a molecule, or molecules with a site.")
        with gr.Tab("Molecule → sites"):
            smiles = gr.Textbox(label="SMILES", elem_id="smiles")
            k_mol = gr.Number(value=default_k, precision=0, minimum=1, label="top k")
            go_mol = gr.Button("Search", elem_id="search-molecule")
            drawing = gr.Image(label="query structure", type="numpy", interactive=False)
            sites = gr.Gallery(label="top sites", columns=5, elem_id="site-gallery")
            site_hits = gr.Markdown(elem_id="site-hits")
        with gr.Tab("Site → molecules"):
            key = gr.Textbox(label="site sample_key (from the store)", elem_id="site-key")
            upload = gr.File(label="or upload a site (.npz, .npy or multi-page TIFF)", type="filepath", elem_id="site-upload")
            k_site = gr.Number(value=default_k, precision=0, minimum=1, label="top k")
            go_site = gr.Button("Search", elem_id="search-site")
            picture = gr.Image(label="query site (composite, then each channel)", type="numpy", interactive=False)
            molecules = gr.Gallery(label="top molecules", columns=5)
            molecule_hits = gr.Markdown(elem_id="molecule-hits")
        with gr.Tab("About"):
            gr.Markdown(f"## Provenance\n{about}\n\n## Channel colours\n{legend}", elem_id="about")
        go_mol.click(molecule_query, [smiles, k_mol], [drawing, sites, site_hits])
        smiles.submit(molecule_query, [smiles, k_mol], [drawing, sites, site_hits])
        go_site.click(site_query, [key, upload, k_site], [picture, molecules, molecule_hits])
    return app
