"""The paper's method: SepNorm plus a supervised NT-Xent loss across sites (Wang, Liu & Dou 2020, eq. 3-5)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..distributed import gather
from ..losses import supervised_nt_xent
from ..models.site_bn import use_site
from .base import Minibatches, present
from .registry import register
from .sepnorm import SepNorm


@register("contrastive")
class Contrastive(SepNorm):
    projection = True

    def loss(self, minibatches: Minibatches) -> tuple[torch.Tensor, dict[str, float]]:
        outputs = self.site_forward(minibatches)
        projections = []
        for site, emb, _ in outputs:
            with use_site(self.net, site):  # the projection head's batch norms are site-specific too
                projections.append(self.net.project(emb))
        labels = torch.cat([y for _, _, y in present(minibatches)])
        ce = F.cross_entropy(torch.cat([logits for _, _, logits in outputs]), labels)
        # under torchrun each process holds part of the batch: the loss compares the whole global batch
        contrast = supervised_nt_xent(gather(torch.cat(projections)), gather(labels), self.config.temperature)
        loss = ce + self.config.alpha * contrast
        return loss, {"loss": loss.item(), "ce": ce.item(), "contrastive": contrast.item()}
