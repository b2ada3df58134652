"""Every registered method: builds small, learns on a tiny two-site batch, predicts, reloads exactly."""

import math

import pytest
import torch

from conftest import site_minibatches

from crosssite.checkpoint import load_trained, save_checkpoint
from crosssite.config import TrainConfig
from crosssite.errors import CrossSiteError
from crosssite.methods import METHODS, create_method
from crosssite.models.site_bn import SiteBatchNorm

SMALL = dict(image_size=64, width=0.25, batch_per_site=4, lr=1e-3)


def build(name, **overrides):
    torch.manual_seed(0)
    return create_method(name, 2, TrainConfig(method=name, **{**SMALL, **overrides}))


@pytest.mark.parametrize("name", sorted(METHODS))
def test_updates_give_finite_losses_and_gradients(name):
    method = build(name)
    batches = site_minibatches()
    losses = [float(method.update(batches)["loss"]) for _ in range(3)]
    assert all(torch.isfinite(torch.tensor(losses)))
    # after a step, every parameter that received a gradient has a finite one, and most did
    with_grad = [p for p in method.parameters() if p.grad is not None]
    assert with_grad and all(torch.isfinite(p.grad).all() for p in with_grad)
    assert len(with_grad) >= 0.5 * len(list(method.parameters()))


@pytest.mark.parametrize("name", sorted(METHODS))
def test_loss_decreases_on_a_fixed_batch(name):
    method = build(name)
    batches = site_minibatches()
    first = method.update(batches)["loss"]
    for _ in range(8):
        last = method.update(batches)["loss"]
    assert last < first


@pytest.mark.parametrize("name", sorted(METHODS))
def test_predict_shape_per_site(name):
    method = build(name).eval()
    x = torch.randn(3, 3, 64, 64)
    for site in range(2):
        assert method.predict(x, site).shape == (3, 2)
    with pytest.raises(IndexError):
        method.predict(x, 2)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_checkpoint_reloads_identical_model(name, tmp_path):
    method = build(name)
    method.update(site_minibatches())
    config = method.config
    save_checkpoint(tmp_path / "m.pt", method, config, ["a", "b"])
    trained = load_trained(tmp_path / "m.pt", expect_method=name)
    again, config2, sites = trained.method, trained.config, trained.site_names
    assert sites == ["a", "b"] and config2 == config
    method.eval()
    x = torch.randn(2, 3, 64, 64)
    for site in range(2):
        assert torch.equal(method.predict(x, site), again.predict(x, site))


def test_original_backbone_only_for_single_and_joint():
    for name in ("single", "joint"):
        build(name, backbone="covidnet")
    for name in ("sepnorm", "contrastive"):
        with pytest.raises(CrossSiteError, match="backbone"):
            build(name, backbone="covidnet")


@pytest.mark.parametrize("name", ["sepnorm", "contrastive"])
def test_site_specific_methods_have_per_site_bn(name):
    method = build(name)
    assert any(isinstance(m, SiteBatchNorm) for m in method.modules())


def test_contrastive_reports_both_loss_terms():
    stats = {k: float(v) for k, v in build("contrastive").update(site_minibatches()).items()}
    assert stats["loss"] == pytest.approx(stats["ce"] + stats["contrastive"], rel=1e-5)
    assert stats["contrastive"] > 0


def test_projection_head_only_where_used():
    assert build("contrastive").net.has_projection
    assert not build("sepnorm").net.has_projection


def test_single_keeps_site_networks_independent():
    """Site 0's network ends the same whatever site 1's batch was (clipping included)."""
    a, b = build("single"), build("single")
    batches = site_minibatches()
    other = [batches[0], (batches[1][0] * 5.0, 1 - batches[1][1])]
    for _ in range(2):
        a.update(batches)
        b.update(other)
    assert all(torch.equal(p, q) for p, q in zip(a.nets[0].parameters(), b.nets[0].parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(a.nets[1].parameters(), b.nets[1].parameters()))


def test_non_finite_loss_never_reaches_the_weights_and_is_reported():
    method = build("joint")
    method.update(site_minibatches())
    assert method.divergence() is None
    before = [p.detach().clone() for p in method.parameters()]
    adam_steps = [s["step"].clone() for s in method.optimizer.state.values()]
    method.step(method.loss(site_minibatches())[0] * float("nan"))
    assert method.divergence()[0] == 2 and math.isnan(method.divergence()[1])
    # from then on every update is skipped, good losses included: the weights stay the last good ones
    method.update(site_minibatches(seed=1))
    assert all(torch.equal(a, b) for a, b in zip(before, method.parameters()))
    assert all(torch.equal(a, s["step"]) for a, s in zip(adam_steps, method.optimizer.state.values()))
    assert method.divergence()[0] == 2


def test_non_finite_gradient_is_caught_like_a_non_finite_loss():
    method = build("joint")
    loss = method.loss(site_minibatches())[0]
    before = [p.detach().clone() for p in method.parameters()]
    weight = next(method.parameters())
    weight.register_hook(lambda g: g * float("inf"))
    method.step(loss)
    assert method.divergence() is not None and math.isfinite(method.divergence()[1])
    assert all(torch.equal(a, b) for a, b in zip(before, method.parameters()))


def test_unknown_method_is_a_clear_error():
    with pytest.raises(CrossSiteError, match="unknown method 'nope'"):
        create_method("nope", 2, TrainConfig())
