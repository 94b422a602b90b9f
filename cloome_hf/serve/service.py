"""What the search page asks, answered through the calls ``cloome search`` makes.

:class:`SearchService` holds one loaded index (built from the store once, or a saved ``--index`` loaded once), its
encoder, the store's thumbnails and, where reachable, the source sites. Molecule -> sites is
:meth:`CloomeIndex.encode_molecules` + :meth:`CloomeIndex.search_images`, site -> molecules
:meth:`CloomeIndex.encode_images` + :meth:`CloomeIndex.search_molecules`, site -> sites
:meth:`CloomeIndex.search_similar_images`: a page result equals the command's for the same query. Filters (plate,
perturbation type, dose) restrict the rows FAISS searches; they never re-rank.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..inference.site_picture import site_picture

#: Store columns the page can filter on, with their labels, where the store has them.
FILTER_COLUMNS = {"plate": "plate", "perturbation_type": "perturbation type", "concentration": "dose (uM)"}


def store_part(store: str, part: str) -> str:
    """``store/part`` for a ``cloome embed`` folder, else ``store`` itself (a folder of the part's Parquet files)."""
    inner = os.path.join(store, part)
    return inner if os.path.isdir(inner) else store


def model_card_summary(model_id: str | None) -> str:
    """The first paragraph of a local model folder's ``README.md`` after its metadata and title ("" if none)."""
    path = os.path.join(model_id or "", "README.md")
    if not model_id or not os.path.isfile(path):
        return ""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if text.startswith("---"):
        text = text.split("---", 2)[-1]
    paragraphs = [p.strip() for p in text.split("\n\n") if p.strip() and not p.lstrip().startswith(("#", "<!--"))]
    return paragraphs[0] if paragraphs else ""


@dataclass
class StoredSite:
    """A site of the embedding store, queried by its stored embedding (the ``row`` of the index)."""

    key: str
    row: int
    embedding: np.ndarray


class SearchService:
    """A loaded index, its encoder, the store's thumbnails and (where reachable) the source sites.

    Args:
        index: a :class:`~cloome_hf.inference.search.CloomeIndex` with its encoder loaded.
        sites: optional ``datasets.Dataset`` of the source sites (schema columns), for pictures and key lookup.
        thumbnails: optional :class:`~cloome_hf.inference.thumbnails.ThumbnailStore` of the embedding store.
        about: provenance shown on the About tab (model, weights digest, stores, dataset).
    """

    def __init__(self, index, sites=None, thumbnails=None, about: dict[str, Any] | None = None):
        self.index, self.sites, self.thumbnails, self.about = index, sites, thumbnails, dict(about or {})
        self._row_of_key, self._index_row_of_key = {}, None
        if sites is not None and "sample_key" in sites.column_names:
            self._row_of_key = {key: i for i, key in enumerate(sites["sample_key"])}

    @classmethod
    def from_stores(cls, embeddings: str, molecules: str | None = None, model: str | None = None,
                    index: str | None = None) -> "SearchService":
        """Open an embedding store (``embeddings``: a ``cloome embed`` folder or Hub dataset id) and optionally another molecule store,
        as ``cloome search --embeddings`` does, or a saved ``--index`` (loaded once, its images' store still giving
        thumbnails and provenance); the model is the store's, at its revision, unless ``model`` names one."""
        from ..inference.search import CloomeIndex, EmbeddingIndex
        from ..inference.store import read_info
        from ..inference.store_location import store_folder
        from ..inference.thumbnails import ThumbnailStore

        locations = {"embedding store": embeddings, "molecule store": molecules, "saved index": index}
        embeddings, molecules = store_folder(embeddings, "embedding store"), store_folder(molecules, "molecule store")
        index = store_folder(index, "saved index", "cloome search --save_index")
        if index is not None:
            loaded = CloomeIndex.load(index)
            if model:
                loaded.model_id, loaded.revision = model, None
        else:
            loaded = CloomeIndex.from_store(embeddings, model_id=model)
        if molecules is not None:
            loaded.molecules = EmbeddingIndex.from_dataset(store_part(molecules, "molecules"))
        loaded.load_encoder()
        info = read_info(embeddings)
        return cls(loaded, sites=open_sites(info.get("dataset"), info.get("split")),
                   thumbnails=ThumbnailStore(embeddings),
                   about=provenance(loaded, info, embeddings, molecules, index, locations))

    @property
    def channel_order(self) -> list[str]:
        """The channels the model reads, in order (what an uploaded site must hold)."""
        return list(self.index.processor.image_processor.channel_order)

    # ----- filters ----------------------------------------------------------------------------------------
    def filter_choices(self) -> dict[str, list]:
        """``{column: sorted values}`` of the :data:`FILTER_COLUMNS` the embedding store has."""
        meta = self.index.images.metadata
        return {c: sorted(meta[c].dropna().unique().tolist()) for c in FILTER_COLUMNS if c in meta.columns}

    def allowed_rows(self, filters: dict[str, Sequence] | None) -> np.ndarray | None:
        """The image rows matching every non-empty filter (``None``: no filter, search all rows)."""
        chosen = {c: list(v) for c, v in (filters or {}).items() if v}
        if not chosen:
            return None
        meta, keep = self.index.images.metadata, None
        for column, values in chosen.items():
            if column not in meta.columns:
                raise ValueError(f"the embedding store has no {column!r} column to filter on")
            mask = meta[column].isin(values).to_numpy()
            keep = mask if keep is None else keep & mask
        rows = np.flatnonzero(keep)
        if not len(rows):
            raise ValueError("no site matches the filters " + "; ".join(f"{c} in {v}" for c, v in chosen.items()))
        return rows

    # ----- queries: the cloome search code path -----------------------------------------------------------
    def molecule_to_sites(self, smiles: str, k: int = 5, filters: dict | None = None) -> pd.DataFrame:
        """The top-k sites for one SMILES; ``ValueError`` with the featuriser's message for an invalid one, and
        RDKit's reason with the character it points at."""
        smiles = [str(smiles).strip()]
        try:
            query = self.index.encode_molecules(smiles)
        except ValueError as err:
            from ..featurization_cloome import smiles_diagnosis

            detail = smiles_diagnosis(smiles[0]) if str(err).startswith("Invalid SMILES") else ""
            raise ValueError(f"{err}: {detail}" if detail else str(err)) from err
        return self.index.search_images(smiles=smiles, k=int(k), query_embeds=query, rows=self.allowed_rows(filters))

    def _site_embedding(self, query) -> np.ndarray:
        if isinstance(query, StoredSite):
            return query.embedding[None]
        return self.index.encode_images([query])

    def site_to_molecules(self, query, k: int = 5) -> pd.DataFrame:
        """The top-k library molecules for one site: a processor input (array, file path, ``{channel: path}``) or
        a :class:`StoredSite`."""
        if self.index.molecules is None:
            raise ValueError("this page has no molecule library: start it with --molecules STORE")
        return self.index.search_molecules(query_embeds=self._site_embedding(query), k=int(k))

    def similar_sites(self, query, k: int = 5, filters: dict | None = None) -> pd.DataFrame:
        """The top-k stored sites nearest to one site (see :meth:`site_to_molecules` for ``query``)."""
        return self.index.search_similar_images(query_embeds=self._site_embedding(query), k=int(k),
                                                rows=self.allowed_rows(filters))

    def stored_site(self, key: str) -> "StoredSite":
        """A site of the index by ``sample_key``, as its stored embedding: what a store without reachable images
        (a Space, a 1 M-site store with thumbnails) can still query with."""
        key = str(key).strip()
        if self._index_row_of_key is None:
            meta = self.index.images.metadata
            keys = meta["sample_key"] if "sample_key" in meta.columns else []
            self._index_row_of_key = {k: i for i, k in enumerate(keys)}
        if key not in self._index_row_of_key:
            raise ValueError(f"no site with sample_key {key!r} in the embedding store")
        row = self._index_row_of_key[key]
        index = self.index.images.index
        if hasattr(index, "make_direct_map") and not index.direct_map.type:
            index.make_direct_map()  # IVF: reconstructing a row needs the id -> list map (8 bytes a row), once
        return StoredSite(key, row, index.reconstruct(row))

    # ----- sites ------------------------------------------------------------------------------------------
    def site_by_key(self, key: str) -> np.ndarray:
        """The ``(C, H, W)`` pixels of a stored site, in the model's channel order."""
        from ..channels import channel_permutation
        from ..data.schema import channels_of, decode_row

        key = str(key).strip()
        if self.sites is None:
            raise ValueError("the store's source dataset is not reachable here, so sites cannot be picked by key")
        if key not in self._row_of_key:
            raise ValueError(f"no site with sample_key {key!r} in the source dataset")
        site = decode_row(self.sites[self._row_of_key[key]])
        return site[channel_permutation(channels_of(self.sites), self.channel_order)]

    def picture(self, key: str, row: int | None = None) -> np.ndarray | None:
        """The picture of a stored site: its thumbnail (by index ``row``), else drawn from the source dataset;
        ``None`` where neither is reachable."""
        if self.thumbnails is not None and row is not None:
            thumb = self.thumbnails.picture(int(row), key)
            if thumb is not None:
                return thumb
        try:
            site = self.site_by_key(key)
        except ValueError:
            return None
        return site_picture(site, self.channel_order)


def provenance(index, info: dict, images: str, molecules: str | None, saved_index: str | None,
               locations: dict[str, str | None] | None = None) -> dict[str, Any]:
    """The About tab's facts: what made the embeddings (model, revision, weights digest, commit) and of what.
    ``locations``: the stores as given (``{"embedding store": ..., "molecule store": ..., "saved index": ...}``); a
    Hub dataset id is shown as the id, with its snapshot folder."""
    given = locations or {}
    out = {"model": index.model_id, "revision": index.revision,
           "model weights digest": info.get("model_weights"),
           "model commit": (info.get("model_info") or {}).get("commit_hash"),
           "embedding store": _where(given.get("embedding store"), images), "source dataset": info.get("dataset"),
           "split": info.get("split"),
           "saved index": _where(given.get("saved index"), saved_index) if saved_index else None,
           "index type": index.images.config.get("index_type"), "sites indexed": len(index.images),
           "molecule store": _where(given.get("molecule store"), molecules) if molecules else (
               "(in the embedding store)" if index.molecules else "(none)"),
           "molecules indexed": len(index.molecules) if index.molecules is not None else 0}
    return {k: v for k, v in out.items() if v is not None}


def _where(location: str | None, folder: str) -> str:
    """A store as the page names it: its folder's absolute path, or the Hub dataset id and the snapshot it is at."""
    from ..inference.store_location import hub_repo_id

    if location is not None and hub_repo_id(location) is not None:
        return f"{location} (Hub dataset; snapshot {folder})"
    return os.path.abspath(folder)


def open_sites(dataset: str | None, split: str | None):
    """The source sites of a store when they are reachable here (a ``save_to_disk`` folder or a prepared folder);
    ``None`` otherwise: pictures then come from thumbnails only."""
    if not dataset or not os.path.isdir(dataset):
        return None
    import datasets

    try:
        ds = datasets.load_from_disk(dataset)
    except (FileNotFoundError, ValueError):
        try:
            from ..data import load_cell_painting

            return load_cell_painting(dataset, split=split or "train")
        except (OSError, ValueError):
            return None
    if isinstance(ds, datasets.DatasetDict):
        ds = ds[split] if split in ds else next(iter(ds.values()))
    return ds


__all__ = ["FILTER_COLUMNS", "SearchService", "StoredSite", "model_card_summary", "open_sites", "provenance",
           "store_part"]
