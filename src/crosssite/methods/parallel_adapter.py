"""Parallel residual adapters (Rebuffi, Bilen & Vedaldi, CVPR 2018) on the redesigned COVID-Net.

Everything as in series-adapter except where the per-site 1x1 conv sits: beside the
shared depthwise 3x3 conv of each PEPX block, reading the same input, its output
added to the conv's (``conv(x) + W_s(x)``).
"""

from __future__ import annotations

from .registry import register
from .series_adapter import SeriesAdapter


@register("parallel-adapter")
class ParallelAdapter(SeriesAdapter):
    placement = "parallel"
