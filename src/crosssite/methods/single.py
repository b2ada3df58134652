"""Single-site baseline: one independent network per site, each trained only on its own site."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import Method, Minibatches, present
from .registry import register


@register("single")
class Single(Method):
    independent_sites = True

    def __init__(self, num_sites, config):
        super().__init__(num_sites, config)
        self.nets = nn.ModuleList(self.make_backbone() for _ in range(num_sites))
        self._finish_init()

    def clip_groups(self):
        # each site's network is clipped on its own so the networks stay independent
        return [list(net.parameters()) for net in self.nets]

    def loss(self, minibatches: Minibatches) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        losses = [F.cross_entropy(self.nets[site](x), y) for site, x, y in present(minibatches)]
        loss = sum(losses)
        return loss, {"loss": loss.detach() / len(losses)}

    def predict(self, x, site):
        self.check_site(site)
        return self.nets[site](x)

    def network(self, site):
        self.check_site(site)
        return self.nets[site]
