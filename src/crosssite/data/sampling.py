"""Index batches for one epoch: one batch per site per step, as in cross-site training."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def epoch_batches(site_sizes: Sequence[int], batch_per_site: int,
                  rng: np.random.Generator) -> list[list[np.ndarray]]:
    """steps x sites index arrays of exactly batch_per_site each.

    The epoch lasts until the largest site has been seen once; smaller sites cycle through fresh
    permutations (the paper repeats Site B about 4x), so every image of every site appears.
    """
    if batch_per_site < 1:
        raise ValueError(f"batch_per_site must be >= 1, got {batch_per_site}")
    if not site_sizes or min(site_sizes) < 1:
        raise ValueError(f"every site needs at least one image, got sizes {list(site_sizes)}")
    steps = math.ceil(max(site_sizes) / batch_per_site)
    need = steps * batch_per_site
    streams = []
    for n in site_sizes:
        perms = [rng.permutation(n) for _ in range(math.ceil(need / n))]
        streams.append(np.concatenate(perms)[:need].astype(np.int64))
    return [[s[k * batch_per_site:(k + 1) * batch_per_site] for s in streams] for k in range(steps)]


def eval_batches(n: int, batch_size: int) -> list[np.ndarray]:
    """Consecutive index batches over n items, in order; the last may be short."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return [np.arange(i, min(i + batch_size, n), dtype=np.int64) for i in range(0, n, batch_size)]
