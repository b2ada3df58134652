"""Joint baseline: one network and one set of batch norms for all sites, batches pooled."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Method, Minibatches, present
from .registry import register


@register("joint")
class Joint(Method):

    def __init__(self, num_sites, config):
        super().__init__(num_sites, config)
        self.net = self.make_backbone()
        self._finish_init()

    def loss(self, minibatches: Minibatches) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        batches = present(minibatches)
        x = torch.cat([x for _, x, _ in batches])
        y = torch.cat([y for _, _, y in batches])
        loss = F.cross_entropy(self.net(x), y)
        return loss, {"loss": loss.detach()}

    def predict(self, x, site):
        self.check_site(site)
        return self.net(x)
