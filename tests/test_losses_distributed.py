"""Two real CPU processes (gloo): the gathered local loss equals the single-process loss on the full batch."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from cloome_hf.distributed import gather_features
from cloome_hf.losses import cloob_loss, infonce_loss

WORLD_SIZE = 2
ROWS_PER_RANK = 5


def full_batch():
    g = torch.Generator().manual_seed(1234)
    return torch.randn(WORLD_SIZE * ROWS_PER_RANK, 8, generator=g), torch.randn(WORLD_SIZE * ROWS_PER_RANK, 8, generator=g)


def loss_fn(name, x, z):
    x, z = F.normalize(x, dim=-1), F.normalize(z, dim=-1)
    if name == "infonce":
        return infonce_loss(x, z, 14.3)
    return cloob_loss(x, z, 30.0, 22.0)


LOSSES = ("infonce", "infoloob")


def _worker(rank, port, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE)
    try:
        x, z = full_batch()
        rows = slice(rank * ROWS_PER_RANK, (rank + 1) * ROWS_PER_RANK)
        for name in LOSSES:
            x_local, z_local = x[rows].clone().requires_grad_(), z[rows].clone().requires_grad_()
            loss = loss_fn(name, x_local, z_local)
            loss.backward()
            # DDP averages gradients over processes; the local loss is the mean over local rows.
            mean_loss = loss.detach().clone()
            dist.all_reduce(mean_loss)
            results[(name, rank)] = (mean_loss.item() / WORLD_SIZE, x_local.grad / WORLD_SIZE, z_local.grad / WORLD_SIZE)
    finally:
        dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_process_results():
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_worker, args=(free_port(), results), nprocs=WORLD_SIZE, join=True)
        return dict(results)


@pytest.mark.parametrize("name", LOSSES)
def test_two_process_loss_and_gradients_equal_single_process(name, two_process_results):
    x, z = full_batch()
    x.requires_grad_()
    z.requires_grad_()
    expected = loss_fn(name, x, z)
    expected.backward()
    for rank in range(WORLD_SIZE):
        rows = slice(rank * ROWS_PER_RANK, (rank + 1) * ROWS_PER_RANK)
        loss, x_grad, z_grad = two_process_results[(name, rank)]
        assert loss == pytest.approx(expected.item(), rel=1e-5)
        torch.testing.assert_close(x_grad, x.grad[rows], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(z_grad, z.grad[rows], rtol=1e-4, atol=1e-6)


def test_gather_is_identity_without_a_process_group():
    x = torch.randn(3, 2)
    gathered, offset = gather_features(x)
    assert gathered is x and offset == 0
