"""MS-Net's knowledge transfer term and its use of the universal head for prediction."""

import pytest
import torch

from conftest import site_minibatches

from crosssite.config import TrainConfig
from crosssite.methods import create_method
from crosssite.methods.ms_net import soft_target_kl


def test_soft_target_kl_against_a_hand_computation():
    student = torch.tensor([[2.0, -1.0], [0.5, 0.5]], requires_grad=True)
    teacher = torch.tensor([[0.0, 1.0], [3.0, 0.0]], requires_grad=True)
    t = 2.0
    p = torch.softmax(teacher / t, 1)
    q = torch.softmax(student / t, 1)
    expected = (p * (p.log() - q.log())).sum(1).mean() * t * t
    value = soft_target_kl(student, teacher, t)
    assert value.item() == pytest.approx(expected.item(), rel=1e-6)
    value.backward()
    assert teacher.grad is None  # the transfer teaches the universal (student) head only
    assert student.grad.abs().sum() > 0
    assert soft_target_kl(teacher.detach(), teacher, t).item() == pytest.approx(0.0, abs=1e-7)


def build(**overrides):
    torch.manual_seed(0)
    config = TrainConfig(method="ms-net", image_size=64, width=0.25, lr=1e-3, **overrides)
    return create_method("ms-net", 2, config)


def test_loss_is_auxiliary_ce_plus_weighted_universal_terms():
    stats = {k: float(v) for k, v in build(kd_weight=0.3).update(site_minibatches()).items()}
    expected = stats["aux_ce"] + 0.7 * stats["universal_ce"] + 0.3 * stats["kd"]
    assert stats["loss"] == pytest.approx(expected, rel=1e-5)
    assert stats["kd"] > 0


def test_prediction_uses_the_universal_head_not_the_auxiliary_ones():
    method = build()
    method.update(site_minibatches())
    method.eval()
    x = torch.randn(2, 3, 64, 64)
    before = [method.predict(x, s) for s in range(2)]
    with torch.no_grad():
        for p in method.net.aux_classifier.parameters():
            p.add_(1.0)
    assert all(torch.equal(method.predict(x, s), before[s]) for s in range(2))


def test_bad_transfer_settings_are_refused():
    from crosssite.errors import CrossSiteError

    with pytest.raises(CrossSiteError, match="kd_weight"):
        TrainConfig(kd_weight=1.5).validate()
    with pytest.raises(CrossSiteError, match="kd_temperature"):
        TrainConfig(kd_temperature=0).validate()
