"""Series residual adapters (Rebuffi, Bilen & Vedaldi, NeurIPS 2017) on the redesigned COVID-Net.

SepNorm's network, plus in every PEPX block a per-site adapter after the shared
depthwise 3x3 conv (``y + W_s(BN_s(y))``) and a per-site last linear layer; training
and prediction are SepNorm's (each site's batch through its own BNs, adapters, head).
"""

from __future__ import annotations

from ..models.adapters import add_site_adapters, per_site_last_layer
from ..models.contract import PEPX_BLOCKS
from .registry import register
from .sepnorm import SepNorm


@register("series-adapter")
class SeriesAdapter(SepNorm):
    needs = SepNorm.needs | {PEPX_BLOCKS}
    placement = "series"

    def make_backbone(self, projection=False):
        net = super().make_backbone(projection)
        add_site_adapters(net, self.num_sites, self.placement)
        # remaining (plain) batch norms become site-specific in SepNorm.__init__
        return per_site_last_layer(net, self.num_sites)
