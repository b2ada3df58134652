import math

import numpy as np
import pytest
import torch

from crosssite.losses import supervised_nt_xent


def reference_loss(emb, labels, t):
    """Plain-python loop over ordered positive pairs (pytorch-metric-learning NTXentLoss semantics)."""
    emb = np.asarray(emb, dtype=np.float64)
    z = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    n = len(labels)
    terms = []
    for a in range(n):
        for p in range(n):
            if a == p or labels[a] != labels[p]:
                continue
            s_ap = float(z[a] @ z[p]) / t
            neg = sum(math.exp(float(z[a] @ z[k]) / t) for k in range(n) if labels[k] != labels[a])
            terms.append(-math.log(math.exp(s_ap) / (math.exp(s_ap) + neg)))
    return sum(terms) / len(terms)


def test_hand_computed_2d():
    # unit vectors at 0, 90, 180, 270 degrees (scaled differently), labels [0, 0, 1, 1]
    emb = torch.tensor([[2.0, 0.0], [0.0, 1.0], [-3.0, 0.0], [0.0, -0.5]])
    labels = torch.tensor([0, 0, 1, 1])
    t = 0.5
    # every anchor: its positive is orthogonal (s = 0); its negatives are at cos -1 and cos 0
    per_pair = -math.log(math.exp(0.0) / (math.exp(0.0) + math.exp(-1.0 / t) + math.exp(0.0)))
    expected = per_pair  # all 4 ordered positive pairs are identical
    got = supervised_nt_xent(emb, labels, temperature=t)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    assert got.item() == pytest.approx(reference_loss(emb.numpy(), [0, 0, 1, 1], t), rel=1e-6)


def test_random_batch_matches_loop_any_batch_size():
    torch.manual_seed(0)
    emb = torch.randn(7, 5)
    labels = torch.tensor([0, 1, 2, 0, 1, 1, 2])
    got = supervised_nt_xent(emb, labels, temperature=0.05)
    assert got.item() == pytest.approx(reference_loss(emb.numpy(), labels.tolist(), 0.05), rel=1e-5)


def test_no_positive_pairs_is_zero_with_grad():
    emb = torch.randn(3, 4, requires_grad=True)
    loss = supervised_nt_xent(emb, torch.tensor([0, 1, 2]))
    assert loss.item() == 0.0
    assert loss.requires_grad
    loss.backward()
    assert torch.equal(emb.grad, torch.zeros_like(emb))


def test_no_negatives_is_zero_and_finite_grad():
    emb = torch.randn(4, 3, requires_grad=True)
    loss = supervised_nt_xent(emb, torch.tensor([1, 1, 1, 1]))
    assert loss.item() == pytest.approx(0.0, abs=1e-7)
    loss.backward()
    assert torch.isfinite(emb.grad).all()


def test_gradient_finite_and_stable_at_low_temperature():
    torch.manual_seed(1)
    emb = (torch.randn(16, 128) * 100).requires_grad_()
    labels = torch.randint(0, 2, (16,))
    labels[0], labels[1] = 0, 1
    loss = supervised_nt_xent(emb, labels, temperature=0.001)  # similarities up to 1000
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(emb.grad).all() and emb.grad.abs().sum() > 0


def test_scale_invariant():
    torch.manual_seed(2)
    emb = torch.randn(6, 8)
    labels = torch.tensor([0, 0, 1, 1, 0, 1])
    scales = torch.tensor([1.0, 10.0, 0.1, 3.0, 7.0, 0.5])[:, None]
    a = supervised_nt_xent(emb, labels)
    b = supervised_nt_xent(emb * scales, labels)
    assert a.item() == pytest.approx(b.item(), rel=1e-5)


def test_bad_inputs():
    with pytest.raises(ValueError):
        supervised_nt_xent(torch.randn(4), torch.tensor([0, 0, 1, 1]))
    with pytest.raises(ValueError):
        supervised_nt_xent(torch.randn(4, 2), torch.tensor([0, 0, 1]))
    with pytest.raises(ValueError):
        supervised_nt_xent(torch.randn(4, 2), torch.tensor([0, 0, 1, 1]), temperature=0.0)
