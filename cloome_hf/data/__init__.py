"""Cell Painting data for CLOOME: loaders, splits, molecules, torch batches and a synthetic generator.

Everything returns / accepts ``datasets`` objects in one schema (:mod:`cloome_hf.data.schema`): one row per
site with ``sample_key, plate, well, site, smiles, inchikey, image`` (uint8 C x H x W raw bytes),
``image_shape`` and the source's extra metadata.

    >>> from cloome_hf.data import make_synthetic_dataset, split_by_molecule, build_dataloader
    >>> from cloome_hf.featurization_cloome import MoleculeFeaturizer
    >>> splits = split_by_molecule(make_synthetic_dataset(100, 4), (0.8, 0.1, 0.1), seed=0)
    >>> loader = build_dataloader(splits["train"], MoleculeFeaturizer(fingerprint_size=256), batch_size=32)
    >>> batch = next(iter(loader))   # {"pixel_values": (32, 5, 64, 64), "fingerprints": (32, 256), ...}
"""

from .jump import JumpSource
from .loading import load_cell_painting
from .molecules import FingerprintTable, inchikeys_from_smiles
from .perturbations import (
    DMSO_JCP2022,
    JUMP_POSITIVE_CONTROLS,
    TrainingSites,
    contrastive_training_sites,
    perturbation_types,
)
from .prepare import prepare_dataset
from .schema import PERTURBATION_TYPES, channels_of, decode_image, decode_row, features
from .source_kinds import open_source
from .sources import BrayNpzSource, SiteSource, SkippedSite, TiffSource
from .splits import (
    assign_molecules,
    murcko_scaffold,
    one_site_per_molecule,
    retrieval_subsets,
    split_by_molecule,
    split_by_scaffold,
    split_from_files,
)
from .synthetic import bundled_molecules, make_synthetic_dataset, molecule_latent, write_synthetic_layout


_TORCH_SIDE = {"build_dataloader": "loader", "CellPaintingCollator": "loader", "CellPaintingDataLoader": "loader",
               "CellPaintingTorchDataset": "loader", "trainer_inputs": "loader", "release_batch": "buffers",
               "UniqueMoleculeBatchSampler": "sampling", "unique_molecule_batches": "sampling"}


def __getattr__(name):
    # the torch side is imported on first use, so data preparation does not need torch
    if name in _TORCH_SIDE:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_TORCH_SIDE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BrayNpzSource", "CellPaintingCollator", "CellPaintingDataLoader", "CellPaintingTorchDataset",
    "DMSO_JCP2022", "FingerprintTable", "JUMP_POSITIVE_CONTROLS", "JumpSource",
    "PERTURBATION_TYPES", "SiteSource", "SkippedSite", "TiffSource", "TrainingSites", "UniqueMoleculeBatchSampler",
    "assign_molecules", "build_dataloader", "bundled_molecules", "channels_of", "contrastive_training_sites",
    "decode_image", "decode_row", "features", "inchikeys_from_smiles", "load_cell_painting",
    "make_synthetic_dataset", "molecule_latent", "murcko_scaffold", "one_site_per_molecule", "open_source",
    "perturbation_types", "prepare_dataset", "release_batch", "retrieval_subsets", "split_by_molecule", "split_by_scaffold",
    "split_from_files", "trainer_inputs", "unique_molecule_batches", "write_synthetic_layout",
]
