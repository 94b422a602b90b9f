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
