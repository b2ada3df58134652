"""MS-Net (Liu, Dou, Yu & Heng, IEEE TMI 2020) as a classifier on the redesigned COVID-Net.

One backbone with site-specific BN feeds a universal dense head (site-specific BN
too) and, per site, an auxiliary dense head of its own. Each auxiliary head learns
from its site's labels; the universal head learns from the labels and from the
auxiliary head of the image's site (multi-site-guided knowledge transfer), whose
softened prediction it matches under a KL divergence. Prediction: universal head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..models.adapters import PerSite, fresh_copies
from .base import Minibatches
from .registry import register
from .sepnorm import SepNorm


def soft_target_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(softmax(teacher/T) || softmax(student/T)) * T^2, batch mean (Hinton et al. 2015).

    The T^2 keeps the term's gradient scale independent of T. The teacher is detached:
    the transfer teaches the universal head, not the auxiliary one.
    """
    t = temperature
    return F.kl_div(
        F.log_softmax(student_logits / t, dim=1),
        F.softmax(teacher_logits.detach() / t, dim=1),
        reduction="batchmean",
    ) * (t * t)


@register("ms-net")
class MSNet(SepNorm):
    def make_backbone(self, projection=False):
        net = super().make_backbone(projection)
        # built before SepNorm converts the batch norms, so each auxiliary head keeps plain BNs:
        # it only ever sees its own site
        net.aux_classifier = PerSite(fresh_copies(net.classifier, self.num_sites))
        return net

    def loss(self, minibatches: Minibatches) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        with self.all_sites(minibatches) as (x, labels):
            emb = self.net.features(x)
            universal = self.net.classify(emb)
            auxiliary = self.net.aux_classifier(emb)  # each site's rows through that site's own head
        aux_ce = F.cross_entropy(auxiliary, labels)
        universal_ce = F.cross_entropy(universal, labels)
        transfer = soft_target_kl(universal, auxiliary, self.config.kd_temperature)
        w = self.config.kd_weight
        loss = aux_ce + (1 - w) * universal_ce + w * transfer
        return loss, {
            "loss": loss.detach(),
            "aux_ce": aux_ce.detach(),
            "universal_ce": universal_ce.detach(),
            "kd": transfer.detach(),
        }
