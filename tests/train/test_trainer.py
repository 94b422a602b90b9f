"""transformers.Trainer trains CloomeModel on batches from cloome_hf.data, and its saved model reloads."""

import numpy as np
import torch

from cloome_hf import CloomeConfig, CloomeModel, MoleculeFeaturizer
from cloome_hf.data import make_synthetic_dataset, trainer_inputs


def test_trainer_lowers_the_loss_and_saves_a_from_pretrained_model(tmp_path, one_thread):
    from transformers import Trainer, TrainingArguments

    ds = make_synthetic_dataset(num_molecules=48, sites_per_molecule=2, num_plates=2, image_size=32, seed=0)
    dataset, collator = trainer_inputs(ds, MoleculeFeaturizer(fingerprint_size=128))
    batch = collator(dataset.__getitems__(list(range(4))))
    assert set(batch) == {"pixel_values", "fingerprints", "return_loss"} and batch["return_loss"] is True

    torch.manual_seed(0)
    model = CloomeModel(CloomeConfig(vision_config={"layers": [1, 1, 1, 1], "base_width": 8, "head_pool_size": 1,
                                                    "image_size": [32, 32]},
                                     molecule_config={"fingerprint_size": 128, "hidden_size": 64,
                                                      "num_hidden_layers": 2}, projection_dim=32))
    args = TrainingArguments(output_dir=str(tmp_path / "trainer"), per_device_train_batch_size=24, max_steps=40,
                             learning_rate=2e-3, logging_steps=1, save_strategy="no", report_to="none", use_cpu=True,
                             seed=0, dataloader_drop_last=True, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator)
    trainer.train()
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    assert len(losses) == 40 and np.mean(losses[-8:]) < 0.8 * np.mean(losses[:8]), losses

    trainer.save_model(str(tmp_path / "saved"))
    reloaded = CloomeModel.from_pretrained(tmp_path / "saved")
    for name, tensor in trainer.model.state_dict().items():
        assert torch.equal(tensor.cpu(), reloaded.state_dict()[name]), name
