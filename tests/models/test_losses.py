"""The CLOOME objectives against direct loop implementations of the formulas in the paper/issue."""

import math

import pytest
import torch
import torch.nn.functional as F

from cloome_hf.losses import cloob_loss, hopfield_retrieval, infoloob_loss, infonce_loss


def unit_rows(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)


def reference_infonce(x, z, inv_tau):
    n = x.shape[0]
    image_terms, molecule_terms = [], []
    for i in range(n):
        row_x = [inv_tau * float(x[i] @ z[j]) for j in range(n)]
        row_z = [inv_tau * float(z[i] @ x[j]) for j in range(n)]
        image_terms.append(-row_x[i] + math.log(sum(math.exp(v) for v in row_x)))
        molecule_terms.append(-row_z[i] + math.log(sum(math.exp(v) for v in row_z)))
    return 0.5 * (sum(image_terms) / n + sum(molecule_terms) / n)


def reference_retrieve(store, query, beta):
    weights = [math.exp(beta * float(store[j] @ query)) for j in range(store.shape[0])]
    total = sum(weights)
    out = sum((w / total) * store[j] for j, w in enumerate(weights))
    return out / out.norm()


def reference_infoloob(anchors, candidates, inv_tau):
    n = anchors.shape[0]
    terms = []
    for i in range(n):
        positive = inv_tau * float(anchors[i] @ candidates[i])
        negatives = sum(math.exp(inv_tau * float(anchors[i] @ candidates[j])) for j in range(n) if j != i)
        terms.append(-(positive - math.log(negatives)))
    return sum(terms) / n


def reference_cloob(x, z, inv_tau, beta):
    n = x.shape[0]
    u_x = torch.stack([reference_retrieve(x, x[i], beta) for i in range(n)])
    u_z = torch.stack([reference_retrieve(x, z[i], beta) for i in range(n)])
    v_x = torch.stack([reference_retrieve(z, x[i], beta) for i in range(n)])
    v_z = torch.stack([reference_retrieve(z, z[i], beta) for i in range(n)])
    tau = 1.0 / inv_tau
    return tau * reference_infoloob(u_x, u_z, inv_tau) + tau * reference_infoloob(v_z, v_x, inv_tau)


@pytest.mark.parametrize("inv_tau", [1.0, 14.3, 100.0])
def test_infonce_matches_loops(inv_tau):
    x, z = unit_rows(7, 5, 1), unit_rows(7, 5, 2)
    expected = reference_infonce(x, z, inv_tau)
    assert infonce_loss(x, z, inv_tau).item() == pytest.approx(expected, rel=1e-5)


def test_hopfield_retrieval_matches_loops():
    store, queries = unit_rows(6, 4, 3), unit_rows(3, 4, 4)
    got = hopfield_retrieval(queries, store, beta=22.0)
    expected = torch.stack([reference_retrieve(store, q, 22.0) for q in queries])
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.norm(dim=-1), torch.ones(3))


@pytest.mark.parametrize("inv_tau", [14.3, 30.0])
def test_infoloob_leaves_the_positive_out(inv_tau):
    anchors, candidates = unit_rows(6, 5, 5), unit_rows(6, 5, 6)
    expected = reference_infoloob(anchors, candidates, inv_tau)
    got_unscaled = infoloob_loss(anchors, candidates, inv_tau, scale_by_tau=False)
    assert got_unscaled.item() == pytest.approx(expected, rel=1e-5)
    # The published scaling multiplies by tau.
    assert infoloob_loss(anchors, candidates, inv_tau).item() == pytest.approx(expected / inv_tau, rel=1e-5)


def test_infoloob_offset_picks_the_global_positive():
    anchors, candidates = unit_rows(3, 4, 7), unit_rows(9, 4, 8)
    got = infoloob_loss(anchors, candidates, 10.0, offset=3, scale_by_tau=False)
    expected_terms = []
    for i in range(3):
        logits = 10.0 * candidates @ anchors[i]
        mask = torch.ones(9, dtype=torch.bool)
        mask[3 + i] = False
        expected_terms.append(torch.logsumexp(logits[mask], 0) - logits[3 + i])
    assert got.item() == pytest.approx(torch.stack(expected_terms).mean().item(), rel=1e-6)


@pytest.mark.parametrize("inv_tau,beta", [(30.0, 22.0), (14.3, 8.0)])
def test_cloob_matches_loops(inv_tau, beta):
    x, z = unit_rows(6, 5, 9), unit_rows(6, 5, 10)
    expected = reference_cloob(x, z, inv_tau, beta)
    assert cloob_loss(x, z, inv_tau, beta).item() == pytest.approx(expected, rel=1e-5)


def test_gradients_finite_at_inv_tau_100():
    x = unit_rows(16, 32, 11).float().requires_grad_()
    z = unit_rows(16, 32, 12).float().requires_grad_()
    # Nearly perfectly aligned pairs push the positive logit to 100 and the negatives far below it.
    z_aligned = F.normalize(x.detach() + 1e-3 * z.detach(), dim=-1).requires_grad_()
    for a, b in [(x, z), (x, z_aligned)]:
        loss = cloob_loss(a, b, 100.0, 22.0) + infoloob_loss(a, b, 100.0)
        loss.backward()
        assert torch.isfinite(loss)
        assert torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()
        assert a.grad.abs().sum() > 0
        a.grad = b.grad = None


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_losses_under_autocast_stay_close_to_fp32(dtype):
    x, z = unit_rows(32, 64, 13).float(), unit_rows(32, 64, 14).float()
    weight = torch.randn(64, 64) / 8
    with torch.autocast("cpu", dtype=dtype):
        xa, za = F.normalize(x @ weight, dim=-1), F.normalize(z @ weight, dim=-1)
        values = [infonce_loss(xa, za, 100.0), cloob_loss(xa, za, 100.0, 22.0)]
    xf, zf = F.normalize(x @ weight, dim=-1), F.normalize(z @ weight, dim=-1)
    references = [infonce_loss(xf, zf, 100.0), cloob_loss(xf, zf, 100.0, 22.0)]
    for value, reference in zip(values, references):
        assert value.dtype == torch.float32 and torch.isfinite(value)
        assert value.item() == pytest.approx(reference.item(), rel=0.05)


def test_one_pair_has_an_infonce_loss_but_no_infoloob_loss():
    # One pair: each softmax runs over its single candidate, so InfoNCE is the cross-entropy of a 1 x 1 matrix (0);
    # InfoLOOB leaves the positive out of its denominator, which then is empty.
    x, z = unit_rows(1, 4, 15), unit_rows(1, 4, 16)
    expected = reference_infonce(x, z, 14.3)
    assert expected == pytest.approx(0.0, abs=1e-12)
    loss = infonce_loss(x.requires_grad_(), z, 14.3)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    loss.backward()
    assert torch.isfinite(x.grad).all()
    with pytest.raises(ValueError, match="at least 2 pairs"):
        cloob_loss(x.detach(), z, 30.0, 22.0)


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match=r"\(4, 5\)"):
        infoloob_loss(unit_rows(4, 5, 1), unit_rows(4, 6, 2), 10.0)
