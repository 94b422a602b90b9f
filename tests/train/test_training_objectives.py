"""``cloome train`` with the peers' objectives and dose conditioning: what the loop hands the model (issue 17)."""

import json

import pytest
import torch
from conftest import TINY_VISION
from conftest import TINY_ARGS, load_train_script

from cloome_hf import CloomeConfig, CloomeModel
from cloome_hf.train import loop


@pytest.fixture
def forward_calls(monkeypatch):
    """The keyword arguments of every training forward (``return_loss=True``) of CloomeModel."""
    calls = []
    forward = CloomeModel.forward

    def recording(self, *args, **kwargs):
        if kwargs.get("return_loss"):
            calls.append({k: v.detach().clone() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()})
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(CloomeModel, "forward", recording)
    return calls


def test_s2l_gets_the_frozen_models_image_embeddings(tmp_path, forward_calls, one_thread):
    frozen_path = tmp_path / "phenomics"
    CloomeModel(CloomeConfig(vision_config=dict(TINY_VISION), projection_dim=8,
                             molecule_config={"fingerprint_size": 16, "hidden_size": 8, "num_hidden_layers": 1}),
                ).save_pretrained(frozen_path)
    out = tmp_path / "s2l"
    loop.main(["--output_dir", str(out), *TINY_ARGS, "--loss", "s2l", "--s2l_phenomic_model", str(frozen_path),
               "--max_steps", "2"])
    frozen = CloomeModel.from_pretrained(frozen_path).eval()
    assert len(forward_calls) == 2
    for call in forward_calls:
        with torch.no_grad():
            expected = frozen.get_image_features(call["pixel_values"]).pooler_output
        torch.testing.assert_close(call["phenomic_embeds"], expected)
    config = json.loads((out / "config.json").read_text())
    assert config["loss"] == "s2l" and config["logit_bias_init_value"] == -10.0


def test_sigmoid_losses_start_from_siglips_scale_unless_told(tmp_path, one_thread):
    out = tmp_path / "siglip"
    loop.main(["--output_dir", str(out), *TINY_ARGS, "--loss", "siglip", "--max_steps", "1"])
    config = json.loads((out / "config.json").read_text())
    assert config["logit_scale_init_value"] == pytest.approx(2.302585, abs=1e-6)  # ln 10
    model_args, *_ = load_train_script().parse_args(["--output_dir", "x", "--loss", "siglip",
                                                     "--init_inverse_temperature", "20"])
    assert model_args.init_inverse_temperature == 20.0


def test_a_dose_conditioned_model_trains_on_the_doses_of_its_batch(tmp_path, monkeypatch, one_thread):
    from cloome_hf.data.synthetic_plates import make_synthetic_plates

    ds = make_synthetic_plates(num_compounds=12, replicates=2, controls_per_plate=1, doses=[0.1, 10.0],
                               image_size=64, seed=0)
    ds.save_to_disk(str(tmp_path / "plates"))
    doses = dict(zip(ds["sample_key"], ds["concentration"]))
    seen = []
    loss_inputs = loop.loss_inputs

    def recording(run, batch, pixels):
        inputs = loss_inputs(run, batch, pixels)
        seen.append((list(batch["sample_key"]), inputs["concentrations"].tolist()))
        return inputs

    monkeypatch.setattr(loop, "loss_inputs", recording)
    out = tmp_path / "dosed"
    result = loop.main(["--output_dir", str(out), *TINY_ARGS, "--dataset", str(tmp_path / "plates"),
                        "--concentration_encoding", "one_hot", "--concentration_buckets", "1", "--max_steps", "3"])
    assert len(seen) == 3
    for keys, values in seen:
        assert values == pytest.approx([doses[k] for k in keys])
    config = json.loads((out / "config.json").read_text())
    assert config["molecule_config"]["concentration_encoding"] == "one_hot"
    assert config["molecule_config"]["concentration_buckets"] == [1.0]
    assert len(result["validation_image_embeds"]) == len(result["validation_molecule_embeds"])


@pytest.mark.parametrize("argv,message", [
    (["--concentration_encoding", "linear"], "no 'concentration' column"),
    (["--s2l_phenomic_model", "somewhere"], "--loss s2l"),
])
def test_options_that_do_not_apply_are_refused(tmp_path, argv, message):
    with pytest.raises(ValueError, match=message):
        loop.main(["--output_dir", str(tmp_path / "x"), *TINY_ARGS, "--max_steps", "1", *argv])
