"""Splits: disjoint by molecule / by scaffold, deterministic, user files, the paper's retrieval subsets."""

import datasets
import numpy as np
import pandas as pd
import pytest
from rdkit import Chem
from rdkit.Chem.Scaffolds import MurckoScaffold

from cloome_hf.data import retrieval_subsets, split_by_molecule, split_by_scaffold, split_from_files
from cloome_hf.data.synthetic import bundled_molecules


@pytest.fixture(scope="module")
def meta():
    """A metadata-only dataset (splits never read images): 120 real molecules, 1-5 sites each."""
    mols = bundled_molecules().iloc[:120]
    rng = np.random.default_rng(0)
    rows = []
    for smi, key in zip(mols.smiles, mols.inchikey):
        for s in range(int(rng.integers(1, 6))):
            rows.append({"sample_key": f"{key[:8]}-{s}", "smiles": smi, "inchikey": key})
    return datasets.Dataset.from_pandas(pd.DataFrame(rows))


def _keys(ds):
    return set(ds["inchikey"])


def test_split_by_molecule_is_disjoint_complete_and_seeded(meta):
    sp = split_by_molecule(meta, (0.8, 0.1, 0.1), seed=0)
    assert list(sp) == ["train", "validation", "test"]
    tr, va, te = (_keys(sp[n]) for n in sp)
    assert not (tr & va or tr & te or va & te) and tr | va | te == _keys(meta)
    assert sum(len(sp[n]) for n in sp) == len(meta)
    assert (len(tr), len(va), len(te)) == (96, 12, 12)  # fractions of molecules
    again = split_by_molecule(meta.shuffle(seed=1), (0.8, 0.1, 0.1), seed=0)  # row order does not matter
    assert all(_keys(again[n]) == _keys(sp[n]) for n in sp)
    assert _keys(split_by_molecule(meta, (0.8, 0.1, 0.1), seed=1)["test"]) != te
    with pytest.raises(ValueError, match="sum to 1"):
        split_by_molecule(meta, (0.8, 0.3))


def test_split_by_molecule_streaming_matches(meta, tmp_path, monkeypatch):
    # datasets sleeps 5 s after a threaded Parquet stream ends (an Arrow shutdown workaround); not needed here
    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0)
    meta.to_parquet(str(tmp_path / "m.parquet"))
    stream = datasets.load_dataset("parquet", data_files=str(tmp_path / "m.parquet"), split="train", streaming=True)
    sp = split_by_molecule(stream, {"train": 0.5, "test": 0.5}, seed=3)
    ref = split_by_molecule(meta, {"train": 0.5, "test": 0.5}, seed=3)
    for name in ("train", "test"):
        assert [r["sample_key"] for r in sp[name]] == ref[name]["sample_key"]


def test_split_by_scaffold_shares_no_scaffold(meta):
    def scaffold(smi):  # independent reference: RDKit's scaffold molecule, canonical SMILES
        return Chem.MolToSmiles(MurckoScaffold.GetScaffoldForMol(Chem.MolFromSmiles(smi)))

    sp = split_by_scaffold(meta, (0.7, 0.15, 0.15), seed=0)
    scaf = {n: {scaffold(s) for s in sp[n]["smiles"]} - {""} for n in sp}
    assert not (scaf["train"] & scaf["validation"] or scaf["train"] & scaf["test"]
                or scaf["validation"] & scaf["test"])
    assert sum(len(sp[n]) for n in sp) == len(meta) and all(len(sp[n]) > 0 for n in sp)
    assert abs(len(sp["train"]) / len(meta) - 0.7) < 0.1
    assert all(_keys(split_by_scaffold(meta, (0.7, 0.15, 0.15), seed=0)[n]) == _keys(sp[n]) for n in sp)


def test_split_from_files(meta, tmp_path):
    keys = meta["sample_key"]
    pd.DataFrame({"SAMPLE_KEY": keys[:10], "X": 1}).to_csv(tmp_path / "a.csv", index=False)
    pd.DataFrame({"SAMPLE_KEY": keys[10:15]}).to_csv(tmp_path / "b.csv", index=False)
    sp = split_from_files(meta, {"train": tmp_path / "a.csv", "test": tmp_path / "b.csv"})
    assert sp["train"]["sample_key"] == keys[:10] and sp["test"]["sample_key"] == keys[10:15]
    pd.DataFrame({"SAMPLE_KEY": ["nope"]}).to_csv(tmp_path / "c.csv", index=False)
    with pytest.raises(ValueError, match=r"c.csv: 1 sample keys are not in the dataset, first 'nope'"):
        split_from_files(meta, {"x": tmp_path / "c.csv"})
    with pytest.raises(ValueError, match=f"sample key '{keys[0]}' is in split files"):
        split_from_files(meta, {"train": tmp_path / "a.csv", "again": tmp_path / "a.csv"})


def test_retrieval_subsets(meta):
    sub = retrieval_subsets(meta, seed=0)
    one, rest = sub["one_site_per_molecule"], sub["remaining_sites"]
    assert len(one) == len(_keys(meta)) == len(_keys(one))
    assert set(one["sample_key"]).isdisjoint(rest["sample_key"])
    assert len(one) + len(rest) == len(meta) and _keys(rest) <= _keys(one)
    assert retrieval_subsets(meta, seed=0)["one_site_per_molecule"]["sample_key"] == one["sample_key"]
