"""SepNorm: one shared network whose every batch norm is site-specific (own statistics and affine)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..models.site_bn import convert_to_site_bn, use_site
from .base import Method, Minibatches, present
from .registry import register


@register("sepnorm")
class SepNorm(Method):
    projection = False

    def __init__(self, num_sites, config):
        super().__init__(num_sites, config)
        self.net = convert_to_site_bn(self.make_backbone(projection=self.projection), num_sites)
        self._finish_init()

    def site_forward(self, minibatches: Minibatches) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
        """(site, embeddings, logits) per site present, each site through its own batch norms."""
        outputs = []
        for site, x, _ in present(minibatches):
            with use_site(self.net, site):
                emb = self.net.features(x)
                outputs.append((site, emb, self.net.classify(emb)))
        return outputs

    def loss(self, minibatches: Minibatches) -> tuple[torch.Tensor, dict[str, float]]:
        logits = [out for _, _, out in self.site_forward(minibatches)]
        loss = F.cross_entropy(torch.cat(logits), torch.cat([y for _, _, y in present(minibatches)]))
        return loss, {"loss": loss.item()}

    def predict(self, x, site):
        self.check_site(site)
        with self.site_scope(site):
            return self.net(x)

    def site_scope(self, site):
        return use_site(self.net, site)
