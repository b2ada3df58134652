"""SepNorm: one shared network whose every batch norm is site-specific (own statistics and affine)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from ..models.contract import BATCH_NORM
from ..models.site_bn import convert_to_site_bn, use_site, use_sites
from .base import Method, Minibatches, present
from .registry import register


@register("sepnorm")
class SepNorm(Method):
    needs = frozenset({BATCH_NORM})
    projection = False

    def __init__(self, num_sites, config):
        super().__init__(num_sites, config)
        self.net = convert_to_site_bn(self.make_backbone(projection=self.projection), num_sites)
        self._finish_init()

    @contextlib.contextmanager
    def all_sites(self, minibatches: Minibatches) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(images, labels) of every site present, concatenated in site order; inside the block the network
        runs them in one pass, each row through its own site's batch norms (and other per-site layers).

        One pass instead of one per site: the shared layers run once on twice the rows, and a training
        step dispatches about half as many operations (what bounds a GPU step at this batch size).
        """
        batches = present(minibatches)
        with use_sites(self.net, [(site, len(x)) for site, x, _ in batches]):
            yield torch.cat([x for _, x, _ in batches]), torch.cat([y for _, _, y in batches])

    def loss(self, minibatches: Minibatches) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        with self.all_sites(minibatches) as (x, y):
            loss = F.cross_entropy(self.net(x), y)
        return loss, {"loss": loss.detach()}

    def predict(self, x, site):
        self.check_site(site)
        with self.site_scope(site):
            return self.net(x)

    def site_scope(self, site):
        return use_site(self.net, site)
