"""Which process this is under torchrun: the ground floor that file writing (crosssite.io) and
training (crosssite.distributed) both stand on, so neither climbs to the other's imports."""

from __future__ import annotations

import torch.distributed as dist


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def is_main() -> bool:
    """True in the one process that writes files (rank 0, or the only process)."""
    return rank() == 0


def barrier() -> None:
    if active():
        dist.barrier()
