"""Site-specific batch normalisation, usable with any model.

``convert_to_site_bn(model, n)`` swaps every batch-norm layer for a
:class:`SiteBatchNorm` holding ``n`` independent copies (own running
statistics, own affine parameters); ``use_site(model, i)`` selects which copy
every such layer uses; ``add_site(model)`` adds a copy for a site seen only
after training. All other parameters stay shared between sites.
``use_sites(model, [(site, rows), ...])`` runs several sites in one pass: the
batch holds each site's rows one after the other, and every site-specific layer
gives each site's rows to that site's copy (the same calls, statistics and
running buffers as one pass per site, with the shared layers run once).

The selection mechanism belongs to :class:`SiteSpecific`, the base of every
layer that keeps one copy of something per site (batch norms here, adapters
and heads in :mod:`crosssite.models.adapters`): one ``use_site`` switches them all.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn as nn
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

NO_SITE_MESSAGE = "no site selected: wrap the call in use_site(model, i)"


class SiteSpecific(nn.Module):
    """Base of layers holding one copy of their weights per site; forward uses the active site's.

    Subclasses put the copies in an ``nn.ModuleList`` returned by :meth:`site_copies`
    and call :meth:`run_copies` in ``forward``; :func:`use_site` selects the site,
    :func:`use_sites` a batch of several sites' rows.
    """

    active_site: int | None = None
    #: under `use_sites`: (site of each block of rows, rows per block), blocks in batch order
    site_rows: tuple[tuple[int, ...], tuple[int, ...]] | None = None

    def site_copies(self) -> nn.ModuleList:
        raise NotImplementedError

    @property
    def num_sites(self) -> int:
        return len(self.site_copies())

    def set_site(self, site: int | None) -> None:
        if site is not None:
            _check_site(site, self.num_sites)
        self.active_site = site
        self.site_rows = None

    def active(self) -> nn.Module:
        """The active site's copy; running without a selected site is an error, never a silent default."""
        if self.active_site is None:
            raise RuntimeError(NO_SITE_MESSAGE)
        return self.site_copies()[self.active_site]

    def run_copies(self, x: Tensor) -> Tensor:
        """The active site's copy on `x`; under `use_sites`, each site's copy on its own block of rows."""
        if self.site_rows is None:
            return self.active()(x)
        sites, rows = self.site_rows
        copies = self.site_copies()
        return torch.cat([copies[site](part) for site, part in zip(sites, x.split(rows))])

    def extra_repr(self) -> str:
        return f"num_sites={self.num_sites}, active_site={self.active_site}"


class SiteBatchNorm(SiteSpecific):
    """One BN (own running stats + own affine) per site; forward uses the active site's."""

    def __init__(self, bn: _BatchNorm, num_sites: int):
        super().__init__()
        if not isinstance(bn, _BatchNorm):
            raise TypeError(f"SiteBatchNorm wraps a batch-norm layer, got {type(bn).__name__}")
        _check_num_sites(num_sites)
        self.bns = nn.ModuleList(copy.deepcopy(bn) for _ in range(num_sites))

    def site_copies(self) -> nn.ModuleList:
        return self.bns

    def forward(self, x: Tensor) -> Tensor:
        return self.run_copies(x)


def _check_num_sites(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"num_sites must be a positive int, got {n!r}")


def _check_site(site: int, n: int) -> None:
    if isinstance(site, bool) or not isinstance(site, int):
        raise TypeError(f"site must be an int index, got {site!r}")
    if not 0 <= site < n:
        raise IndexError(f"site {site} out of range: this model has {n} sites (0..{n - 1})")


def _site_layers(model: nn.Module) -> list[SiteSpecific]:
    return [m for m in model.modules() if isinstance(m, SiteSpecific)]


def convert_to_site_bn(model: nn.Module, num_sites: int) -> nn.Module:
    """Replace every batch-norm layer of ``model`` (recursively, in place) by a SiteBatchNorm.

    Each site's copy starts from the original layer's parameters and running
    statistics. Returns ``model`` (or, when ``model`` itself is a batch-norm
    layer, the new SiteBatchNorm). Converting an already converted model with
    the same ``num_sites`` is a no-op; a different ``num_sites`` is a ValueError.
    """
    _check_num_sites(num_sites)
    if isinstance(model, SiteSpecific):
        existing = [model]
    else:
        existing = _site_layers(model)
    if existing:
        counts = {m.num_sites for m in existing}
        if counts != {num_sites}:
            raise ValueError(
                f"model already has site-specific layers for {sorted(counts)} sites; cannot convert to {num_sites}"
            )
    if isinstance(model, SiteSpecific):
        return model
    if isinstance(model, _BatchNorm):
        return SiteBatchNorm(model, num_sites)
    _convert_children(model, num_sites)
    return model


def _convert_children(module: nn.Module, num_sites: int) -> None:
    for name, child in list(module.named_children()):
        if isinstance(child, SiteSpecific):  # already one copy per site (its own BNs included)
            continue
        if isinstance(child, _BatchNorm):
            setattr(module, name, SiteBatchNorm(child, num_sites))
        else:
            _convert_children(child, num_sites)


def set_site(model: nn.Module, site: int | None) -> None:
    """Select ``site`` on every site-specific layer of ``model`` (None: deselect).

    Selecting a site on a model without site batch norm is a ValueError
    (forgotten :func:`convert_to_site_bn`); ``None`` is always accepted.
    """
    layers = _site_layers(model)
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
    layers = _site_layers(model)
    previous = [(m.active_site, m.site_rows) for m in layers]
    set_site(model, site)
    try:
        yield model
    finally:
        for m, (prev, rows) in zip(layers, previous):
            m.active_site, m.site_rows = prev, rows


@contextmanager
def use_sites(model: nn.Module, blocks: list[tuple[int, int]]) -> Iterator[nn.Module]:
    """For the ``with`` block, run a batch made of several sites' rows: ``blocks`` lists (site, rows)
    in batch order, and each site-specific layer passes each block to that site's copy."""
    layers = _site_layers(model)
    if not layers:
        raise ValueError("model has no site batch norm layers: call convert_to_site_bn(model, n) first")
    sites = tuple(site for site, _ in blocks)
    rows = tuple(int(n) for _, n in blocks)
    for site in sites:
        _check_site(site, min(m.num_sites for m in layers))
    if not sites or len(set(sites)) != len(sites) or min(rows) < 1:
        raise ValueError(f"use_sites needs distinct sites with at least one row each, got {blocks}")
    previous = [(m.active_site, m.site_rows) for m in layers]
    for m in layers:
        m.active_site, m.site_rows = None, (sites, rows)
    try:
        yield model
    finally:
        for m, (site, site_rows) in zip(layers, previous):
            m.active_site, m.site_rows = site, site_rows


def add_site(model: nn.Module) -> int:
    """Grow every SiteBatchNorm of ``model`` by one site; return the new site's index.

    The new copy has fresh running statistics (mean 0, variance 1, no batches counted; estimate them
    with AdaBN, see crosssite.adapt) and, as the only choice that favours no known site, affine weight
    and bias equal to the mean of the existing sites'. A model without site batch norm, or with other
    site-specific layers (which unlabelled images cannot fit), is a ValueError.
    """
    layers = _site_layers(model)
    if not layers:
        raise ValueError("model has no site batch norm layers: call convert_to_site_bn(model, n) first")
    others = sorted({type(m).__name__ for m in layers if not isinstance(m, SiteBatchNorm)})
    if others:
        raise ValueError(f"model has site-specific {', '.join(others)} layers besides batch norm; "
                         "only batch norm can be fitted to a new site without labels")
    for m in layers:
        new = copy.deepcopy(m.bns[0])
        new.reset_running_stats()
        if new.affine:
            with torch.no_grad():
                new.weight.copy_(torch.stack([bn.weight for bn in m.bns]).mean(0))
                new.bias.copy_(torch.stack([bn.bias for bn in m.bns]).mean(0))
        m.bns.append(new)
    return num_sites(model) - 1


def num_sites(model: nn.Module) -> int:
    """Number of sites of a converted model; 0 if it has no site-specific layer."""
    layers = _site_layers(model)
    return min(m.num_sites for m in layers) if layers else 0
