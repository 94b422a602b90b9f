"""The one encoder path: Cell Painting sites and molecules -> L2-normalised CLOOME embeddings.

Training validation, ``cloome evaluate``, ``cloome embed``, search queries and the pipelines all embed through
these functions:

* :func:`encode_sites` - a dataset in the common schema (read through
  :func:`cloome_hf.data.build_dataloader`, which maps the dataset's recorded channel order to the model's and
  refuses a dataset that lacks a channel) or a list of processor inputs (paths, channel mappings, arrays);
* :func:`encode_molecules` - SMILES (or a precomputed fingerprint matrix);
* :func:`encode_dataset` - both for a dataset: every site, and every unique molecule once.

The model runs in eval mode (batch-norm running statistics) under ``torch.no_grad``; its previous mode is
restored afterwards, so training can validate in between steps.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

#: The metadata every site embedding carries (the common schema's columns) ...
SITE_METADATA = ("sample_key", "plate", "well", "site", "inchikey", "smiles")
#: ... and what it carries when the dataset has it: what profiling needs for controls and batch correction.
OPTIONAL_METADATA = ("perturbation_type", "batch", "source", "Metadata_Batch", "Metadata_Source", "concentration")


def site_metadata_columns(column_names: Sequence[str], keep_columns: Sequence[str] = ()) -> list[str]:
    """The metadata columns of site embeddings: :data:`SITE_METADATA`, the :data:`OPTIONAL_METADATA` the dataset
    has (datasets prepared before JUMP support have none), then ``keep_columns``."""
    optional = [c for c in OPTIONAL_METADATA if c in column_names and c not in keep_columns]
    return list(SITE_METADATA) + optional + [c for c in keep_columns if c not in SITE_METADATA]


@dataclass
class Embeddings:
    """Site embeddings of a dataset with the embeddings of its unique molecules.

    ``image``: ``(N, D)`` L2-normalised site embeddings, in dataset order; ``molecule``: ``(M, D)`` L2-normalised
    embeddings of the unique molecules; ``molecule_index``: ``(N,)`` row of each site's molecule in ``molecule``;
    ``metadata``: ``N`` rows of :func:`site_metadata_columns` (``sample_key, plate, well, site, inchikey, smiles``
    and, where the dataset has them, ``perturbation_type``, batch, source and ``concentration``); ``molecules``:
    ``M`` rows ``inchikey, smiles`` (and ``concentration``: for a dose-conditioned model a molecule is a molecule at
    one dose).
    """

    image: np.ndarray
    molecule: np.ndarray
    molecule_index: np.ndarray
    metadata: pd.DataFrame
    molecules: pd.DataFrame


def _device(model) -> torch.device:
    return next(model.parameters()).device


@contextlib.contextmanager
def _inference(model):
    """Eval mode and no gradients for the duration; the model's previous mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def embed_pixel_values(model, pixel_values: torch.Tensor, autocast_dtype: torch.dtype | None = None) -> torch.Tensor:
    """``(N, C, H, W)`` pixel values -> ``(N, projection_dim)`` float32 L2-normalised embeddings on the CPU."""
    device = _device(model)
    with _inference(model), torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        features = model.get_image_features(pixel_values=pixel_values.to(device, non_blocking=True)).pooler_output
    return F.normalize(features.float(), dim=-1).cpu()


def backbone_features(model, pixel_values: torch.Tensor, autocast_dtype: torch.dtype | None = None) -> torch.Tensor:
    """``(N, C, H, W)`` pixel values -> the image tower's ``(N, F)`` float32 features on the CPU, before anything
    trained on top of it (:func:`cloome_hf.vision_towers.tower_features`, flattened: ``F = C * D`` under
    ``per_channel``); not normalised. What ``cloome embed --features backbone`` caches."""
    from ..vision_towers import tower_features

    device = _device(model)
    with _inference(model), torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        features = tower_features(model.vision_model, pixel_values.to(device, non_blocking=True))
    return features.float().flatten(1).cpu()


#: What ``encode_sites`` computes per site: the joint-space embedding, or the tower's features.
SITE_FEATURES = {"embedding": embed_pixel_values, "backbone": backbone_features}


def embed_fingerprints(model, fingerprints: torch.Tensor | None = None, autocast_dtype: torch.dtype | None = None,
                       concentrations: torch.Tensor | None = None, **molecule_inputs: torch.Tensor) -> torch.Tensor:
    """``(N, fingerprint_size)`` fingerprints, or the inputs of another molecule tower (``x``, ``edge_index``, ...;
    ``input_ids``, ``attention_mask``), and ``(N,)`` doses in uM for a dose-conditioned model -> ``(N,
    projection_dim)`` float32 L2-normalised embeddings on the CPU."""
    device = _device(model)
    doses = None if concentrations is None else concentrations.to(device)
    if fingerprints is not None:
        molecule_inputs["fingerprints"] = fingerprints
    inputs = {k: torch.as_tensor(v).to(device) for k, v in molecule_inputs.items()}
    with _inference(model), torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        features = model.get_molecule_features(**inputs, concentrations=doses).pooler_output
    return F.normalize(features.float(), dim=-1).cpu()


def is_dataset(sites) -> bool:
    import datasets

    return isinstance(sites, (datasets.Dataset, datasets.IterableDataset))


def _site_batches(sites: Any, batch_size: int):
    """Batch-sized pieces of a processor image input (a list of sites, or a 4-D array / tensor)."""
    if isinstance(sites, (np.ndarray, torch.Tensor)) and sites.ndim == 3:
        sites = sites[None]  # one (C, H, W) site
    elif isinstance(sites, (str, os.PathLike, dict)):
        sites = [sites]  # one site given as a path or a channel mapping
    if len(sites) == 0:
        raise ValueError("no sites given")
    for start in range(0, len(sites), batch_size):
        yield sites[start:start + batch_size]


def _pixel_values(processor, batch) -> torch.Tensor:
    """``pixel_values`` of a batch of sites. A list of paths is one site per path (as ``cloome search --images``
    means it: a multi-page TIFF each); the processor alone would read a list of paths as one site's channel files."""
    if isinstance(batch, list) and all(isinstance(s, (str, os.PathLike)) for s in batch):
        return torch.cat([processor(images=s, return_tensors="pt")["pixel_values"] for s in batch])
    return processor(images=batch, return_tensors="pt")["pixel_values"]


def encode_sites(model, processor, sites: Any, *, batch_size: int = 64, num_workers: int = 0,
                 autocast_dtype: torch.dtype | None = None, accelerator=None, show_progress: bool = False,
                 image_encoder=None, features: str = "embedding") -> np.ndarray:
    """Embed Cell Painting sites: ``(N, projection_dim)`` float32, L2-normalised, in input order.

    Args:
        model: a :class:`~cloome_hf.CloomeModel`.
        processor: its :class:`~cloome_hf.processing_cloome.CloomeProcessor` (crop, normalisation, channel order).
        sites: a ``datasets.Dataset`` in the common schema (its recorded channel order is mapped to the
            processor's; a missing channel is a ``ValueError`` naming it), or processor image inputs.
        batch_size: sites per forward pass.
        num_workers: ``DataLoader`` workers decoding a dataset's sites.
        autocast_dtype: e.g. ``torch.bfloat16`` to run the encoder under autocast.
        accelerator: with several processes, each embeds a contiguous share of a dataset's rows and every
            process gets all rows back, in order.
        image_encoder: pixel values -> L2-normalised embeddings in place of the model (a backend of
            :mod:`cloome_hf.inference.backends`: ONNX Runtime, int8); default the model itself.
        features: ``"embedding"`` (the joint-space embeddings) or ``"backbone"`` (the image tower's features,
            see :func:`backbone_features`; ``(N, F)`` float32, not normalised).
    """
    if features not in SITE_FEATURES:
        raise ValueError(f"features must be one of {sorted(SITE_FEATURES)}, got {features!r}")
    if image_encoder is not None and features != "embedding":
        raise ValueError(f"an image_encoder backend computes embeddings, not features={features!r}")
    embed = SITE_FEATURES[features]

    def encode(pixel_values):
        if image_encoder is not None:
            return image_encoder(pixel_values)
        return embed(model, pixel_values, autocast_dtype)

    if not is_dataset(sites):
        batches = _site_batches(sites, batch_size)
        out = [encode(_pixel_values(processor, b)) for b in batches]
        return torch.cat(out).numpy()
    from cloome_hf.data import build_dataloader

    rows = _process_share(len(sites), accelerator)
    loader = build_dataloader(sites.select(rows) if len(rows) != len(sites) else sites, batch_size=batch_size,
                              train=False, image_processor=processor.image_processor, num_workers=num_workers)
    out = [encode(batch["pixel_values"])
           for batch in tqdm(loader, desc="embedding sites", disable=not show_progress)]
    mine = torch.cat(out).numpy() if out else np.zeros((0, model.config.projection_dim), np.float32)
    if accelerator is None or accelerator.num_processes == 1:
        return mine
    from accelerate.utils import gather_object

    return np.concatenate(gather_object([mine]))


def _process_share(num_rows: int, accelerator) -> range:
    """This process's contiguous share of ``num_rows`` rows (all of them outside a multi-process run)."""
    if accelerator is None or accelerator.num_processes == 1:
        return range(num_rows)
    per, extra = divmod(num_rows, accelerator.num_processes)
    rank = accelerator.process_index
    start = rank * per + min(rank, extra)
    return range(start, start + per + (rank < extra))


def encode_molecules(model, processor, smiles: Sequence[str] | str | None = None, *,
                     fingerprints: np.ndarray | None = None, batch_size: int = 256,
                     autocast_dtype: torch.dtype | None = None, concentrations: Sequence[float] | None = None,
                     ) -> np.ndarray:
    """Embed molecules: ``(N, projection_dim)`` float32, L2-normalised.

    Give ``smiles`` (featurised by ``processor``, whatever the molecule tower; an invalid SMILES is a
    ``ValueError`` naming it and its position) or already featurised rows ``fingerprints`` (an ``(N,
    fingerprint_size)`` matrix, or the records of the processor's featuriser, e.g. from a
    :class:`~cloome_hf.data.molecules.FingerprintTable`); ``concentrations``: the ``N`` doses in uM, for a
    dose-conditioned model.
    """
    featurizer = processor.featurizer
    if fingerprints is None:
        if smiles is None:
            raise ValueError("give smiles or fingerprints")
        smiles = [smiles] if isinstance(smiles, str) else list(smiles)
        if not smiles:
            raise ValueError("no SMILES given")
        fingerprints = featurizer(smiles)  # validates every SMILES up front
    elif not (isinstance(fingerprints, np.ndarray) and fingerprints.dtype == object):
        fingerprints = np.asarray(fingerprints, dtype=np.float32)
    doses = None
    if concentrations is not None:
        from ..featurization_cloome import check_concentrations

        doses = torch.as_tensor(check_concentrations(concentrations, len(fingerprints)), dtype=torch.float32)
    out = [embed_fingerprints(model, autocast_dtype=autocast_dtype,
                              concentrations=None if doses is None else doses[s:s + batch_size],
                              **{k: torch.from_numpy(v) for k, v in
                                 featurizer.collate(fingerprints[s:s + batch_size]).items()})
           for s in range(0, len(fingerprints), batch_size)]
    return torch.cat(out).numpy()


def encode_dataset(model, processor, ds, *, fingerprints=None, batch_size: int = 64, num_workers: int = 0,
                   autocast_dtype: torch.dtype | None = None, accelerator=None,
                   show_progress: bool = False) -> Embeddings:
    """Embed every site of ``ds`` and every unique molecule of it once (see :class:`Embeddings`).

    ``fingerprints``: a :class:`~cloome_hf.data.molecules.FingerprintTable` holding the dataset's molecules, to
    skip featurising them again (e.g. during training); by default the processor featurises them.
    """
    metadata = ds.select_columns(site_metadata_columns(ds.column_names)).to_pandas()
    image = encode_sites(model, processor, ds, batch_size=batch_size, num_workers=num_workers,
                         autocast_dtype=autocast_dtype, accelerator=accelerator, show_progress=show_progress)
    dosed = model.config.molecule_config.concentration_encoding is not None
    if dosed and "concentration" not in metadata:
        raise ValueError("this model encodes the dose, but the dataset has no 'concentration' column")
    key = ["inchikey", "concentration"] if dosed else ["inchikey"]
    molecules = metadata.drop_duplicates(key)[key[:1] + ["smiles"] + key[1:]].reset_index(drop=True)
    matrix = None if fingerprints is None else fingerprints.lookup(molecules["inchikey"].tolist())
    molecule = encode_molecules(model, processor, molecules["smiles"].tolist(), fingerprints=matrix,
                                batch_size=batch_size, autocast_dtype=autocast_dtype,
                                concentrations=molecules["concentration"].to_numpy() if dosed else None)
    # pandas joins NaN doses (unknown) with each other, as drop_duplicates groups them
    index = metadata[key].merge(molecules[key].reset_index(), how="left", on=key)["index"].to_numpy()
    return Embeddings(image=image, molecule=molecule, molecule_index=index, metadata=metadata, molecules=molecules)


__all__ = ["OPTIONAL_METADATA", "SITE_METADATA", "Embeddings", "embed_fingerprints", "embed_pixel_values", "encode_dataset", "encode_molecules",
           "encode_sites", "site_metadata_columns"]
