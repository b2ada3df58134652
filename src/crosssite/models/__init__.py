"""Model registry: ``create_model(name, **kwargs)``."""

from __future__ import annotations

from typing import Callable

import torch.nn as nn

from .covidnet import COVIDNet
from .site_bn import SiteBatchNorm, SiteSpecific, convert_to_site_bn, num_sites, set_site, use_site, use_sites


def _covidnet(**kwargs) -> nn.Module:
    return COVIDNet(redesign=False, **kwargs)


def _covidnet_redesign(**kwargs) -> nn.Module:
    return COVIDNet(redesign=True, **kwargs)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "covidnet": _covidnet,
    "covidnet-redesign": _covidnet_redesign,
}


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model; unknown names raise ValueError listing the known ones."""
    try:
        factory = MODELS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}") from None
    return factory(**kwargs)


__all__ = [
    "COVIDNet",
    "MODELS",
    "SiteBatchNorm",
    "SiteSpecific",
    "convert_to_site_bn",
    "create_model",
    "num_sites",
    "set_site",
    "use_site",
    "use_sites",
]
