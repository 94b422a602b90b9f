"""The search page of ``cloome serve``: Molecule -> sites, Site -> molecules, Site -> similar sites, About.

:func:`build_app` only lays out the page over a :class:`~cloome_hf.serve.service.SearchService` (which answers
through the ``cloome search`` code path); a refused query (an invalid SMILES, an unknown site key, an upload with
the wrong channels or too large) is shown as its one-line message in the page, never as a traceback.
:func:`launch` starts it on 127.0.0.1 without a share link unless asked, serving no file of the disk: pictures
are sent from memory, so the only files the server hands out are the ones Gradio writes of its own outputs.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..channels import canonical_channel_name
from ..inference.site_picture import channel_colours, site_picture
from .service import FILTER_COLUMNS, SearchService, model_card_summary
from .uploads import MAX_UPLOAD_BYTES, read_uploaded_site

#: Metadata columns shown for each hit, where the store has them.
SITE_COLUMNS = ("score", "sample_key", "plate", "well", "perturbation_type", "concentration", "smiles", "inchikey")
MOLECULE_COLUMNS = ("score", "smiles", "inchikey", "name")


def hits_markdown(table: pd.DataFrame, columns) -> str:
    """The hits as a Markdown table (rank from 1), the ``columns`` the table has, in that order."""
    shown = [c for c in columns if c in table.columns]
    rows = ["| rank | " + " | ".join(shown) + " |", "|---" * (len(shown) + 1) + "|"]
    for _, hit in table.iterrows():
        cells = [f"{hit[c]:.4f}" if c == "score" else str(hit[c]) for c in shown]
        rows.append(f"| {int(hit['rank']) + 1} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _error(err: Exception) -> str:
    return f"**Error:** {err}"


def molecule_drawing(smiles: str, size: int = 300) -> np.ndarray | None:
    """RDKit's drawing of a SMILES as ``(size, size, 3)`` uint8, ``None`` where it does not parse."""
    from rdkit.Chem import Draw

    from ..featurization_cloome import parse_molecule

    mol = parse_molecule(smiles) if smiles else None
    return None if mol is None else np.asarray(Draw.MolToImage(mol, size=(size, size)).convert("RGB"))


#: Height of a hit's picture in the gallery: small thumbnails are enlarged so the structure beside them reads.
HIT_HEIGHT = 200


def _beside(picture: np.ndarray, smiles: str) -> np.ndarray:
    """A site picture (at :data:`HIT_HEIGHT` or more) with its compound's structure drawn to its right."""
    from PIL import Image

    height = max(picture.shape[0], HIT_HEIGHT)
    if picture.shape[0] < height:
        width = round(picture.shape[1] * height / picture.shape[0])
        picture = np.asarray(Image.fromarray(picture).resize((width, height), Image.Resampling.BILINEAR))
    drawing = molecule_drawing(smiles, size=height)
    return picture if drawing is None else np.concatenate([picture, drawing], axis=1)


def _site_caption(hit: pd.Series) -> str:
    parts = [f"{hit['score']:.3f}"] + [str(hit[c]) for c in ("plate", "well", "name", "smiles") if c in hit.index]
    return " · ".join(parts)


def site_gallery(service: SearchService, hits: pd.DataFrame) -> list:
    """The gallery of site hits: ``(picture with its compound's structure, caption)`` for each hit drawn."""
    gallery = []
    for _, hit in hits.iterrows():
        picture = service.picture(hit.get("sample_key"), hit.get("row"))
        if picture is not None:
            gallery.append((_beside(picture, str(hit.get("smiles", ""))), _site_caption(hit)))
    return gallery


def _molecule_gallery(hits: pd.DataFrame) -> list:
    out = []
    for _, hit in hits.iterrows():
        drawing = molecule_drawing(str(hit.get("smiles", "")))
        if drawing is not None:
            label = " · ".join([f"{hit['score']:.3f}"] + [str(hit[c]) for c in ("name", "inchikey") if c in hit.index])
            out.append((drawing, label))
    return out


def channel_legend(channel_order) -> str:
    """HTML: a swatch of each channel's colour with its name (and JUMP alias), in the model's order."""
    from ..channels import JUMP_CHANNELS

    alias = {v: k for k, v in JUMP_CHANNELS.items()}
    items = []
    for name, rgb in zip(channel_order, channel_colours(channel_order)):
        hex_colour = "#" + "".join(f"{round(255 * c):02x}" for c in rgb)
        jump = alias.get(canonical_channel_name(name), "")
        items.append(f'<span style="display:inline-block;width:1em;height:1em;background:{hex_colour}"></span> '
                     f"{name}{f' ({jump})' if jump and jump != name else ''} = {hex_colour}")
    return "<br>".join(items)


def _query_site(service: SearchService, key, files):
    """The site a query names -> ``(its picture, the query)``: uploaded files, else a stored key, by its pixels
    where the source dataset is reachable (encoded as an upload would be), else by its stored embedding."""
    if files:
        site = read_uploaded_site([getattr(f, "name", f) for f in files], service.channel_order)
        return site_picture(site.pixels, service.channel_order, grid=True), site.query
    if not str(key or "").strip():
        raise ValueError("upload a site (one file, or one file per channel) or give a stored site's sample_key")
    if service.sites is not None:
        pixels = service.site_by_key(key)
        return site_picture(pixels, service.channel_order, grid=True), pixels
    stored = service.stored_site(key)
    return service.picture(stored.key, stored.row), stored


def _filters(values) -> dict:
    return dict(zip(FILTER_COLUMNS, values))


def _filter_inputs(gr, choices: dict, prefix: str) -> list:
    """One multi-select per filter column (an empty, hidden one where the store lacks the column)."""
    return [gr.Dropdown(choices=choices.get(c, []), multiselect=True, label=f"filter: {label}",
                        visible=c in choices, elem_id=f"{prefix}-filter-{c}") for c, label in FILTER_COLUMNS.items()]


def _site_inputs(gr, prefix: str, example_key: str | None):
    key = gr.Textbox(label="a stored site's sample_key", elem_id=f"{prefix}-key",
                     placeholder=f"e.g. {example_key}" if example_key else None)
    files = gr.File(label="or upload a site: one .npz / .npy / multi-page TIFF, or one file per channel",
                    file_count="multiple", type="filepath", elem_id=f"{prefix}-upload")
    return key, files


def build_app(service: SearchService, default_k: int = 5):
    """The Gradio Blocks page over ``service`` (not launched)."""
    import gradio as gr

    choices = service.filter_choices()
    meta = service.index.images.metadata
    example_key = str(meta["sample_key"].iloc[0]) if "sample_key" in meta else None

    def molecule_query(smiles, k, *filters):
        try:
            hits = service.molecule_to_sites(smiles, k, _filters(filters))
        except ValueError as err:
            return None, [], _error(err)
        return molecule_drawing(smiles), site_gallery(service, hits), hits_markdown(hits, SITE_COLUMNS)

    def site_query(key, files, k):
        try:
            picture, query = _query_site(service, key, files)
            hits = service.site_to_molecules(query, k)
        except ValueError as err:
            return None, [], _error(err)
        return picture, _molecule_gallery(hits), hits_markdown(hits, MOLECULE_COLUMNS)

    def similar_query(key, files, k, *filters):
        try:
            picture, query = _query_site(service, key, files)
            hits = service.similar_sites(query, k, _filters(filters))
        except ValueError as err:
            return None, [], _error(err)
        return picture, site_gallery(service, hits), hits_markdown(hits, SITE_COLUMNS)

    about = "\n".join(f"- **{name}**: {value}" for name, value in service.about.items())
    summary = model_card_summary(service.index.model_id) or "(the model folder has no card)"
    with gr.Blocks(title="CLOOME search") as app:
        gr.Markdown("# CLOOME search\nQuery Cell Painting sites with a molecule, or molecules with a site.")
        with gr.Tab("Molecule → sites"):
            with gr.Row():
                with gr.Column(scale=2):
                    with gr.Row():
                        smiles = gr.Textbox(label="SMILES", elem_id="smiles", scale=3)
                        k_mol = gr.Number(value=default_k, precision=0, minimum=1, maximum=100, label="top k")
                    with gr.Row():
                        mol_filters = _filter_inputs(gr, choices, "molecule")
                    go_mol = gr.Button("Search", elem_id="search-molecule", variant="primary")
                drawing = gr.Image(label="query structure", type="numpy", interactive=False, height=220, scale=1)
            sites = gr.Gallery(label="top sites (site picture, compound structure)", columns=4, object_fit="contain",
                               height="auto", elem_id="site-gallery")
            site_hits = gr.Markdown(elem_id="site-hits")
        with gr.Tab("Site → molecules"):
            key, files = _site_inputs(gr, "site", example_key)
            k_site = gr.Number(value=default_k, precision=0, minimum=1, maximum=100, label="top k")
            go_site = gr.Button("Search", elem_id="search-site", variant="primary")
            picture = gr.Image(label="query site (composite, then each channel)", type="numpy", interactive=False)
            molecules = gr.Gallery(label="top molecules", columns=5, object_fit="contain", height="auto",
                                   elem_id="molecule-gallery")
            molecule_hits = gr.Markdown(elem_id="molecule-hits")
        with gr.Tab("Site → similar sites"):
            sim_key, sim_files = _site_inputs(gr, "similar", example_key)
            k_sim = gr.Number(value=default_k, precision=0, minimum=1, maximum=100, label="top k")
            with gr.Row():
                sim_filters = _filter_inputs(gr, choices, "similar")
            go_sim = gr.Button("Search", elem_id="search-similar", variant="primary")
            sim_picture = gr.Image(label="query site (composite, then each channel)", type="numpy",
                                   interactive=False)
            sim_sites = gr.Gallery(label="nearest sites", columns=4, object_fit="contain", height="auto",
                                   elem_id="similar-gallery")
            sim_hits = gr.Markdown(elem_id="similar-hits")
        with gr.Tab("About"):
            gr.Markdown(f"## Model\n{summary}\n\n## Provenance\n{about}", elem_id="about")
            gr.HTML(f"<h3>Channel colours</h3>{channel_legend(service.channel_order)}", elem_id="legend")
        for trigger in (go_mol.click, smiles.submit):
            trigger(molecule_query, [smiles, k_mol, *mol_filters], [drawing, sites, site_hits])
        go_site.click(site_query, [key, files, k_site], [picture, molecules, molecule_hits])
        go_sim.click(similar_query, [sim_key, sim_files, k_sim, *sim_filters], [sim_picture, sim_sites, sim_hits])
    return app


def launch(app, host: str = "127.0.0.1", port: int | None = None, share: bool = False, **kwargs):
    """Start ``app``: bound to ``host`` (this machine only by default), no share link unless ``share``, no file
    of the disk served (``allowed_paths`` empty), uploads capped at :data:`MAX_UPLOAD_BYTES`."""
    return app.launch(server_name=host, server_port=port, share=share, allowed_paths=[],
                      max_file_size=MAX_UPLOAD_BYTES, **kwargs)


__all__ = ["MOLECULE_COLUMNS", "SITE_COLUMNS", "SearchService", "build_app", "channel_legend", "hits_markdown",
           "launch", "molecule_drawing", "site_gallery"]
