import pytest
import torch
import torch.nn as nn

from crosssite.models import COVIDNet, SiteBatchNorm, convert_to_site_bn, num_sites, set_site, use_site


def tiny_conv():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1), nn.BatchNorm2d(2))


def site_layers(model):
    return [m for m in model.modules() if isinstance(m, SiteBatchNorm)]


def test_convert_replaces_every_bn_recursively():
    torch.manual_seed(0)
    model = COVIDNet(redesign=True, width=0.125, image_size=32)
    n_bn = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert n_bn == 5 + 4  # stem + 4 upper branches, 2 in classifier, 2 in projection
    assert num_sites(model) == 0
    out = convert_to_site_bn(model, 3)
    assert out is model
    layers = site_layers(model)
    assert len(layers) == n_bn and num_sites(model) == 3
    # no bare BN outside SiteBatchNorm copies
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            assert ".bns." in name
    assert all(len(layer.bns) == 3 for layer in layers)
    # converting again with the same count is a no-op; another count is refused
    assert len(site_layers(convert_to_site_bn(model, 3))) == n_bn
    with pytest.raises(ValueError):
        convert_to_site_bn(model, 2)


def test_copies_start_equal_but_are_independent():
    model = tiny_conv()
    model[1].weight.data.fill_(2.0)
    model[1].running_mean.fill_(0.5)
    convert_to_site_bn(model, 2)
    bn0, bn1 = model[1].bns
    assert torch.equal(bn0.weight, bn1.weight) and torch.equal(bn0.running_mean, bn1.running_mean)
    assert bn0.weight is not bn1.weight and bn0.running_mean is not bn1.running_mean


def test_train_updates_only_active_site_stats_and_grads():
    model = convert_to_site_bn(tiny_conv(), 2).train()
    before = [[bn.running_mean.clone() for bn in layer.bns] for layer in site_layers(model)]
    x = torch.randn(8, 3, 6, 6) * 3 + 1
    with use_site(model, 0):
        model(x).pow(2).mean().backward()
    for layer, prev in zip(site_layers(model), before):
        assert not torch.equal(layer.bns[0].running_mean, prev[0])
        assert torch.equal(layer.bns[1].running_mean, prev[1])
        assert layer.bns[1].num_batches_tracked.item() == 0
        assert layer.bns[0].weight.grad is not None and layer.bns[0].weight.grad.abs().sum() > 0
        for p in (layer.bns[1].weight, layer.bns[1].bias):
            assert p.grad is None or torch.all(p.grad == 0)
    # shared (non-BN) parameters get gradients
    assert model[0].weight.grad is not None


def test_eval_outputs_differ_between_sites():
    model = convert_to_site_bn(tiny_conv(), 2).train()
    with torch.no_grad():
        for _ in range(5):
            with use_site(model, 0):
                model(torch.randn(8, 3, 6, 6))
            with use_site(model, 1):
                model(torch.randn(8, 3, 6, 6) * 4 + 3)
    model.eval()
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad(), use_site(model, 0):
        y0 = model(x)
    with torch.no_grad(), use_site(model, 1):
        y1 = model(x)
    assert not torch.allclose(y0, y1)


def test_no_site_selected_raises_and_use_site_restores():
    model = convert_to_site_bn(tiny_conv(), 2)
    x = torch.randn(2, 3, 6, 6)
    with pytest.raises(RuntimeError, match="no site selected"):
        model(x)
    with use_site(model, 1):
        assert all(layer.active_site == 1 for layer in site_layers(model))
        with use_site(model, 0):
            assert all(layer.active_site == 0 for layer in site_layers(model))
        assert all(layer.active_site == 1 for layer in site_layers(model))
    assert all(layer.active_site is None for layer in site_layers(model))
    with pytest.raises(RuntimeError):
        model(x)
    set_site(model, 1)
    model(x)
    set_site(model, None)
    with pytest.raises(RuntimeError):
        model(x)


def test_site_out_of_range():
    model = convert_to_site_bn(tiny_conv(), 2)
    with pytest.raises(IndexError, match="0..1"):
        set_site(model, 2)
    with pytest.raises(IndexError):
        with use_site(model, -1):
            pass
    assert all(layer.active_site is None for layer in site_layers(model))


def test_set_site_on_unconverted_model():
    with pytest.raises(ValueError, match="convert_to_site_bn"):
        set_site(tiny_conv(), 0)


def test_batchnorm1d_sequential():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3))
    convert_to_site_bn(model, 2)
    assert isinstance(model[1], SiteBatchNorm)
    assert all(isinstance(bn, nn.BatchNorm1d) for bn in model[1].bns)
    model.train()
    with use_site(model, 1):
        model(torch.randn(10, 5) + 2)
    assert torch.equal(model[1].bns[0].running_mean, torch.zeros(6))
    assert not torch.equal(model[1].bns[1].running_mean, torch.zeros(6))


def test_state_dict_roundtrip():
    a = convert_to_site_bn(tiny_conv(), 2).train()
    with torch.no_grad(), use_site(a, 1):
        a(torch.randn(4, 3, 6, 6) + 1)
    b = convert_to_site_bn(tiny_conv(), 2)
    b.load_state_dict(a.state_dict())
    assert torch.equal(b[1].bns[1].running_mean, a[1].bns[1].running_mean)


def test_add_site_grows_every_layer_with_mean_affine_and_fresh_statistics():
    import torch
    from torch import nn

    from crosssite.models.site_bn import add_site, convert_to_site_bn, num_sites, use_site

    model = convert_to_site_bn(nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)), 2)
    bns = model[1].bns
    with torch.no_grad():
        bns[0].weight.fill_(1.0)
        bns[1].weight.fill_(3.0)
        bns[0].running_mean.fill_(5.0)
    assert add_site(model) == 2 and num_sites(model) == 3
    assert torch.equal(bns[2].weight, torch.full((4,), 2.0)) and torch.equal(bns[2].running_mean, torch.zeros(4))
    assert torch.equal(bns[0].running_mean, torch.full((4,), 5.0))  # old sites untouched
    with use_site(model, 2):
        assert model(torch.randn(2, 3, 5, 5)).shape == (2, 4, 5, 5)
    with pytest.raises(ValueError, match="no site batch norm"):
        add_site(nn.Sequential(nn.Conv2d(3, 4, 1)))
