"""cloome embed --backend onnx / int8: checked against fp32 before a store is written, recorded in the store."""

import json

import numpy as np
import onnx
import pytest
import torch

from cloome_hf.cli import embed
from cloome_hf.inference import backends
from cloome_hf.inference.store import read_embeddings

SIZE = 48


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from cloome_hf import CloomeConfig, CloomeModel
    from cloome_hf.data.synthetic import make_synthetic_dataset
    from cloome_hf.featurization_cloome import MoleculeFeaturizer
    from cloome_hf.image_processing_cloome import CloomeImageProcessor
    from cloome_hf.processing_cloome import CloomeProcessor

    root = tmp_path_factory.mktemp("backends")
    ds = make_synthetic_dataset(num_molecules=24, sites_per_molecule=2, num_plates=2, image_size=SIZE, seed=0)
    ds.save_to_disk(str(root / "sites"))
    torch.manual_seed(0)
    vision = dict(backbone="cloome_resnet50", num_channels=5, layers=[1, 1, 1, 1], image_size=[SIZE, SIZE],
                  head_pool_size=1, base_width=8)
    model = CloomeModel(CloomeConfig(vision_config=vision, projection_dim=16,
                                     molecule_config=dict(fingerprint_size=64, hidden_size=32, num_hidden_layers=2)))
    processor = CloomeProcessor(CloomeImageProcessor(crop_size={"height": SIZE, "width": SIZE}),
                                MoleculeFeaturizer(fingerprint_size=64))
    model.save_pretrained(root / "model")
    processor.save_pretrained(root / "model")
    return {"root": root, "ds": ds, "model": model.eval(), "processor": processor}


def _embed(tiny, out, *extra):
    return embed.main(["--model", str(tiny["root"] / "model"), "--dataset", str(tiny["root"] / "sites"),
                       "--output_dir", str(out), "--batch_size", "16", "--check_sites", "16",
                       "--calibration_sites", "16", *extra])


def test_an_onnx_store_matches_the_torch_model_and_records_its_backend(tiny, tmp_path):
    _embed(tiny, tmp_path / "onnx", "--backend", "onnx")
    info = json.loads((tmp_path / "onnx" / "embedding_info.json").read_text())
    assert info["backend"] == "onnx"
    check = info["model_info"]["backend_check"]
    assert check["passed"] and check["num_sites"] == 16 and check["min_cosine"] >= backends.COSINE_BOUND
    got = np.stack(read_embeddings(str(tmp_path / "onnx" / "images")).to_pandas()["embedding"].to_numpy())
    # independent: the fp32 torch model on the processor's pixels, normalised
    from cloome_hf.data.schema import decode_row

    pixels = tiny["processor"](images=[decode_row(r) for r in tiny["ds"]], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        want = torch.nn.functional.normalize(tiny["model"].get_image_features(pixel_values=pixels).pooler_output, dim=-1)
    assert got.shape == tuple(want.shape)
    assert (np.sum(got * want.numpy(), axis=1) > 0.9999).all()

    # a resume with another backend is refused, naming the setting, and leaves the store as it was
    before = sorted(p.name for p in (tmp_path / "onnx" / "images").iterdir())
    with pytest.raises(ValueError, match="backend"):
        _embed(tiny, tmp_path / "onnx", "--backend", "torch")
    assert sorted(p.name for p in (tmp_path / "onnx" / "images").iterdir()) == before


def _calibration_and_held_out(tiny):
    rows_cal, rows_held = backends.sample_rows(len(tiny["ds"]), 16, 16)
    assert len(rows_cal) == len(rows_held) == 16 and not set(rows_cal) & set(rows_held)
    calibration, _ = backends.sample_pixel_values(tiny["ds"], tiny["processor"], rows_cal)
    held_out, keys = backends.sample_pixel_values(tiny["ds"], tiny["processor"], rows_held)
    assert keys == [tiny["ds"][r]["sample_key"] for r in rows_held]
    return calibration, held_out, keys


def test_int8_is_a_torch_ao_quantised_trunk_calibrated_on_the_sites_and_within_bounds(tiny, tmp_path):
    calibration, held_out, keys = _calibration_and_held_out(tiny)
    encoder = backends.build_image_encoder("int8", tiny["model"], calibration=calibration, workdir=str(tmp_path))
    quantized = [m for m in encoder.trunk.modules() if type(m).__module__.startswith("torch.ao.nn.quantized")]
    assert any("Conv" in type(m).__name__ for m in quantized)  # int8 convolutions, not the fp32 trunk
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in encoder.trunk.modules())  # folded
    check = backends.check_backend("int8", encoder, tiny["model"], held_out, keys)
    assert 0.999 <= check.min_cosine < 1 - 1e-7  # close to fp32, and not the fp32 trunk itself
    assert check.top_k_overlap >= backends.OVERLAP_BOUND


def test_the_int8_store_records_its_backend_and_its_calibration(tiny, tmp_path):
    engine = torch.backends.quantized.engine
    _embed(tiny, tmp_path / "int8", "--backend", "int8")
    assert torch.backends.quantized.engine == engine  # the encoder sets its engine only while it runs
    info = json.loads((tmp_path / "int8" / "embedding_info.json").read_text())
    assert info["backend"] == "int8"
    check = info["model_info"]["backend_check"]
    assert check["passed"] and check["calibration_sites"] == 16 and check["min_cosine"] < 1 - 1e-7
    got = np.stack(read_embeddings(str(tmp_path / "int8" / "images")).to_pandas()["embedding"].to_numpy())
    assert got.shape == (len(tiny["ds"]), 16) and np.isfinite(got).all()


def test_int8_refuses_a_tower_it_cannot_quantise_and_names_the_other_backend(tiny):
    class OtherTower(torch.nn.Module):
        pass

    model = type("M", (), {"vision_model": OtherTower()})()
    with pytest.raises(ValueError, match="OtherTower: use --backend onnx-int8"):
        backends.TorchInt8ImageEncoder(model, torch.zeros(1, 5, SIZE, SIZE))


def test_the_command_offers_every_backend():
    import dataclasses

    backend = next(f for f in dataclasses.fields(embed.EmbedArguments) if f.name == "backend")
    assert tuple(backend.metadata["choices"]) == backends.BACKENDS
    with pytest.raises(SystemExit):  # and the parser enforces them
        embed.parse_arguments(["--model", "m", "--output_dir", "o", "--backend", "fp8"])


def test_onnx_int8_is_a_quantised_graph_calibrated_on_the_sites_and_within_bounds(tiny, tmp_path):
    calibration, held_out, keys = _calibration_and_held_out(tiny)
    encoder = backends.build_image_encoder("onnx-int8", tiny["model"], calibration=calibration,
                                           workdir=str(tmp_path))
    ops = {node.op_type for node in onnx.load(encoder.path).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # int8 weights and activations, not the fp32 graph
    check = backends.check_backend("onnx-int8", encoder, tiny["model"], held_out, keys)
    assert 0.999 <= check.min_cosine < 1 - 1e-7  # close to fp32, and not the fp32 graph itself
    assert check.top_k_overlap >= backends.OVERLAP_BOUND


def test_a_backend_that_misses_its_bound_writes_nothing_and_says_by_how_much(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(backends, "COSINE_BOUND", 1.5)  # no backend can reach it
    with pytest.raises(backends.BackendBoundError, match=r"below the bound 1\.5.*no store was written"):
        _embed(tiny, tmp_path / "refused", "--backend", "onnx")
    assert not (tmp_path / "refused" / "embedding_info.json").exists()
    assert not (tmp_path / "refused" / "images").exists()


def test_the_check_names_the_worst_site_and_the_misses():
    torch.manual_seed(0)
    reference = torch.nn.functional.normalize(torch.randn(12, 8), dim=-1)

    class Model(torch.nn.Module):  # stands in for the fp32 model: its "features" are the reference rows
        def __init__(self):
            super().__init__()
            self.anchor = torch.nn.Parameter(torch.zeros(1))

        def get_image_features(self, pixel_values):
            from types import SimpleNamespace

            return SimpleNamespace(pooler_output=reference[pixel_values[:, 0, 0, 0].long()])

    flipped = reference.clone()
    flipped[3] = -flipped[3]  # site 3 points the other way: cosine -1
    pixels = torch.arange(12, dtype=torch.float32).view(12, 1, 1, 1)
    check = backends.check_backend("fake", lambda p: flipped[p[:, 0, 0, 0].long()], Model(), pixels,
                                   [f"site{i}" for i in range(12)], batch_size=5)
    assert check.worst_site == "site3" and check.min_cosine == pytest.approx(-1.0)
    with pytest.raises(backends.BackendBoundError, match=r"-1\.000000 on site 'site3', 1\.999000 below"):
        check.require_within_bounds()
    same = backends.check_backend("same", lambda p: reference[p[:, 0, 0, 0].long()], Model(), pixels,
                                  [f"site{i}" for i in range(12)])
    assert same.top_k_overlap == 1.0 and same.min_cosine == pytest.approx(1.0)
    same.require_within_bounds()
