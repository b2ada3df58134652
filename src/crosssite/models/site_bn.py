"""Site-specific batch normalisation, usable with any model.

``convert_to_site_bn(model, n)`` swaps every batch-norm layer for a
:class:`SiteBatchNorm` holding ``n`` independent copies (own running
statistics, own affine parameters); ``use_site(model, i)`` selects which copy
every such layer uses. All other parameters stay shared between sites.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Iterator

import torch.nn as nn
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

NO_SITE_MESSAGE = "no site selected: wrap the call in use_site(model, i)"


class SiteBatchNorm(nn.Module):
    """One BN (own running stats + own affine) per site; forward uses the active site's."""

    def __init__(self, bn: _BatchNorm, num_sites: int):
        super().__init__()
        if not isinstance(bn, _BatchNorm):
            raise TypeError(f"SiteBatchNorm wraps a batch-norm layer, got {type(bn).__name__}")
        _check_num_sites(num_sites)
        self.bns = nn.ModuleList(copy.deepcopy(bn) for _ in range(num_sites))
        self.active_site: int | None = None

    @property
    def num_sites(self) -> int:
        return len(self.bns)

    def set_site(self, site: int | None) -> None:
        if site is not None:
            _check_site(site, self.num_sites)
        self.active_site = site

    def forward(self, x: Tensor) -> Tensor:
        if self.active_site is None:
            raise RuntimeError(NO_SITE_MESSAGE)
        return self.bns[self.active_site](x)

    def extra_repr(self) -> str:
        return f"num_sites={self.num_sites}, active_site={self.active_site}"


def _check_num_sites(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"num_sites must be a positive int, got {n!r}")


def _check_site(site: int, n: int) -> None:
    if isinstance(site, bool) or not isinstance(site, int):
        raise TypeError(f"site must be an int index, got {site!r}")
    if not 0 <= site < n:
        raise IndexError(f"site {site} out of range: this model has {n} sites (0..{n - 1})")


def _site_bns(model: nn.Module) -> list[SiteBatchNorm]:
    return [m for m in model.modules() if isinstance(m, SiteBatchNorm)]


def convert_to_site_bn(model: nn.Module, num_sites: int) -> nn.Module:
    """Replace every batch-norm layer of ``model`` (recursively, in place) by a SiteBatchNorm.

    Each site's copy starts from the original layer's parameters and running
    statistics. Returns ``model`` (or, when ``model`` itself is a batch-norm
    layer, the new SiteBatchNorm). Converting an already converted model with
    the same ``num_sites`` is a no-op; a different ``num_sites`` is a ValueError.
    """
    _check_num_sites(num_sites)
    if isinstance(model, SiteBatchNorm):
        existing = [model]
    else:
        existing = _site_bns(model)
    if existing:
        counts = {m.num_sites for m in existing}
        if counts != {num_sites}:
            raise ValueError(
                f"model already has site batch norm for {sorted(counts)} sites; cannot convert to {num_sites}"
            )
    if isinstance(model, SiteBatchNorm):
        return model
    if isinstance(model, _BatchNorm):
        return SiteBatchNorm(model, num_sites)
    _convert_children(model, num_sites)
    return model


def _convert_children(module: nn.Module, num_sites: int) -> None:
    for name, child in list(module.named_children()):
        if isinstance(child, SiteBatchNorm):
            continue
        if isinstance(child, _BatchNorm):
            setattr(module, name, SiteBatchNorm(child, num_sites))
        else:
            _convert_children(child, num_sites)


def set_site(model: nn.Module, site: int | None) -> None:
    """Select ``site`` on every SiteBatchNorm of ``model`` (None: deselect).

    Selecting a site on a model without site batch norm is a ValueError
    (forgotten :func:`convert_to_site_bn`); ``None`` is always accepted.
    """
    layers = _site_bns(model)
    if site is None:
        for m in layers:
            m.set_site(None)
        return
    if not layers:
        raise ValueError("model has no site batch norm layers: call convert_to_site_bn(model, n) first")
    _check_site(site, min(m.num_sites for m in layers))
    for m in layers:
        m.set_site(site)


@contextmanager
def use_site(model: nn.Module, site: int) -> Iterator[nn.Module]:
    """Select ``site`` for the ``with`` block, then restore each layer's previous site."""
    layers = _site_bns(model)
    previous = [m.active_site for m in layers]
    set_site(model, site)
    try:
        yield model
    finally:
        for m, prev in zip(layers, previous):
            m.active_site = prev


def num_sites(model: nn.Module) -> int:
    """Number of sites of a converted model; 0 if it has no SiteBatchNorm."""
    layers = _site_bns(model)
    return min(m.num_sites for m in layers) if layers else 0
