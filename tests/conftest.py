"""Shared test set-up: offline Hub, deterministic seeds, tiny configurations."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402


# A ResNet of the published design, shrunk for CPU tests: 64 px inputs leave a 2x2 map for a 2x2 head pool.
TINY_VISION = {
    "backbone": "cloome_resnet50",
    "num_channels": 5,
    "layers": [1, 1, 1, 1],
    "image_size": [64, 64],
    "base_width": 8,
    "head_pool_size": 2,
}
TINY_MOLECULE = {"fingerprint_size": 64, "hidden_size": 32, "num_hidden_layers": 2}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def tiny_config():
    from cloome_hf import CloomeConfig

    return CloomeConfig(vision_config=dict(TINY_VISION), molecule_config=dict(TINY_MOLECULE), projection_dim=16)


@pytest.fixture
def one_thread():
    """One intra-op thread, for tests that compare weights bit for bit across runs or processes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# Tiny random transformers vision towers saved like a downloaded model: config, weights and image processor.
TINY_TOWER = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
              "image_size": 32, "patch_size": 8}


@pytest.fixture
def tiny_tower_folder(tmp_path):
    """``make(kind, processor=True)`` -> a folder holding a random 2-layer ``"dinov2"`` or ``"vit"`` model (hidden
    size 32, 32 px, patch 8) and, with ``processor``, its image processor (32 px crop, its library's mean / std)."""
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model, ViTConfig, ViTImageProcessor, ViTModel

    def make(kind: str = "dinov2", processor: bool = True):
        folder = tmp_path / f"tiny-{kind}"
        if kind == "dinov2":
            Dinov2Model(Dinov2Config(**TINY_TOWER)).save_pretrained(folder)
            image_processor = BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
        else:
            ViTModel(ViTConfig(**TINY_TOWER)).save_pretrained(folder)
            image_processor = ViTImageProcessor(size={"height": 32, "width": 32})
        if processor:
            image_processor.save_pretrained(folder)
        return str(folder)

    return make
