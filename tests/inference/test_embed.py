"""scripts/embed.py: embed -> index -> query round trip with a trained tiny model, resumability, output format."""

import json
import os

import numpy as np
import pandas as pd
import pytest
import torch

from cloome_hf.cli import embed
from cloome_hf.inference import store

SIZE = 48
VISION = {"backbone": "cloome_resnet50", "num_channels": 5, "layers": [1, 1, 1, 1], "image_size": [SIZE, SIZE],
          "head_pool_size": 1, "base_width": 8}
MOLECULE = {"fingerprint_size": 256, "hidden_size": 64, "num_hidden_layers": 2}


def make_processor():
    from cloome_hf.featurization_cloome import MoleculeFeaturizer
    from cloome_hf.image_processing_cloome import CloomeImageProcessor
    from cloome_hf.processing_cloome import CloomeProcessor

    return CloomeProcessor(CloomeImageProcessor(crop_size={"height": SIZE, "width": SIZE}),
                           MoleculeFeaturizer(fingerprint_size=256, radius=2))


def train_tiny_model(ds, processor, steps=30, seed=0):
    """A plain contrastive loop over the synthetic sites (~15 s on 2 CPU cores): enough for the synthetic
    phenotype (a smooth function of the fingerprint) to be read from the images."""
    from cloome_hf import CloomeConfig, CloomeModel
    from cloome_hf.data.schema import decode_row

    torch.manual_seed(seed)
    model = CloomeModel(CloomeConfig(vision_config=dict(VISION), molecule_config=dict(MOLECULE), projection_dim=32))
    pixels = processor(images=[decode_row(r) for r in ds], return_tensors="pt")["pixel_values"]
    fps = processor(smiles=ds["smiles"], return_tensors="pt")["fingerprints"]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        idx = torch.randperm(len(ds), generator=gen)[:32]
        loss = model(pixel_values=pixels[idx], fingerprints=fps[idx], return_loss=True).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.clamp_logit_scale()
    return model.eval()


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    from cloome_hf.data.synthetic import make_synthetic_dataset

    ds = make_synthetic_dataset(num_molecules=20, sites_per_molecule=4, num_plates=2, image_size=SIZE, seed=0)
    root = tmp_path_factory.mktemp("embed")
    ds.save_to_disk(str(root / "sites"))
    processor = make_processor()
    model = train_tiny_model(ds, processor)
    model.save_pretrained(root / "model")
    processor.save_pretrained(root / "model")
    library = pd.DataFrame({"smiles": sorted(set(ds["smiles"])),
                            "inchikey": [ds["inchikey"][ds["smiles"].index(s)] for s in sorted(set(ds["smiles"]))]})
    library.to_csv(root / "library.csv", index=False)
    return {"ds": ds, "root": root, "model": model, "processor": processor, "library": library}


def _run(synthetic, out, *extra):
    root = synthetic["root"]
    return embed.main(["--model", str(root / "model"), "--dataset", str(root / "sites"), "--molecules",
                       str(root / "library.csv"), "--output_dir", str(out), "--batch_size", "16",
                       "--shard_size", "24", *extra])


def _read(out, config):
    from cloome_hf.inference.store import read_embeddings

    return read_embeddings(str(out / config)).to_pandas()


@pytest.fixture(scope="module")
def embedded(synthetic):
    out = synthetic["root"] / "out"
    _run(synthetic, out)
    return out


def test_output_format_and_values(synthetic, embedded, tmp_path):
    # cache_dir: datasets caches local folders by name, and every run writes a folder named like the last one
    import datasets

    images = datasets.load_dataset(str(embedded), "images", split="train", cache_dir=str(tmp_path))
    assert len(images) == len(synthetic["ds"])
    assert set(images.column_names) == {"sample_key", "plate", "well", "site", "inchikey", "smiles", "embedding"}
    assert images["sample_key"] == synthetic["ds"]["sample_key"]  # shard order = dataset order
    emb = np.asarray(images["embedding"], dtype=np.float32)
    assert emb.shape == (80, 32)
    # independent recomputation for a few sites: processor -> model -> normalise
    from cloome_hf.data.schema import decode_row

    model, proc = synthetic["model"], synthetic["processor"]
    sites = [decode_row(synthetic["ds"][i]) for i in (0, 41, 79)]
    with torch.no_grad():
        ref = torch.nn.functional.normalize(model.get_image_features(proc(images=sites, return_tensors="pt")["pixel_values"]).pooler_output, dim=-1)
    np.testing.assert_allclose(emb[[0, 41, 79]], ref.numpy(), atol=1e-5)
    molecules = datasets.load_dataset(str(embedded), "molecules", split="train", cache_dir=str(tmp_path))
    assert molecules["smiles"] == synthetic["library"]["smiles"].tolist()
    info = json.loads((embedded / "embedding_info.json").read_text())
    assert info["model_id"] == str(synthetic["root"] / "model")
    assert info["processor"]["featurizer"]["fingerprint_size"] == 256
    assert info["processor"]["image_processor"]["crop_size"] == {"height": SIZE, "width": SIZE}
    assert sorted(os.listdir(embedded / "images")) == [f"shard-{i:05d}.parquet" for i in range(4)]


def test_round_trip_molecule_finds_its_own_images(synthetic, embedded):
    """Embed -> index -> query: each molecule's own sites rank first far more often than chance (1/20)."""
    from cloome_hf.inference.search import CloomeIndex

    index = CloomeIndex.from_datasets(str(embedded / "images"), str(embedded / "molecules"),
                                      model=synthetic["model"], processor=synthetic["processor"])
    smiles = synthetic["library"]["smiles"].tolist()
    hits = index.search_images(smiles=smiles, k=1)
    top1 = float(np.mean(hits["smiles"].to_numpy() == hits["query_smiles"].to_numpy()))
    assert top1 >= 0.5, top1  # chance is 0.05
    # image -> molecule the other way round, through the stored molecule library
    ds = synthetic["ds"]
    from cloome_hf.data.schema import decode_row

    sites = [decode_row(ds[i]) for i in range(0, 80, 4)]
    found = index.search_molecules(images=sites, k=1)
    assert np.mean(found["smiles"].to_numpy() == np.array(ds["smiles"][0:80:4])) >= 0.5
    with pytest.raises(ValueError, match="not-a-smiles"):
        index.search_images(smiles=["CCO", "not-a-smiles"])


def test_resume_after_interruption_gives_identical_output(synthetic, embedded, monkeypatch, tmp_path):
    out = tmp_path / "resumed"
    real = store.write_shard
    calls = []

    def crash_on_third(path, *a):
        calls.append(os.path.basename(path))
        if len(calls) == 3:
            raise KeyboardInterrupt("simulated kill")
        real(path, *a)

    monkeypatch.setattr(store, "write_shard", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        _run(synthetic, out)
    assert sorted(os.listdir(out / "images")) == ["shard-00000.parquet", "shard-00001.parquet"]  # no partial file
    calls.clear()
    monkeypatch.setattr(store, "write_shard", lambda path, *a: (calls.append(os.path.basename(path)), real(path, *a)))
    _run(synthetic, out)
    assert calls == ["shard-00002.parquet", "shard-00003.parquet", "shard-00000.parquet"]  # 2 image + 1 molecule
    for config in ("images", "molecules"):
        pd.testing.assert_frame_equal(_read(out, config), _read(embedded, config))
    with pytest.raises(ValueError, match="embedding_dtype"):
        _run(synthetic, out, "--embedding_dtype", "float16")


def test_float16_and_bf16_via_cli(synthetic, tmp_path):
    from cloome_hf import cli

    out = tmp_path / "half"
    root = synthetic["root"]
    cli.main(["embed", "--model", str(root / "model"), "--dataset", str(root / "sites"), "--output_dir", str(out),
                "--embedding_dtype", "float16", "--bf16", "--max_sites", "8", "--keep_columns", "name"])
    import pyarrow.parquet as pq

    table = pq.read_table(out / "images" / "shard-00000.parquet")
    assert str(table.schema.field("embedding").type.value_type) == "halffloat"
    assert table.column("name").to_pylist() == synthetic["ds"]["name"][:8]
    emb = np.asarray(table.column("embedding").to_pylist(), dtype=np.float32)
    ref = _read(synthetic["root"] / "out", "images")["embedding"][:8]
    cos = np.sum(emb * np.stack(ref.to_numpy()), axis=1)
    assert np.all(cos > 0.98)  # bf16 autocast + float16 storage stay close to the float32 embeddings


def test_bad_inputs(synthetic, tmp_path):
    root = synthetic["root"]
    pd.DataFrame({"name": ["x"]}).to_csv(tmp_path / "nosmiles.csv", index=False)
    with pytest.raises(ValueError, match="no 'smiles' column"):
        embed.main(["--model", str(root / "model"), "--molecules", str(tmp_path / "nosmiles.csv"),
                    "--output_dir", str(tmp_path / "o")])
    with pytest.raises(ValueError, match="nothing to embed"):
        embed.main(["--model", str(root / "model"), "--output_dir", str(tmp_path / "o2")])


@pytest.mark.parametrize("command", ["train", "prepare", "embed", "evaluate", "search", "convert", "push"])
def test_cli_help_everywhere(command, capsys):
    from cloome_hf import cli

    with pytest.raises(SystemExit) as exc:
        cli.main([command, "--help"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith("usage: ")  # the command's own parser answered
    cli.main(["--help"])
    listing = capsys.readouterr().out
    assert all(c in listing for c in ("train", "prepare", "embed", "evaluate", "search", "convert", "push"))


def test_cli_search_matches_library_calls(synthetic, embedded, tmp_path):
    from cloome_hf import cli
    from cloome_hf.data.schema import decode_row
    from cloome_hf.inference.search import CloomeIndex

    smiles = synthetic["library"]["smiles"].tolist()[:3]
    exit_code = cli.main(["search", "--embeddings", str(embedded), "--smiles", *smiles, "--k", "3",
                          "--output", str(tmp_path / "hits.csv"), "--save_index", str(tmp_path / "index")])
    assert exit_code == 0  # the console script exits with main's return value
    ref = CloomeIndex.from_datasets(str(embedded / "images"), str(embedded / "molecules"),
                                    model=synthetic["model"], processor=synthetic["processor"])
    expected = ref.search_images(smiles=smiles, k=3)
    got = pd.read_csv(tmp_path / "hits.csv")
    assert got["sample_key"].tolist() == expected["sample_key"].tolist()
    np.testing.assert_allclose(got["score"], expected["score"], atol=1e-5)
    # image -> molecules from the saved index; the model id comes from embedding_info.json via the index
    site = decode_row(synthetic["ds"][5])
    np.savez(tmp_path / "site.npz", sample=site.transpose(1, 2, 0))
    result = cli.run(["search", "--index", str(tmp_path / "index"), "--images", str(tmp_path / "site.npz"), "--k", "2"])
    assert result["smiles"].tolist() == ref.search_molecules(images=[site], k=2)["smiles"].tolist()
    assert result["query_image"].tolist() == [str(tmp_path / "site.npz")] * 2


def test_processes_split_the_shards(synthetic, embedded, monkeypatch, tmp_path):
    """Two accelerate processes (simulated in turn) each write their own shards; together the output equals a
    single-process run."""
    import accelerate

    written = []
    real = store.write_shard
    monkeypatch.setattr(store, "write_shard", lambda path, *a: (written.append(path), real(path, *a)))

    class TwoProcesses:
        num_processes, device = 2, torch.device("cpu")

        def __init__(self):
            self.process_index = self.rank
            self.is_main_process = self.is_local_main_process = self.rank == 0

        def wait_for_everyone(self):
            pass

    out = tmp_path / "split"
    for rank in (0, 1):
        TwoProcesses.rank = rank
        monkeypatch.setattr(accelerate, "Accelerator", TwoProcesses)
        written.clear()
        _run(synthetic, out)
        mine = sorted(os.path.relpath(p, out) for p in written)
        if rank == 0:
            assert mine == ["images/shard-00000.parquet", "images/shard-00002.parquet", "molecules/shard-00000.parquet"]
        else:
            assert mine == ["images/shard-00001.parquet", "images/shard-00003.parquet"]
    for config in ("images", "molecules"):
        pd.testing.assert_frame_equal(_read(out, config), _read(embedded, config))


def test_index_of_a_pretrained_model_reloads_with_its_model(synthetic, embedded, tmp_path):
    from cloome_hf.processing_cloome import load_model_and_processor
    from cloome_hf.inference.search import CloomeIndex

    model, processor = load_model_and_processor(synthetic["root"] / "model")
    index = CloomeIndex.from_datasets(str(embedded / "images"), str(embedded / "molecules"), model=model,
                                      processor=processor)
    index.save(tmp_path / "index")
    reloaded = CloomeIndex.load(tmp_path / "index", load_model=True)  # the model id was recorded by save()
    smiles = synthetic["library"]["smiles"].tolist()[:2]
    pd.testing.assert_frame_equal(reloaded.search_images(smiles=smiles, k=3), index.search_images(smiles=smiles, k=3))
