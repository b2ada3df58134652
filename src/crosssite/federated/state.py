"""What stays at a site and what is averaged: chosen by module type, never by parameter name.

Site-specific is every copy held by a `SiteSpecific` layer (site batch norms, adapters, per-site heads:
crosssite.models.site_bn / adapters), and the whole method where sites share nothing (`single`). The
rest of the state dict (weights, and plain batch norms' statistics for `joint`: FedAvg) is shared.
FedBN's code picks its local keys by the string 'bn' in their names; a type does not miss an adapter or
a head and does not catch a layer that happens to be called 'bn' but is shared.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..models.site_bn import SiteSpecific

State = dict[str, Tensor]


def site_prefixes(method: nn.Module) -> tuple[str, ...]:
    """State-dict key prefixes of every site-specific copy (the ModuleList a `SiteSpecific` layer holds)."""
    prefixes = []
    for name, module in method.named_modules():
        if isinstance(module, SiteSpecific):
            copies = module.site_copies()
            child = next(n for n, c in module.named_children() if c is copies)
            prefixes.append(f"{name}.{child}." if name else f"{child}.")
    return tuple(prefixes)


def local_keys(method: nn.Module) -> set[str]:
    """The state-dict keys that never leave the site."""
    keys = set(method.state_dict())
    if getattr(method, "independent_sites", False):
        return keys
    prefixes = site_prefixes(method)
    return {k for k in keys if k.startswith(prefixes)} if prefixes else set()


def shared_state(method: nn.Module) -> State:
    """Copies (on the CPU) of every state entry that is averaged across sites."""
    local = local_keys(method)
    return {k: v.detach().to("cpu", copy=True) for k, v in method.state_dict().items() if k not in local}


def for_transfer(state: State, dtype: str) -> State:
    """The state as a message carries it: floating tensors in `dtype` ("float32" or "float16"), counters as they are."""
    target = getattr(torch, dtype)
    return {k: v.to(target) if v.is_floating_point() else v for k, v in state.items()}


def load_shared(method: nn.Module, shared: State) -> None:
    """Put the global shared state into the method, leaving its site-specific part as it is."""
    expected = set(method.state_dict()) - local_keys(method)
    if set(shared) != expected:
        missing, extra = sorted(expected - set(shared)), sorted(set(shared) - expected)
        raise ValueError(f"shared state does not fit the method (missing {missing[:3]}, unexpected {extra[:3]})")
    method.load_state_dict(shared, strict=False)


def average(states: list[State], weights: list[float]) -> State:
    """The weighted mean of the sites' shared states (weights normalised here); computed in float64 and
    returned in each entry's own dtype, at least float32 (states sent as float16 average to float32; an
    integer counter is rounded)."""
    if not states or len(states) != len(weights) or min(weights) < 0 or sum(weights) <= 0:
        raise ValueError(f"need one non-negative weight per state with a positive sum, got {weights}")
    total = float(sum(weights))
    mean = {}
    for key, first in states[0].items():
        acc = sum(float(w) / total * s[key].to(torch.float64) for s, w in zip(states, weights))
        dtype = torch.promote_types(first.dtype, torch.float32) if first.is_floating_point() else first.dtype
        mean[key] = (acc.round() if not first.is_floating_point() else acc).to(dtype)
    return mean
