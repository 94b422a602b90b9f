"""The data of a training run: the train / validation sites, their molecules and the training loader.

Sites come from :func:`cloome_hf.data.load_cell_painting` (every source a command accepts), less the negative
controls (unless ``--include_controls``) and the sites without a structure, and reach the model
through :func:`cloome_hf.data.build_dataloader`, the one input path: global batches from ``(seed, epoch)``, one
augmentation seed per site, no molecule twice in a batch, fingerprints looked up per batch from one table of
the unique molecules.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import datasets

from ..data import (
    FingerprintTable,
    build_dataloader,
    contrastive_training_sites,
    load_cell_painting,
    split_by_molecule,
)
from ..data.loader import column_values
from ..transforms import CloomeTrainTransform


@dataclass
class TrainingData:
    """``train`` / ``validation`` datasets, the fingerprint table of all their molecules, and what the site
    selection left out: ``site_selection[split]`` is the :meth:`~cloome_hf.data.TrainingSites.report` of each
    split of the source dataset (before the held-out molecules are split off, when it has no validation split)."""

    train: datasets.Dataset
    validation: datasets.Dataset
    fingerprints: FingerprintTable
    site_selection: dict[str, dict[str, int]] = field(default_factory=dict)

    def results(self) -> dict[str, int]:
        """The selection counts as flat ``sites/{split}/{count}`` entries (for ``all_results.json``)."""
        return {f"sites/{split}/{name}": value for split, report in self.site_selection.items()
                for name, value in report.items()}


def select_training_sites(ds: datasets.Dataset, split: str, include_controls: bool, where: str,
                          log) -> tuple[datasets.Dataset, dict[str, int]]:
    """The sites of one split that contrastive training uses (:func:`~cloome_hf.data.contrastive_training_sites`:
    never a site without a structure; no negative control unless ``include_controls``), and the counts."""
    selected = contrastive_training_sites(ds, include_controls=include_controls)
    report = selected.report()
    log(f"{split}: {report['num_sites']} of {len(ds)} sites kept; left out "
        f"{report['num_negative_controls_left_out']} negative controls"
        f"{'' if include_controls else ' (--include_controls keeps them)'} and "
        f"{report['num_without_structure_left_out']} sites without a structure")
    if not report["num_sites"]:
        raise ValueError(f"split {split!r} of {where} has no site to train on: all {len(ds)} sites are negative "
                         "controls or have no structure")
    return selected.dataset, report


def load_training_data(data_args, featurizer, log) -> TrainingData:
    """The train / validation split of ``data_args.dataset`` (its own ``validation`` split, else held-out
    molecules), featurised once per unique molecule.

    Both splits hold only the sites contrastive training uses (see :func:`select_training_sites`): validation
    retrieval of DMSO, or of a site without a molecule, would be meaningless too. Held-out molecules are drawn
    after that selection, so the validation fraction is one of trainable molecules.
    """
    from ..cli.arguments import synthetic_options

    synthetic = synthetic_options(data_args, seed=data_args.split_seed)
    if data_args.dataset == "synthetic":
        log(f"rendering {synthetic['num_molecules']} x {synthetic['sites_per_molecule']} synthetic sites of "
            f"{synthetic['image_size'][0]} x {synthetic['image_size'][1]} px")
    ds = load_cell_painting(data_args.dataset, synthetic=synthetic)
    if "train" not in ds:
        raise ValueError(f"dataset {data_args.dataset!r} has no 'train' split; it has {list(ds)}")
    parts, selection = {}, {}
    for split in [s for s in ("train", "validation") if s in ds]:
        parts[split], selection[split] = select_training_sites(ds[split], split, data_args.include_controls,
                                                               repr(data_args.dataset), log)
    if "validation" in parts:
        train, validation = parts["train"], parts["validation"]
    else:
        fraction = data_args.validation_fraction
        if not 0 < fraction < 1:
            raise ValueError(f"validation_fraction must be in (0, 1), got {fraction}")
        split = split_by_molecule(parts["train"], {"train": 1 - fraction, "validation": fraction},
                                  seed=data_args.split_seed)
        train, validation = split["train"], split["validation"]
    inchikeys, smiles = ([v for part in (train, validation) for v in column_values(part, name)]
                         for name in ("inchikey", "smiles"))
    table = FingerprintTable.from_molecules(inchikeys, smiles, featurizer)
    return TrainingData(train, validation, table, selection)


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


def cut_by_sampler(data_args, featurizer, num_processes: int) -> bool:
    """Whether a global batch must be cut between processes by the sampler (by molecules, or by whole bags) rather
    than by accelerate (``split_batches=True`` cuts every tensor into equal row blocks): with ``--bag_by`` (the
    sites of a batch of bags) or a molecule tower whose inputs are not one row per molecule (graph batches)."""
    from ..molecule_tower_kinds import get_molecule_tower

    if num_processes == 1:
        return False
    bagged = data_args.bag_by not in (None, "site")
    return bagged or not get_molecule_tower(getattr(featurizer, "tower", "mlp")).rows_per_molecule


def training_loader(data: TrainingData, data_args, image_processor, global_batch: int, seed: int,
                    num_slices: int = 1, slice_index: int = 0):
    """The training ``DataLoader``: global batches of ``global_batch`` sites, cut per process by accelerate, or,
    with ``num_slices`` > 1 (:func:`cut_by_sampler`), this process's slice ``slice_index`` of each, cut by the
    sampler (then the loader must not be sharded again).

    With ``--augment_on_device`` its batches hold uint8 ``images`` and their ``seeds`` instead of
    ``pixel_values``: the training step applies :func:`training_transform` to them on the accelerator. With
    ``--image_features`` they hold no images (the steps read the cached tower features); with ``--bag_by`` they are
    batches of ``global_batch`` bags (:mod:`cloome_hf.data.bags`)."""
    output = ("none" if data_args.image_features is not None
              else "uint8" if data_args.augment_on_device else "pixel_values")
    return build_dataloader(
        data.train, data.fingerprints, batch_size=global_batch, train=True,
        transform=training_transform(data_args, image_processor), channel_order=image_processor.channel_order,
        unique_molecules=data_args.unique_molecules_per_batch, seed=seed,
        num_workers=data_args.dataloader_num_workers,
        output=output, bag_by=data_args.bag_by, max_bag_sites=data_args.max_bag_sites,
        num_slices=num_slices, slice_index=slice_index,
    )


__all__ = ["TrainingData", "cut_by_sampler", "load_training_data", "select_training_sites", "training_loader",
           "training_transform"]
