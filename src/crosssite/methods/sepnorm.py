"""SepNorm: one shared network whose every batch norm is site-specific (own statistics and affine)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..models.site_bn import convert_to_site_bn, use_site
from .base import Method, Minibatches
from .registry import register


@register("sepnorm")
class SepNorm(Method):
    projection = False

    def __init__(self, num_sites, config):
        super().__init__(num_sites, config)
        self.net = convert_to_site_bn(self.make_backbone(projection=self.projection), num_sites)
        self._finish_init()

    def site_forward(self, minibatches: Minibatches) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Embeddings and logits per site, each site through its own batch norms."""
        embeddings, logits = [], []
        for site, (x, _) in enumerate(minibatches):
            with use_site(self.net, site):
                emb = self.net.features(x)
                embeddings.append(emb)
                logits.append(self.net.classify(emb))
        return embeddings, logits

    def update(self, minibatches: Minibatches) -> dict[str, float]:
        _, logits = self.site_forward(minibatches)
        loss = F.cross_entropy(torch.cat(logits), torch.cat([y for _, y in minibatches]))
        self.step(loss)
        return {"loss": loss.item()}

    def predict(self, x, site):
        self.check_site(site)
        with use_site(self.net, site):
            return self.net(x)
