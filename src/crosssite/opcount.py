"""Counting the ATen operations that a call dispatches.

At the paper's batch size a GPU training step is bound by launching operations, not by arithmetic
(issue 11: a 112 px step cost what a 224 px step cost), so the number of operations per step is the
cost that crosssite cuts, and it can be counted on any device.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from torch.utils._python_dispatch import TorchDispatchMode


class OpCounter(TorchDispatchMode):
    """Counts every ATen operation dispatched while it is active, by name (views and in-place ops too)."""

    def __init__(self):
        super().__init__()
        self.counts: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def count_ops(fn: Callable[[], object]) -> OpCounter:
    """Run `fn()` once and return the counter of the operations it dispatched."""
    with OpCounter() as counter:
        fn()
    return counter
