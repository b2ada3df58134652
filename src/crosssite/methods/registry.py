"""The registry of training methods, by the name used on the command line."""

from __future__ import annotations

from ..config import TrainConfig
from ..errors import CrossSiteError

METHODS: dict[str, type] = {}


def register(name: str):
    def add(cls):
        cls.name = name
        METHODS[name] = cls
        return cls

    return add


def check_method(name: str, backbone: str) -> None:
    """Refuse an unknown method, or a backbone it does not run on, before any data is read."""
    if name not in METHODS:
        raise CrossSiteError(f"unknown method {name!r}; known: {', '.join(METHODS)}")
    METHODS[name].check_backbone(backbone)


def create_method(name: str, num_sites: int, config: TrainConfig):
    check_method(name, config.backbone)
    return METHODS[name](num_sites, config)
