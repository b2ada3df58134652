"""How many parameters a method has, and which of them are shared or belong to one site.

A parameter belongs to site i when only site i's training step uses it. Rather than
knowing each method's layout, this is measured: one update on a batch of site i alone
marks the parameters it gives a gradient to (parameters a step does not use keep
``grad is None``; see ``Method.step``). Used by several sites: shared.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import TrainConfig
from .registry import create_method


@dataclass
class ParamCounts:
    total: int
    shared: int
    per_site: list[int]
    unused: int  # used by no site's step (0 for every registered method)


def used_parameters(method, site: int, batch_size: int = 4) -> set[str]:
    """Names of the parameters that one update on a random batch of ``site`` alone gives a gradient.

    The update really steps the optimiser: call it on a throwaway method.
    """
    size = method.config.image_size
    g = torch.Generator().manual_seed(site)
    x = torch.randn(batch_size, 3, size, size, generator=g)
    y = torch.arange(batch_size) % 2
    method.train()
    method.update([(x, y) if s == site else None for s in range(method.num_sites)])
    return {name for name, p in method.named_parameters() if p.grad is not None}


def count_parameters(name: str, config: TrainConfig, num_sites: int = 2) -> ParamCounts:
    """Total, shared and per-site parameter counts of method ``name`` built from ``config``."""
    torch.manual_seed(config.seed)
    method = create_method(name, num_sites, config.replace(method=name))
    sizes = {n: p.numel() for n, p in method.named_parameters()}
    users: dict[str, int] = {n: 0 for n in sizes}
    per_site_names = []
    for site in range(num_sites):
        used = used_parameters(method, site)
        per_site_names.append(used)
        for n in used:
            users[n] += 1
    return ParamCounts(
        total=sum(sizes.values()),
        shared=sum(sizes[n] for n, k in users.items() if k > 1),
        per_site=[sum(sizes[n] for n in used if users[n] == 1) for used in per_site_names],
        unused=sum(sizes[n] for n, k in users.items() if k == 0),
    )


def format_table(rows: dict[str, ParamCounts]) -> str:
    """A Markdown table: one row per method, counts with thousands separators."""
    num_sites = len(next(iter(rows.values())).per_site)
    head = ["method", "total", "shared"] + [f"site {i} only" for i in range(num_sites)] + ["site-specific share"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" + "---:|" * (len(head) - 1)]
    for name, c in rows.items():
        share = sum(c.per_site) / c.total
        cells = [name, f"{c.total:,}", f"{c.shared:,}", *(f"{n:,}" for n in c.per_site), f"{100 * share:.1f}%"]
        lines.append("| " + " | ".join(cells) + " |")
    if any(c.unused for c in rows.values()):
        lines.append("unused by every site: " + ", ".join(f"{n} {c.unused:,}" for n, c in rows.items() if c.unused))
    return "\n".join(lines)
