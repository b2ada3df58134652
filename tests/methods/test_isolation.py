"""A step without a site's batch leaves every parameter and buffer that belongs only to that site alone."""

import pytest
import torch

from conftest import site_minibatches

from crosssite.config import TrainConfig
from crosssite.methods import METHODS, create_method
from crosssite.methods.params import count_parameters
from crosssite.models.site_bn import SiteSpecific

SMALL = dict(image_size=64, width=0.25, batch_per_site=4, lr=1e-3, weight_decay=1e-2)


def build(name):
    torch.manual_seed(0)
    return create_method(name, 2, TrainConfig(method=name, **SMALL))


def site_only_tensors(method, site):
    """Parameters and buffers (by state-dict name) of the modules that only `site` runs, cloned.

    Found from the structure, independently of crosssite.methods.params: a site's network
    (single) or a site's copy in every SiteSpecific layer (BNs, adapters, heads).
    """
    if hasattr(method, "nets"):
        owned = [method.nets[site]]
    else:
        owned = [m.site_copies()[site] for m in method.modules() if isinstance(m, SiteSpecific)]
    ids = {id(t) for module in owned for t in [*module.parameters(), *module.buffers()]}
    return {k: t.detach().clone() for k, t in method.state_dict(keep_vars=True).items() if id(t) in ids}


#: every registered method with tensors of its own per site, found from the structure
SITE_SPECIFIC = [name for name in METHODS if site_only_tensors(build(name), 0)]


def test_every_method_with_per_site_parameters_is_checked():
    """crosssite.methods.params measures per-site parameters another way (gradients of one-site steps):
    the two must agree on which methods have them, so a new method cannot slip past the checks below."""
    measured = {name for name in METHODS if any(count_parameters(name, TrainConfig(**SMALL)).per_site)}
    assert measured == set(SITE_SPECIFIC)
    assert "joint" not in SITE_SPECIFIC and "contrastive" in SITE_SPECIFIC


@pytest.mark.parametrize("trained, idle", [(0, 1), (1, 0)])
@pytest.mark.parametrize("name", SITE_SPECIFIC)
def test_step_without_a_site_leaves_its_tensors_unchanged(name, trained, idle):
    method = build(name)
    batches = site_minibatches(seed=1)
    method.update(batches)  # both sites: every parameter now has Adam moments that could keep moving it
    idle_before, trained_before = site_only_tensors(method, idle), site_only_tensors(method, trained)
    assert idle_before and any(k.endswith("running_mean") for k in idle_before)  # buffers are covered too
    method.update([batch if site == trained else None for site, batch in enumerate(batches)])
    idle_after, trained_after = site_only_tensors(method, idle), site_only_tensors(method, trained)
    changed = [k for k in idle_before if not torch.equal(idle_before[k], idle_after[k])]
    assert changed == []
    # the step did train the other site's own tensors, so the check above is not vacuous
    assert any(not torch.equal(trained_before[k], trained_after[k]) for k in trained_before)
