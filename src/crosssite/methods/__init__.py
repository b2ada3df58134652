"""Training methods (one registry); importing this package registers all of them."""

from . import contrastive, joint, sepnorm, single  # noqa: F401  (register)
from .base import Method
from .registry import METHODS, create_method

__all__ = ["METHODS", "Method", "create_method"]
