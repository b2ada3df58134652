"""The paper's method: SepNorm plus a supervised NT-Xent loss across sites (Wang, Liu & Dou 2020, eq. 3-5)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..distributed import gather
from ..losses import supervised_nt_xent
from ..models.contract import PROJECTION
from .base import Minibatches
from .registry import register
from .sepnorm import SepNorm


@register("contrastive")
class Contrastive(SepNorm):
    needs = SepNorm.needs | {PROJECTION}
    projection = True

    def loss(self, minibatches: Minibatches) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        with self.all_sites(minibatches) as (x, labels):
            emb = self.net.features(x)
            logits = self.net.classify(emb)
            projections = self.net.project(emb)  # the projection head's batch norms are site-specific too
        ce = F.cross_entropy(logits, labels)
        contrast = self.contrastive_term(projections, labels)
        loss = ce + self.config.alpha * contrast
        return loss, {"loss": loss.detach(), "ce": ce.detach(), "contrastive": contrast.detach()}

    def contrastive_term(self, projections: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The supervised NT-Xent of the step's projections (crosssite.federated adds other sites' class means)."""
        # under torchrun each process holds part of the batch: the loss compares the whole global batch
        return supervised_nt_xent(gather(projections), gather(labels), self.config.temperature)
