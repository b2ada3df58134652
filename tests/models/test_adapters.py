"""Per-site adapters and heads: where they go, what they compute, and that sites stay apart."""

import copy

import pytest
import torch
import torch.nn as nn

from crosssite.models import COVIDNet, SiteBatchNorm, convert_to_site_bn, use_site
from crosssite.models.adapters import PerSite, SiteAdapter, add_site_adapters, fresh_copies, per_site_last_layer
from crosssite.models.covidnet import PEPX, STAGE_BLOCKS


def small_net():
    torch.manual_seed(0)
    return COVIDNet(redesign=True, width=0.125, image_size=32, projection=False)


def adapters_of(net):
    return [m for m in net.modules() if isinstance(m, SiteAdapter)]


@torch.no_grad()
def perturb(net, site):
    for a in adapters_of(net):
        for p in a.adapters[site].parameters():
            if p.dim() == 4:
                p.normal_(0.0, 0.1)


@pytest.mark.parametrize("placement", ["series", "parallel"])
def test_one_adapter_on_the_depthwise_conv_of_every_pepx_block(placement):
    net = add_site_adapters(small_net(), 2, placement)
    blocks = [m for m in net.modules() if isinstance(m, PEPX)]
    assert len(blocks) == sum(STAGE_BLOCKS) == len(adapters_of(net))
    for block in blocks:
        wrapped = block.network[2]
        assert isinstance(wrapped, SiteAdapter) and wrapped.placement == placement
        conv = wrapped.conv
        assert conv.kernel_size == (3, 3) and conv.groups == conv.in_channels == conv.out_channels
        # the other four convolutions stay plain shared 1x1 convolutions
        assert all(isinstance(c, nn.Conv2d) and c.kernel_size == (1, 1) for i, c in enumerate(block.network) if i != 2)
    with pytest.raises(ValueError, match="twice"):
        add_site_adapters(net, 2, placement)


def test_adapter_batch_norms_stay_plain_when_the_rest_is_converted():
    net = convert_to_site_bn(add_site_adapters(small_net(), 2, "series"), 2)
    for a in adapters_of(net):
        assert not any(isinstance(m, SiteBatchNorm) for m in a.modules())
        assert all(isinstance(ad[0], nn.BatchNorm2d) for ad in a.adapters)
    assert any(isinstance(m, SiteBatchNorm) for m in net.modules())  # stem, upper branches, dense head


@pytest.mark.parametrize("placement", ["series", "parallel"])
def test_adapter_computes_the_published_form(placement):
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 6, 3, padding=1, groups=6)
    layer = SiteAdapter(conv, 2, placement).eval()
    x = torch.randn(2, 6, 5, 5)
    with torch.no_grad(), use_site(layer, 1):
        assert torch.equal(layer(x), conv(x))  # zero-initialised adapter: the shared conv alone
        y = conv(x)
        if placement == "series":  # y + W_s(BN_s(y)), on the conv's output
            bn, w = layer.adapters[1][0], layer.adapters[1][1].weight
            w.normal_()
            expected = y + nn.functional.conv2d(bn(y), w)
        else:  # conv(x) + W_s(x), beside the conv
            w = layer.adapters[1].weight
            w.normal_()
            expected = y + nn.functional.conv2d(x, w)
        assert torch.allclose(layer(x), expected, atol=1e-6)
    with pytest.raises(RuntimeError, match="no site selected"):
        layer(x)
    with pytest.raises(ValueError, match="placement"):
        SiteAdapter(conv, 2, "diagonal")


@pytest.mark.parametrize("placement", ["series", "parallel"])
def test_network_starts_as_the_shared_one_and_sites_then_differ_only_through_their_adapters(placement):
    plain = convert_to_site_bn(small_net(), 2).eval()
    adapted = convert_to_site_bn(add_site_adapters(copy.deepcopy(small_net()), 2, placement), 2).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        outputs = {}
        for site in (0, 1):
            with use_site(plain, site):
                expected = plain(x)
            with use_site(adapted, site):
                outputs[site] = adapted(x)
            assert torch.allclose(outputs[site], expected, atol=1e-5)
        perturb(adapted, 1)
        with use_site(adapted, 0):
            assert torch.equal(adapted(x), outputs[0])
        with use_site(adapted, 1):
            assert not torch.allclose(adapted(x), outputs[1], atol=1e-4)


def test_per_site_last_layer_has_independent_heads():
    net = per_site_last_layer(small_net(), 2)
    head = net.classifier[-1]
    assert isinstance(head, PerSite) and len(head.copies) == 2
    a, b = head.copies
    assert isinstance(a, nn.Linear) and a.weight.shape == b.weight.shape
    assert not torch.equal(a.weight, b.weight)  # initialised separately
    net = convert_to_site_bn(net, 2).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad(), use_site(net, 0):
        y0 = net(x)
    with torch.no_grad(), use_site(net, 1):
        y1 = net(x)
    assert y0.shape == y1.shape == (2, 2) and not torch.allclose(y0, y1)


def test_fresh_copies_reinitialise_and_reset_statistics():
    torch.manual_seed(0)
    head = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    head[1].running_mean.fill_(5.0)
    copies = fresh_copies(head, 2)
    assert not torch.equal(copies[0][0].weight, head[0].weight)
    assert not torch.equal(copies[0][0].weight, copies[1][0].weight)
    assert torch.equal(copies[1][1].running_mean, torch.zeros(3))
    with pytest.raises(ValueError):
        PerSite([])
