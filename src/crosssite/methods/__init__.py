"""Training methods (one registry); importing this package registers all of them."""

# registration order = the order of the paper's Table I, used by listings such as `crosssite params`
from . import single, joint, sepnorm, contrastive, series_adapter, parallel_adapter, ms_net  # noqa: F401, I001
from .base import Method
from .registry import METHODS, check_method, create_method

__all__ = ["METHODS", "Method", "check_method", "create_method"]
