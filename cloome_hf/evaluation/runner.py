"""Embed a Cell Painting dataset once and run the evaluation tasks on the embeddings.

:func:`embed_dataset` turns a ``datasets.Dataset`` in the common schema (:mod:`cloome_hf.data.schema`) into
site image embeddings and per-molecule embeddings (each unique molecule featurised and embedded once), split
across ``accelerate`` processes. :func:`run_tasks` runs any of the five tasks on those embeddings (or on a
features table for a baseline) and returns the results dict that :mod:`.report` renders.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .linear_probe import aggregate_by_molecule, linear_probe, split_by_molecule
from .replicate_map import replicate_map
from .retrieval import retrieval_metrics
from .zeroshot import zeroshot_classification

__all__ = ["TASKS", "Embeddings", "embed_dataset", "moa_labels", "run_tasks", "retrieval_subset"]

TASKS = ("retrieval", "zeroshot_molecule", "zeroshot_moa", "linear_probe", "map")


@dataclass
class Embeddings:
    """Site-level embeddings with their metadata.

    ``image``: ``(N, D)`` L2-normalised image embeddings of the sites; ``molecule``: ``(M, D)`` L2-normalised
    embeddings of the unique molecules; ``molecule_index``: ``(N,)`` row of each site's molecule in ``molecule``;
    ``metadata``: ``(N,)`` rows with at least ``sample_key, plate, well, smiles, inchikey``;
    ``molecules``: ``(M,)`` rows ``inchikey, smiles``.
    """

    image: np.ndarray
    molecule: np.ndarray | None
    molecule_index: np.ndarray | None
    metadata: pd.DataFrame
    molecules: pd.DataFrame | None


@torch.no_grad()
def embed_dataset(model, processor, dataset, *, batch_size: int = 64, accelerator=None, show_progress=True):
    """Embed every site of ``dataset`` and every unique molecule once.

    Sites are shared out across ``accelerator`` processes and gathered back on every process, in dataset order.
    Returns :class:`Embeddings`.
    """
    from accelerate import Accelerator
    from accelerate.utils import gather_object

    from cloome_hf.channels import channel_permutation
    from cloome_hf.data.schema import channels_of, decode_row
    from cloome_hf.embedding import image_embeddings_from_pixels, molecule_embeddings_from_fingerprints

    accelerator = accelerator or Accelerator()
    model = model.to(accelerator.device).eval()
    perm = channel_permutation(channels_of(dataset), processor.image_processor.channel_order)
    metadata = dataset.select_columns(["sample_key", "plate", "well", "smiles", "inchikey"]).to_pandas()
    n = len(metadata)

    def image_batch(rows):
        sites = [np.ascontiguousarray(decode_row(r)[perm]) for r in rows]
        return image_embeddings_from_pixels(model, processor(images=sites, return_tensors="pt")["pixel_values"])

    batches = [list(range(i, min(n, i + batch_size))) for i in range(0, n, batch_size)]
    with accelerator.split_between_processes(batches) as mine:
        out = []
        for idx in tqdm(mine, desc="embedding sites", disable=not (show_progress and accelerator.is_main_process)):
            rows = dataset.select(idx)
            out.append((idx[0], image_batch(rows).numpy()))
    gathered = gather_object(out) if accelerator.num_processes > 1 else out
    image = np.concatenate([emb for _, emb in sorted(gathered, key=lambda t: t[0])])

    molecules = metadata.drop_duplicates("inchikey")[["inchikey", "smiles"]].reset_index(drop=True)
    fps = processor(smiles=molecules["smiles"].tolist(), return_tensors="pt")["fingerprints"]
    mol = []
    for i in tqdm(range(0, len(fps), batch_size), desc="embedding molecules", disable=not show_progress):
        mol.append(molecule_embeddings_from_fingerprints(model, fps[i : i + batch_size]).numpy())
    molecule = np.concatenate(mol)
    index = pd.Index(molecules["inchikey"]).get_indexer(metadata["inchikey"])
    return Embeddings(image=image, molecule=molecule, molecule_index=index, metadata=metadata, molecules=molecules)


def retrieval_subset(metadata: pd.DataFrame, seed: int = 0) -> np.ndarray:
    """Seeded choice of one site per molecule (indices, sorted): each molecule appears once per candidate set."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(metadata))
    first = pd.Series(order, index=metadata["inchikey"].to_numpy()[order])
    return np.sort(first.groupby(level=0, sort=False).first().to_numpy())


def moa_labels(inchikeys, annotations: pd.DataFrame, key_column: str, moa_column: str) -> np.ndarray:
    """MoA of each InChIKey from an annotation table, matched on the full key, else on its first 14 characters.

    Keys with several different MoAs get them joined with ``|`` (a class of its own); unknown keys get None.
    """
    for col in (key_column, moa_column):
        if col not in annotations.columns:
            raise ValueError(f"MoA annotation table has no column {col!r}; columns: {list(annotations.columns)}")
    ann = annotations[[key_column, moa_column]].dropna()
    ann = ann.assign(**{key_column: ann[key_column].astype(str), moa_column: ann[moa_column].astype(str)})
    full = ann.groupby(key_column)[moa_column].agg(lambda s: "|".join(sorted(set(s))))
    short = ann.assign(k=ann[key_column].str[:14]).groupby("k")[moa_column].agg(lambda s: "|".join(sorted(set(s))))
    keys = pd.Series(list(inchikeys), dtype=object).astype(str)
    out = keys.map(full)
    out = out.where(out.notna(), keys.str[:14].map(short))
    return out.astype(object).where(out.notna(), None).to_numpy()


def run_tasks(
    tasks,
    image,
    metadata: pd.DataFrame,
    *,
    molecule=None,
    molecule_index=None,
    moa=None,
    activity=None,
    seed: int = 0,
    linear_probe_Cs=None,
    n_jobs: int = 1,
    map_null_size: int = 10000,
    show_progress: bool = True,
) -> dict:
    """Run ``tasks`` (names from :data:`TASKS`) on site embeddings.

    Args:
        image: ``(N, D)`` site embeddings (or baseline features).
        metadata: ``N`` rows with ``inchikey`` (molecule key) and ``plate``.
        molecule / molecule_index: unique-molecule embeddings and each site's row in them (retrieval only).
        moa: ``(N,)`` MoA labels (None = unannotated), for ``zeroshot_moa``.
        activity: :class:`~cloome_hf.evaluation.linear_probe.ActivityLabels` with ``inchikeys``, for
            ``linear_probe``; molecules are matched on the full key, else on its first 14 characters.
    """
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown task {unknown[0]!r}; choose from {', '.join(TASKS)}")
    keys = metadata["inchikey"].astype(str).to_numpy()
    plates = metadata["plate"].astype(str).to_numpy()
    results: dict = {}
    for task in tasks:
        if task == "retrieval":
            if molecule is None:
                raise ValueError("retrieval needs molecule embeddings")
            sub = retrieval_subset(metadata, seed)
            results[task] = retrieval_metrics(image[sub], molecule[molecule_index[sub]], seed=seed,
                                              show_progress=show_progress)
            results[task]["sites"] = "one seeded random site per molecule"
        elif task == "zeroshot_molecule":
            results[task] = zeroshot_classification(image, keys, keys, plates, seed=seed)
        elif task == "zeroshot_moa":
            if moa is None:
                raise ValueError("zeroshot_moa needs MoA labels (--moa_annotations or --moa_column)")
            results[task] = zeroshot_classification(image, moa, keys, plates, seed=seed)
        elif task == "linear_probe":
            if activity is None or activity.inchikeys is None:
                raise ValueError("linear_probe needs an activity label matrix with its row InChIKey index")
            results[task] = _linear_probe(image, keys, activity, seed, linear_probe_Cs, n_jobs, show_progress)
        elif task == "map":
            results[task] = replicate_map(image, keys, null_size=map_null_size, seed=seed,
                                          show_progress=show_progress)
    return results


def _linear_probe(image, keys, activity, seed, Cs, n_jobs, show_progress) -> dict:
    mol_keys, feats = aggregate_by_molecule(image, keys)
    rows = pd.Series(range(len(activity.inchikeys)), index=activity.inchikeys)
    rows = rows[~rows.index.duplicated()]
    short = pd.Series(rows.to_numpy(), index=[k[:14] for k in rows.index])
    short = short[~short.index.duplicated()]
    found = pd.Series(mol_keys).map(rows)
    found = found.where(found.notna(), pd.Series(mol_keys).str[:14].map(short))
    ok = found.notna().to_numpy()
    if ok.sum() < 3:
        raise ValueError(f"only {int(ok.sum())} of {len(mol_keys)} molecules are rows of the activity matrix")
    labels = activity.matrix[found[ok].astype(int).to_numpy()]
    split = split_by_molecule(mol_keys[ok], seed=seed)
    kwargs = {} if Cs is None else {"Cs": tuple(Cs)}
    res = linear_probe(feats[ok], labels, split, task_names=activity.assay_ids, n_jobs=n_jobs, seed=seed,
                       show_progress=show_progress, **kwargs)
    res["n_molecules_matched"] = int(ok.sum())
    return res
