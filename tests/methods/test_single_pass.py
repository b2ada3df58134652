"""One pass for all sites computes what one pass per site computed: outputs, gradients, running statistics."""

import pytest
import torch
import torch.nn.functional as F

from conftest import site_minibatches

from crosssite.config import TrainConfig
from crosssite.distributed import make_update
from crosssite.losses import supervised_nt_xent
from crosssite.methods import METHODS, create_method
from crosssite.models.site_bn import SiteSpecific, use_site
from crosssite.opcount import count_ops

SMALL = dict(image_size=64, width=0.25, batch_per_site=4, lr=1e-3)
#: the registered methods with site-specific layers in one shared network (single has a network per site)
ONE_NETWORK_SITE_SPECIFIC = [name for name, cls in METHODS.items() if not cls.independent_sites and any(
    isinstance(m, SiteSpecific) for m in create_method(name, 2, TrainConfig(method=name, **SMALL)).modules())]


def build(name):
    """The method with every site's own parameters drawn apart, so that a mix-up of sites would show."""
    torch.manual_seed(0)
    method = create_method(name, 2, TrainConfig(method=name, **SMALL)).train()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in [m for m in method.modules() if isinstance(m, SiteSpecific)]:
            for site, copy in enumerate(layer.site_copies()):
                for p in copy.parameters():
                    p.add_(0.1 * (site + 1) * torch.randn(p.shape, generator=g))
    return method


def heads(net):
    """Every head a method trains on the embedding."""
    found = [net.classify]
    if net.has_projection:
        found.append(net.project)
    if hasattr(net, "aux_classifier"):
        found.append(net.aux_classifier)
    return found


def per_site_outputs(method, minibatches):
    """Today's reference: one pass per site, each inside use_site; outputs concatenated in site order."""
    net, parts = method.net, []
    for site, batch in enumerate(minibatches):
        if batch is not None:
            with use_site(net, site):
                emb = net.features(batch[0])
                parts.append([emb] + [head(emb) for head in heads(net)])
    return [torch.cat(p) for p in zip(*parts)]


def single_pass_outputs(method, minibatches):
    with method.all_sites(minibatches) as (x, _):
        emb = method.net.features(x)
        return [emb] + [head(emb) for head in heads(method.net)]


def run(method, outputs_of, minibatches):
    """Outputs, the gradients of a fixed random function of them, and every buffer afterwards."""
    outputs = outputs_of(method, minibatches)
    g = torch.Generator().manual_seed(3)
    sum(torch.sum(o * torch.randn(o.shape, generator=g)) for o in outputs).backward()
    grads = {k: p.grad for k, p in method.named_parameters() if p.grad is not None}
    return outputs, grads, {k: b.clone() for k, b in method.named_buffers()}


@pytest.mark.parametrize("sites", [(0, 1), (1,)])
@pytest.mark.parametrize("name", ONE_NETWORK_SITE_SPECIFIC)
def test_single_pass_equals_one_pass_per_site(name, sites):
    minibatches = site_minibatches(seed=2, scale=1.0, sites=sites)
    ref_out, ref_grads, ref_buffers = run(build(name), per_site_outputs, minibatches)
    out, grads, buffers = run(build(name), single_pass_outputs, minibatches)
    for a, b in zip(out, ref_out):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert grads.keys() == ref_grads.keys()
    largest = max(g.abs().max().item() for g in ref_grads.values())
    for k in grads:
        # float rounding relative to the largest entry (sums over many rows in another order); a bias just
        # before a batch norm has a gradient of zero up to the rounding of the whole network's sums, which
        # depends on the thread count: hence a term relative to the network's largest gradient
        scale = ref_grads[k].abs().max().item()
        torch.testing.assert_close(grads[k], ref_grads[k], rtol=1e-3, atol=1e-5 * scale + 1e-5 * largest + 1e-4,
                                   msg=k)
    assert buffers.keys() == ref_buffers.keys()
    for k in buffers:  # running statistics and batch counts of every site's copies
        torch.testing.assert_close(buffers[k], ref_buffers[k], rtol=1e-4, atol=1e-6, msg=k)


def test_contrastive_loss_is_the_papers_loss_on_the_per_site_outputs():
    minibatches = site_minibatches(seed=2, scale=1.0)
    method = build("contrastive")
    _, logits, projections = per_site_outputs(method, minibatches)
    labels = torch.cat([y for _, y in minibatches])
    expected = F.cross_entropy(logits, labels) + supervised_nt_xent(projections, labels, method.config.temperature)
    loss, stats = build("contrastive").loss(minibatches)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    assert set(stats) == {"loss", "ce", "contrastive"}


def steady_step_ops(name):
    torch.manual_seed(0)
    method = create_method(name, 2, TrainConfig(method=name, image_size=64, width=0.25))
    update = make_update(method)
    minibatches = site_minibatches(n=16)
    update(minibatches)  # the first step also creates Adam's state
    return count_ops(lambda: update(minibatches)).total


def test_a_contrastive_step_dispatches_about_as_few_operations_as_joint():
    # one pass per site dispatched 3,696 (contrastive) against 1,774 (joint) operations (issue 11)
    contrastive, joint = steady_step_ops("contrastive"), steady_step_ops("joint")
    assert contrastive <= 1900
    assert contrastive < 1.2 * joint


def test_the_one_network_methods_are_found():
    assert {"sepnorm", "contrastive", "ms-net"} <= set(ONE_NETWORK_SITE_SPECIFIC)
    assert not {"single", "joint"} & set(ONE_NETWORK_SITE_SPECIFIC)
