"""The data of a training run: the train / validation sites, their molecules and the training loader.

Sites come from :func:`cloome_hf.data.load_cell_painting` (every source a command accepts) and reach the model
through :func:`cloome_hf.data.build_dataloader`, the one input path: global batches from ``(seed, epoch)``, one
augmentation seed per site, no molecule twice in a batch, fingerprints looked up per batch from one table of
the unique molecules.
"""

from __future__ import annotations

from dataclasses import dataclass

import datasets

from ..data import FingerprintTable, build_dataloader, load_cell_painting, split_by_molecule
from ..transforms import CloomeTrainTransform


@dataclass
class TrainingData:
    """``train`` / ``validation`` datasets and the fingerprint table of all their molecules."""

    train: datasets.Dataset
    validation: datasets.Dataset
    fingerprints: FingerprintTable


def load_training_data(data_args, featurizer, log) -> TrainingData:
    """The train / validation split of ``data_args.dataset`` (its own ``validation`` split, else held-out
    molecules), featurised once per unique molecule."""
    synthetic = dict(num_molecules=data_args.synthetic_molecules,
                     sites_per_molecule=data_args.synthetic_sites_per_molecule,
                     image_size=data_args.synthetic_image_size, seed=data_args.split_seed)
    if data_args.dataset == "synthetic":
        log(f"rendering {synthetic['num_molecules']} x {synthetic['sites_per_molecule']} synthetic sites of "
            f"{synthetic['image_size']} px")
    ds = load_cell_painting(data_args.dataset, synthetic=synthetic)
    if "train" not in ds:
        raise ValueError(f"dataset {data_args.dataset!r} has no 'train' split; it has {list(ds)}")
    if "validation" in ds:
        train, validation = ds["train"], ds["validation"]
    else:
        fraction = data_args.validation_fraction
        if not 0 < fraction < 1:
            raise ValueError(f"validation_fraction must be in (0, 1), got {fraction}")
        split = split_by_molecule(ds["train"], {"train": 1 - fraction, "validation": fraction},
                                  seed=data_args.split_seed)
        train, validation = split["train"], split["validation"]
    meta = [part.select_columns(["inchikey", "smiles"]) for part in (train, validation)]
    table = FingerprintTable.from_molecules(list(meta[0]["inchikey"]) + list(meta[1]["inchikey"]),
                                            list(meta[0]["smiles"]) + list(meta[1]["smiles"]), featurizer)
    return TrainingData(train, validation, table)


def training_transform(data_args, image_processor) -> CloomeTrainTransform:
    """The recipe's augmentation. With a resized crop, ``image_size`` is what the whole site is resampled to
    (the bioactivity recipe, as torchvision's RandomResizedCrop); otherwise it is a plain random crop window."""
    resized_crop = (tuple(data_args.random_resized_crop_scale) or None) if data_args.augment else None
    return CloomeTrainTransform(
        crop_size=None if resized_crop else data_args.image_size,
        output_size=data_args.image_size if resized_crop else None,
        random_resized_crop_scale=resized_crop, flips=data_args.augment, rot90=data_args.augment,
        image_mean=image_processor.image_mean, image_std=image_processor.image_std,
    ).train(data_args.augment)  # without augmentation: the deterministic centre window


def training_loader(data: TrainingData, data_args, image_processor, global_batch: int, seed: int):
    """The training ``DataLoader``: global batches of ``global_batch`` sites, cut per process by accelerate."""
    return build_dataloader(
        data.train, data.fingerprints, batch_size=global_batch, train=True,
        transform=training_transform(data_args, image_processor), channel_order=image_processor.channel_order,
        unique_molecules=data_args.unique_molecules_per_batch, seed=seed,
        num_workers=data_args.dataloader_num_workers,
    )


__all__ = ["TrainingData", "load_training_data", "training_loader", "training_transform"]
