"""SigLIP, S2L, CWCL and the loss registry against direct loop implementations of their formulas (issue 17)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from rdkit import Chem, DataStructs
from rdkit.Chem import rdFingerprintGenerator

from cloome_hf.losses import (
    available_losses,
    cloob_loss,
    contrastive_loss,
    cwcl_loss,
    get_loss,
    infonce_loss,
    s2l_loss,
    s2l_soft_labels,
    siglip_loss,
    tanimoto_similarity,
)

C, LABEL_THRESHOLD, GAMMA, DELTA = 0.3, 0.75, 1.7, 0.75  # S2L as written in the issue


def unit_rows(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)


def clustered_rows(n, d, seed, clusters=3, noise=0.05):
    """Unit rows around ``clusters`` centres: close pairs (soft S2L positives) inside a cluster, far ones across."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, d, generator=g, dtype=torch.float64)
    members = torch.arange(n) % clusters
    noise_scale = noise * torch.linspace(0.2, 1.0, n, dtype=torch.float64)[:, None]
    return F.normalize(centres[members] + noise_scale * torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)


def analogue_fingerprints(n, bits, seed, counts=False):
    """Fingerprints in families: members of a family differ in a few positions, so some Tanimoto values are high."""
    g = torch.Generator().manual_seed(seed)
    families = (torch.rand(3, bits, generator=g) < 0.4).double()
    if counts:
        families = families * torch.randint(1, 4, (3, bits), generator=g).double()
    fps = families[torch.arange(n) % 3].clone()
    for i in range(n):
        changed = torch.randperm(bits, generator=g)[: 1 + i % 5]
        fps[i, changed] = (fps[i, changed] == 0).double() * (2.0 if counts else 1.0)
    return fps


def log_sigmoid(v):
    return -(max(0.0, -v) + math.log1p(math.exp(-abs(v))))


def dot(a, b):
    return sum(float(p) * float(q) for p, q in zip(a, b))


def reference_siglip(x, y, t, b):
    n = x.shape[0]
    total = 0.0
    for i in range(n):
        for j in range(n):
            z = 1.0 if i == j else -1.0
            total -= log_sigmoid(z * (t * dot(x[i], y[j]) + b))
    return total / n


def reference_s2l_label(e_i, e_j):
    e_i, e_j = e_i / e_i.norm(), e_j / e_j.norm()
    squared = sum((float(p) - float(q)) ** 2 for p, q in zip(e_i, e_j))
    s = 1.0 - (4.0 / math.pi) * math.atan(squared / C)
    return s if s >= LABEL_THRESHOLD else 0.0


def reference_s2l(x, y, e, t, b):
    n = x.shape[0]
    total = 0.0
    for i in range(n):
        for j in range(n):
            s = reference_s2l_label(e[i], e[j])
            logit = t * dot(x[i], y[j]) + b
            total -= s * log_sigmoid(logit) + (GAMMA - DELTA * s) * log_sigmoid(-logit)
    return total / n


def reference_tanimoto(a, b):
    low = sum(min(float(p), float(q)) for p, q in zip(a, b))
    high = sum(max(float(p), float(q)) for p, q in zip(a, b))
    return low / high if high > 0 else 0.0


def reference_cwcl(x, y, fps, inv_tau, threshold):
    n = x.shape[0]

    def weight(i, j):
        if i == j:
            return 1.0
        t = reference_tanimoto(fps[i], fps[j])
        return t if t >= threshold else 0.0

    def direction(anchors, candidates):
        total = 0.0
        for i in range(n):
            logits = [inv_tau * dot(anchors[i], candidates[j]) for j in range(n)]
            peak = max(logits)
            lse = peak + math.log(sum(math.exp(v - peak) for v in logits))
            weights = [weight(i, j) for j in range(n)]
            total -= sum(w * (logits[j] - lse) for j, w in enumerate(weights)) / sum(weights)
        return total / n

    return 0.5 * (direction(x, y) + direction(y, x))


def off_diagonal_tanimoto(fps):
    n = fps.shape[0]
    return [reference_tanimoto(fps[i], fps[j]) for i in range(n) for j in range(n) if i != j]


# --- fp32 against the loops --------------------------------------------------------------------------------------


@pytest.mark.parametrize("t,b", [(10.0, -10.0), (1.0, 0.0), (100.0, -5.0)])
@pytest.mark.parametrize("chunk", [None, 3])
def test_siglip_matches_loops(t, b, chunk):
    x, y = unit_rows(7, 5, 1).float(), unit_rows(7, 5, 2).float()
    expected = reference_siglip(x.double(), y.double(), t, b)
    assert siglip_loss(x, y, t, b, column_chunk_size=chunk).item() == pytest.approx(expected, rel=1e-5)


def test_s2l_labels_match_loops():
    e = clustered_rows(9, 6, 3)
    expected = torch.tensor([[reference_s2l_label(e[i], e[j]) for j in range(9)] for i in range(9)])
    got = s2l_soft_labels(e, e)
    torch.testing.assert_close(got.double(), expected.double(), rtol=1e-4, atol=1e-5)
    off_diagonal = expected[~torch.eye(9, dtype=torch.bool)]
    # The data exercise both branches: soft positives between distinct rows, and labels cut to 0.
    assert (off_diagonal > 0).any() and (off_diagonal == 0).any()


@pytest.mark.parametrize("chunk", [None, 4])
def test_s2l_matches_loops(chunk):
    x, y, e = unit_rows(9, 5, 4).float(), unit_rows(9, 5, 5).float(), clustered_rows(9, 6, 6).float()
    expected = reference_s2l(x.double(), y.double(), e.double(), 10.0, -10.0)
    got = s2l_loss(x, y, 10.0, -10.0, phenomic_embeds=e, column_chunk_size=chunk)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_s2l_defaults_to_the_detached_image_embeddings():
    # Clustered images: soft positives between distinct rows, through which gradients could leak into the labels.
    x = clustered_rows(9, 6, 7).float().requires_grad_()
    y = unit_rows(9, 6, 8).float()
    expected = reference_s2l(x.detach().double(), y.double(), x.detach().double(), 10.0, -10.0)
    loss = s2l_loss(x, y, 10.0, -10.0)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # The labels carry no gradient: the gradient is that of the loss with the labels held fixed.
    loss.backward()
    x_fixed = x.detach().clone().requires_grad_()
    s2l_loss(x_fixed, y, 10.0, -10.0, phenomic_embeds=x.detach().clone()).backward()
    torch.testing.assert_close(x.grad, x_fixed.grad)


@pytest.mark.parametrize("counts", [False, True])
def test_tanimoto_matches_loops(counts):
    a, b = analogue_fingerprints(6, 24, 9, counts), analogue_fingerprints(5, 24, 10, counts)
    a[0] = 0.0  # an empty fingerprint: similarity 0, as in RDKit
    expected = torch.tensor([[reference_tanimoto(a[i], b[j]) for j in range(5)] for i in range(6)])
    torch.testing.assert_close(tanimoto_similarity(a, b).double(), expected.double(), rtol=1e-6, atol=1e-7)


def test_tanimoto_agrees_with_rdkit():
    smiles = ["CCOc1ccccc1", "CCCOc1ccccc1C", "CC(=O)Oc1ccccc1C(=O)O", "c1ccc2ccccc2c1", "CCN(CC)CCOC(=O)c1ccccc1N"]
    generator = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=256)
    molecules = [Chem.MolFromSmiles(s) for s in smiles]
    for as_bits in (True, False):
        if as_bits:
            rd = [generator.GetFingerprint(m) for m in molecules]
            arrays = [generator.GetFingerprintAsNumPy(m) for m in molecules]
        else:
            rd = [generator.GetCountFingerprint(m) for m in molecules]
            arrays = [generator.GetCountFingerprintAsNumPy(m) for m in molecules]
        expected = torch.tensor([DataStructs.BulkTanimotoSimilarity(fp, rd) for fp in rd], dtype=torch.float64)
        fps = torch.from_numpy(np.stack(arrays).astype(np.float32))
        torch.testing.assert_close(tanimoto_similarity(fps, fps).double(), expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("counts", [False, True])
@pytest.mark.parametrize("threshold", [0.5, 0.7])
def test_cwcl_matches_loops(counts, threshold):
    x, y = unit_rows(9, 5, 11).float(), unit_rows(9, 5, 12).float()
    fps = analogue_fingerprints(9, 24, 13, counts)
    similarities = off_diagonal_tanimoto(fps)
    # Analogue pairs above the cut-off and unrelated ones below it both occur.
    assert max(similarities) >= threshold > min(similarities)
    expected = reference_cwcl(x.double(), y.double(), fps, 14.3, threshold)
    assert cwcl_loss(x, y, 14.3, fps.float(), threshold).item() == pytest.approx(expected, rel=1e-5)


def test_cwcl_without_analogues_is_infonce():
    x, y = unit_rows(8, 5, 14).float(), unit_rows(8, 5, 15).float()
    fps = analogue_fingerprints(8, 24, 16)
    assert max(off_diagonal_tanimoto(fps)) < 1.0
    got = cwcl_loss(x, y, 30.0, fps.float(), cwcl_threshold=1.0)
    assert got.item() == pytest.approx(infonce_loss(x, y, 30.0).item(), rel=1e-6)


# --- bf16 autocast ------------------------------------------------------------------------------------------------


def autocast_case(seed):
    """Embeddings made under bf16 autocast (as the model makes them) and the same computation in fp32."""
    x0, y0 = unit_rows(12, 32, seed).float(), unit_rows(12, 32, seed + 1).float()
    weight = torch.randn(32, 32, generator=torch.Generator().manual_seed(seed)) / 6
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = F.normalize(x0 @ weight, dim=-1), F.normalize(y0 @ weight, dim=-1)
    assert low[0].dtype == torch.bfloat16
    return low, (F.normalize(x0 @ weight, dim=-1), F.normalize(y0 @ weight, dim=-1))


def test_losses_under_bf16_autocast_match_the_loops():
    (xa, ya), (xf, yf) = autocast_case(17)
    e = clustered_rows(12, 6, 18).float()
    fps = analogue_fingerprints(12, 24, 19).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        values = {
            "siglip": siglip_loss(xa, ya, 10.0, -10.0),
            "siglip_chunked": siglip_loss(xa, ya, 10.0, -10.0, column_chunk_size=5),
            "s2l": s2l_loss(xa, ya, 10.0, -10.0, phenomic_embeds=e, column_chunk_size=5),
            "cwcl": cwcl_loss(xa, ya, 100.0, fps, 0.6),
        }
    x, y = xf.double(), yf.double()
    references = {
        "siglip": reference_siglip(x, y, 10.0, -10.0),
        "siglip_chunked": reference_siglip(x, y, 10.0, -10.0),
        "s2l": reference_s2l(x, y, e.double(), 10.0, -10.0),
        "cwcl": reference_cwcl(x, y, fps.double(), 100.0, 0.6),
    }
    for name, value in values.items():
        assert value.dtype == torch.float32 and torch.isfinite(value), name
        assert value.item() == pytest.approx(references[name], rel=0.05), name


# --- extreme temperatures -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,logit_scale,bias",
    [
        ("siglip", math.log(100.0), -10.0),
        ("siglip", 10.0, -100.0),
        ("siglip", 10.0, 100.0),
        ("s2l", 10.0, -100.0),
        ("s2l", 10.0, 100.0),
        ("cwcl", math.log(100.0), None),
    ],
)
def test_gradients_finite_at_extreme_temperatures(name, logit_scale, bias):
    x = unit_rows(16, 32, 20).float()
    noise = unit_rows(16, 32, 21).float()
    fps = analogue_fingerprints(16, 32, 22)
    for y in (noise, F.normalize(x + 1e-3 * noise, dim=-1)):  # random, and nearly aligned pairs
        x_leaf, y_leaf = x.clone().requires_grad_(), y.clone().requires_grad_()
        scale = torch.tensor(logit_scale, requires_grad=True)
        b = None if bias is None else torch.tensor(bias, requires_grad=True)
        loss = contrastive_loss(name, x_leaf, y_leaf, scale, logit_bias=b, fingerprints=fps, column_chunk_size=5)
        loss.backward()
        assert torch.isfinite(loss)
        grads = [x_leaf.grad, y_leaf.grad, scale.grad] + ([] if b is None else [b.grad])
        assert all(torch.isfinite(g).all() for g in grads)
        assert x_leaf.grad.abs().sum() + y_leaf.grad.abs().sum() > 0


# --- chunking -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["siglip", "s2l"])
@pytest.mark.parametrize("chunk", [1, 4, 11])
def test_chunked_sigmoid_losses_equal_unchunked(name, chunk):
    x, y, e = unit_rows(11, 6, 23).float(), unit_rows(11, 6, 24).float(), clustered_rows(11, 6, 25).float()
    results = []
    for column_chunk_size in (None, chunk):
        x_leaf, y_leaf = x.clone().requires_grad_(), y.clone().requires_grad_()
        scale, bias = torch.tensor(math.log(10.0), requires_grad=True), torch.tensor(-10.0, requires_grad=True)
        inputs = dict(logit_bias=bias, column_chunk_size=column_chunk_size)
        if name == "s2l":
            inputs["phenomic_embeds"] = e
        loss = contrastive_loss(name, x_leaf, y_leaf, scale, **inputs)
        loss.backward()
        results.append((loss.detach(), x_leaf.grad, y_leaf.grad, scale.grad, bias.grad))
    for unchunked, chunked in zip(*results):
        torch.testing.assert_close(chunked, unchunked, rtol=1e-5, atol=1e-6)


def saved_for_backward(loss_fn):
    """Elements of the distinct storages autograd keeps for the backward pass of ``loss_fn()`` (views count once)."""
    storages = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes() // tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = loss_fn()
    loss.backward()
    return sum(storages.values())


@pytest.mark.parametrize("name", ["siglip", "s2l"])
def test_chunking_keeps_no_n_by_n_matrix_for_backward(name):
    n, chunk = 64, 16
    x = unit_rows(n, 4, 26).float().requires_grad_()
    y = unit_rows(n, 4, 27).float().requires_grad_()

    def run(column_chunk_size):
        return lambda: contrastive_loss(name, x, y, 2.3, logit_bias=-10.0, column_chunk_size=column_chunk_size)

    # Unchunked, the graph holds the n x N logits; chunked, each chunk is recomputed in the backward pass, so the
    # graph holds no logits at all (only the n x 4 inputs).
    assert saved_for_backward(run(None)) >= n * n
    assert saved_for_backward(run(chunk)) <= n * chunk


# --- registry -----------------------------------------------------------------------------------------------------


def test_registry_names_and_alias():
    assert set(available_losses()) == {"infonce", "cloob", "siglip", "s2l", "cwcl"}
    assert "infoloob" in available_losses(include_aliases=True)
    assert get_loss("infoloob") is get_loss("cloob")


def test_registry_calls_the_losses_with_exp_of_logit_scale():
    x, y = unit_rows(6, 5, 28).float(), unit_rows(6, 5, 29).float()
    e, fps = clustered_rows(6, 4, 30).float(), analogue_fingerprints(6, 24, 31).float()
    inputs = dict(logit_bias=-3.0, hopfield_beta=22.0, fingerprints=fps, phenomic_embeds=e, cwcl_threshold=0.6)
    scale = torch.tensor(math.log(14.3))
    expected = {
        "infonce": infonce_loss(x, y, 14.3),
        "infoloob": cloob_loss(x, y, 14.3, 22.0),
        "cloob": cloob_loss(x, y, 14.3, 22.0),
        "siglip": siglip_loss(x, y, 14.3, -3.0),
        "s2l": s2l_loss(x, y, 14.3, -3.0, phenomic_embeds=e),
        "cwcl": cwcl_loss(x, y, 14.3, fps, 0.6),
    }
    for name, value in expected.items():
        assert contrastive_loss(name, x, y, scale, **inputs).item() == pytest.approx(value.item(), rel=1e-6), name


def test_registry_refuses_bad_requests():
    x, y = unit_rows(4, 5, 32).float(), unit_rows(4, 5, 33).float()
    with pytest.raises(ValueError, match="'clip'"):
        contrastive_loss("clip", x, y, 1.0)
    with pytest.raises(ValueError, match="needs \\['logit_bias'\\]"):
        contrastive_loss("siglip", x, y, 1.0)
    with pytest.raises(ValueError, match="needs \\['fingerprints'\\]"):
        contrastive_loss("cwcl", x, y, 1.0, fingerprints=None)
    with pytest.raises(ValueError, match="needs \\['hopfield_beta'\\]"):
        contrastive_loss("infoloob", x, y, 1.0)
    with pytest.raises(ValueError, match="logit_biass"):
        contrastive_loss("siglip", x, y, 1.0, logit_biass=0.0)
    with pytest.raises(ValueError, match="matched pairs"):
        contrastive_loss("infonce", x, y[:3], 1.0)


def test_bad_loss_inputs_are_refused():
    x, y = unit_rows(4, 5, 34).float(), unit_rows(4, 5, 35).float()
    fps = analogue_fingerprints(4, 24, 36).float()
    with pytest.raises(ValueError, match="cwcl_threshold"):
        cwcl_loss(x, y, 14.3, fps, cwcl_threshold=0.0)
    with pytest.raises(ValueError, match="non-negative"):
        cwcl_loss(x, y, 14.3, -fps)
    with pytest.raises(ValueError, match=r"fingerprints must have shape \(4, k\)"):
        cwcl_loss(x, y, 14.3, fps[:3])
    with pytest.raises(ValueError, match=r"phenomic_embeds must have shape \(4, k\)"):
        s2l_loss(x, y, 10.0, -10.0, phenomic_embeds=x[:2])
    with pytest.raises(ValueError, match="column_chunk_size"):
        siglip_loss(x, y, 10.0, -10.0, column_chunk_size=0)
    with pytest.raises(ValueError, match="at least 2 pairs"):
        siglip_loss(x[:1], y[:1], 10.0, -10.0)
