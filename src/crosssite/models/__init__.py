"""Backbone registry: ``create_model(name, **kwargs)``; each backbone meets `contract.Backbone`."""

from __future__ import annotations

from typing import Callable

import torch.nn as nn

from .contract import BATCH_NORM, CAPABILITY_NAMES, PEPX_BLOCKS, PROJECTION, Backbone
from .covidnet import COVIDNet
from .site_bn import SiteBatchNorm, SiteSpecific, convert_to_site_bn, num_sites, set_site, use_site, use_sites


def _covidnet(**kwargs) -> nn.Module:
    return COVIDNet(redesign=False, **kwargs)


def _covidnet_redesign(**kwargs) -> nn.Module:
    return COVIDNet(redesign=True, **kwargs)


MODELS: dict[str, Callable[..., nn.Module]] = {}
#: what each registered backbone offers beyond the contract (crosssite.models.contract)
CAPABILITIES: dict[str, frozenset[str]] = {}


def register_backbone(name: str, factory: Callable[..., nn.Module], capabilities=()) -> None:
    """Offer `factory`'s networks as backbone `name` (for --backbone and every method whose needs it meets)."""
    unknown = set(capabilities) - set(CAPABILITY_NAMES)
    if unknown:
        raise ValueError(f"unknown capabilities {sorted(unknown)}; known: {', '.join(CAPABILITY_NAMES)}")
    MODELS[name] = factory
    CAPABILITIES[name] = frozenset(capabilities)


def unregister_backbone(name: str) -> None:
    del MODELS[name], CAPABILITIES[name]


register_backbone("covidnet", _covidnet)  # no batch norm, no projection head
register_backbone("covidnet-redesign", _covidnet_redesign, (BATCH_NORM, PROJECTION, PEPX_BLOCKS))


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model; unknown names raise ValueError listing the known ones."""
    try:
        factory = MODELS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}") from None
    return factory(**kwargs)


__all__ = [
    "CAPABILITIES",
    "Backbone",
    "COVIDNet",
    "MODELS",
    "SiteBatchNorm",
    "SiteSpecific",
    "convert_to_site_bn",
    "create_model",
    "num_sites",
    "register_backbone",
    "set_site",
    "unregister_backbone",
    "use_site",
    "use_sites",
]
