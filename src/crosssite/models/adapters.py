"""Per-site adapters and heads for COVID-Net, selected with ``use_site`` like site batch norm.

Residual adapters (Rebuffi, Bilen & Vedaldi, NeurIPS 2017 "series"; CVPR 2018
"parallel") keep every convolution shared and give each site a small 1x1
convolution next to it. In COVID-Net the spatial convolution of a PEPX block is
its depthwise 3x3 conv, so that is where :func:`add_site_adapters` attaches
them. Because that conv is depthwise (C weights of 3x3) while the adapter is a
full 1x1 conv (C x C weights), each site's adapter can outweigh the conv it
adapts; ``crosssite params`` reports what it costs.
"""

from __future__ import annotations

import copy
from typing import Iterable

import torch.nn as nn
from torch import Tensor

from .covidnet import PEPX
from .site_bn import SiteSpecific, _check_num_sites

PLACEMENTS = ("series", "parallel")


def fresh_copies(module: nn.Module, n: int) -> list[nn.Module]:
    """``n`` copies of ``module``, each re-initialised on its own so that sites do not start identical."""
    copies = []
    for _ in range(n):
        clone = copy.deepcopy(module)
        for m in clone.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()  # batch norms also reset their running statistics here
        copies.append(clone)
    return copies


class PerSite(SiteSpecific):
    """One independent module per site (e.g. a classifier head); forward runs the active site's."""

    def __init__(self, modules: Iterable[nn.Module]):
        super().__init__()
        self.copies = nn.ModuleList(modules)
        _check_num_sites(len(self.copies))

    def site_copies(self) -> nn.ModuleList:
        return self.copies

    def forward(self, x: Tensor) -> Tensor:
        return self.run_copies(x)


class SiteAdapter(SiteSpecific):
    """A shared convolution plus a per-site 1x1 residual adapter.

    ``series`` (Rebuffi et al. 2017): ``y = conv(x); out = y + W_s(BN_s(y))``.
    ``parallel`` (Rebuffi et al. 2018): ``out = conv(x) + W_s(x)``.
    Every ``W_s`` starts at zero, so at initialisation each site computes exactly the
    shared network (the backbone is trained from scratch here, not pre-trained, and
    a random 1x1 conv in every block would only perturb it).
    """

    def __init__(self, conv: nn.Conv2d, num_sites: int, placement: str):
        super().__init__()
        if placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {', '.join(PLACEMENTS)}, got {placement!r}")
        _check_num_sites(num_sites)
        self.conv = conv
        self.placement = placement
        self.adapters = nn.ModuleList(self._adapter() for _ in range(num_sites))

    def _adapter(self) -> nn.Module:
        c_in, c_out = self.conv.in_channels, self.conv.out_channels
        if self.placement == "series":
            w = nn.Conv2d(c_out, c_out, kernel_size=1, bias=False)
            adapter: nn.Module = nn.Sequential(nn.BatchNorm2d(c_out), w)
        else:
            w = adapter = nn.Conv2d(c_in, c_out, kernel_size=1, stride=self.conv.stride, bias=False)
        nn.init.zeros_(w.weight)
        return adapter

    def site_copies(self) -> nn.ModuleList:
        return self.adapters

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        return y + self.run_copies(y if self.placement == "series" else x)

    def extra_repr(self) -> str:
        return f"placement={self.placement}, " + super().extra_repr()


def _spatial_conv_index(block: PEPX) -> int:
    """Index of the block's only convolution that is not 1x1 (the depthwise 3x3)."""
    spatial = [i for i, conv in enumerate(block.network) if isinstance(conv, nn.Conv2d) and conv.kernel_size != (1, 1)]
    if len(spatial) != 1:
        raise ValueError("PEPX block has no plain spatial convolution left to adapt (adapters added twice?)")
    return spatial[0]


def add_site_adapters(model: nn.Module, num_sites: int, placement: str) -> nn.Module:
    """Wrap the depthwise 3x3 conv of every PEPX block of ``model`` in a :class:`SiteAdapter` (in place)."""
    blocks = [m for m in model.modules() if isinstance(m, PEPX)]
    if not blocks:
        raise ValueError("model has no PEPX blocks to put adapters in")
    for block in blocks:
        i = _spatial_conv_index(block)
        block.network[i] = SiteAdapter(block.network[i], num_sites, placement)
    return model


def per_site_last_layer(model: nn.Module, num_sites: int) -> nn.Module:
    """Give each site its own last linear layer of ``model.classifier`` (in place)."""
    last = model.classifier[-1]
    if not isinstance(last, nn.Linear):
        raise ValueError(f"the classifier's last layer is {type(last).__name__}, not Linear")
    model.classifier[-1] = PerSite(fresh_copies(last, num_sites))
    return model

