"""Two real CPU processes (gloo): the gathered local loss equals the single-process loss on the full batch."""

import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from cloome_hf.distributed import gather_features
from forked_launch import forkserver
from local_servers import free_port
from cloome_hf.losses import contrastive_loss, s2l_soft_labels, tanimoto_similarity

WORLD_SIZE = 2
ROWS_PER_RANK = 5
BATCH = WORLD_SIZE * ROWS_PER_RANK
CWCL_THRESHOLD = 0.6

# name -> (registered loss, logit_scale, logit_bias or None, extra inputs)
CASES = {
    "infonce": ("infonce", math.log(14.3), None, {}),
    "infoloob": ("infoloob", math.log(30.0), None, {"hopfield_beta": 22.0}),
    "siglip": ("siglip", math.log(10.0), -10.0, {"column_chunk_size": None}),
    "siglip_chunked": ("siglip", math.log(10.0), -10.0, {"column_chunk_size": 3}),
    "s2l": ("s2l", math.log(10.0), -10.0, {"column_chunk_size": 4}),
    "cwcl": ("cwcl", math.log(30.0), None, {"cwcl_threshold": CWCL_THRESHOLD}),
}


def full_batch():
    """Embeddings, phenomic embeddings and fingerprints whose close pairs straddle the two ranks."""
    g = torch.Generator().manual_seed(1234)
    x, z = torch.randn(BATCH, 8, generator=g), torch.randn(BATCH, 8, generator=g)
    family = torch.arange(BATCH) % 3  # rows 0..4 on rank 0 and 5..9 on rank 1 share families
    centres = torch.randn(3, 6, generator=g)
    phenomic = centres[family] + 0.04 * torch.randn(BATCH, 6, generator=g)
    fingerprints = (torch.rand(3, 32, generator=g) < 0.4).float()[family]
    for i in range(BATCH):
        flip = torch.randperm(32, generator=g)[: 1 + i % 3]
        fingerprints[i, flip] = 1.0 - fingerprints[i, flip]
    return x, z, phenomic, fingerprints


def case_inputs(name, phenomic, fingerprints, bias):
    _, _, _, extra = CASES[name]
    inputs = dict(extra, logit_bias=bias)
    if CASES[name][0] == "s2l":
        inputs["phenomic_embeds"] = phenomic
    if CASES[name][0] == "cwcl":
        inputs["fingerprints"] = fingerprints
    return inputs


def run_case(name, x, z, phenomic, fingerprints):
    """Loss and gradients (embeddings, logit_scale, logit_bias) of one process's rows."""
    loss_name, logit_scale, bias, _ = CASES[name]
    x, z = x.clone().requires_grad_(), z.clone().requires_grad_()
    scale = torch.tensor(logit_scale, requires_grad=True)
    bias = None if bias is None else torch.tensor(bias, requires_grad=True)
    inputs = case_inputs(name, phenomic, fingerprints, bias)
    loss = contrastive_loss(loss_name, F.normalize(x, dim=-1), F.normalize(z, dim=-1), scale, **inputs)
    loss.backward()
    parameter_grads = [scale.grad] + ([] if bias is None else [bias.grad])
    return loss.detach(), x.grad, z.grad, parameter_grads


def _worker(rank, port, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE)
    try:
        x, z, phenomic, fingerprints = full_batch()
        rows = slice(rank * ROWS_PER_RANK, (rank + 1) * ROWS_PER_RANK)
        for name in CASES:
            loss, x_grad, z_grad, parameter_grads = run_case(name, x[rows], z[rows], phenomic[rows], fingerprints[rows])
            # DDP averages gradients over processes; the local loss is the mean over local rows.
            for tensor in [loss, *parameter_grads]:
                dist.all_reduce(tensor)
            results[(name, rank)] = (
                loss.item() / WORLD_SIZE,
                x_grad / WORLD_SIZE,
                z_grad / WORLD_SIZE,
                [g / WORLD_SIZE for g in parameter_grads],
            )
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_process_results():
    with mp.Manager() as manager:
        results = manager.dict()
        forkserver()  # processes forked from a server that imported torch once, not each a new interpreter
        mp.start_processes(_worker, args=(free_port(), results), nprocs=WORLD_SIZE, join=True,
                           start_method="forkserver")
        return dict(results)


def test_test_data_has_soft_positives_across_ranks():
    """The S2L labels and CWCL weights link rows of different ranks, so the gathered columns matter."""
    _, _, phenomic, fingerprints = full_batch()
    across = (slice(0, ROWS_PER_RANK), slice(ROWS_PER_RANK, BATCH))
    assert (s2l_soft_labels(phenomic, phenomic)[across] > 0).any()
    assert (tanimoto_similarity(fingerprints, fingerprints)[across] >= CWCL_THRESHOLD).any()


@pytest.mark.parametrize("name", list(CASES))
def test_two_process_loss_and_gradients_equal_single_process(name, two_process_results):
    x, z, phenomic, fingerprints = full_batch()
    expected_loss, expected_x, expected_z, expected_parameters = run_case(name, x, z, phenomic, fingerprints)
    for rank in range(WORLD_SIZE):
        rows = slice(rank * ROWS_PER_RANK, (rank + 1) * ROWS_PER_RANK)
        loss, x_grad, z_grad, parameter_grads = two_process_results[(name, rank)]
        assert loss == pytest.approx(expected_loss.item(), rel=1e-5)
        torch.testing.assert_close(x_grad, expected_x[rows], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(z_grad, expected_z[rows], rtol=1e-4, atol=1e-6)
        for got, expected in zip(parameter_grads, expected_parameters):
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


def test_gather_is_identity_without_a_process_group():
    x = torch.randn(3, 2)
    gathered, offset = gather_features(x)
    assert gathered is x and offset == 0
