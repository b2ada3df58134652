"""What travels between the coordinator and a site, one dataclass per kind of message.

Nothing here is per image: shared weights (`state.shared_state`), a site's number of training images
(the averaging weight), loss means over a round, validation and test metrics, and for the federated
contrastive term each site's class-mean projections (crosssite.federated.contrast). `tensors()` lists
every tensor a message carries, which the transport sends and the message-inspection test checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch only for the annotations: a Flower ClientApp process imports this module cheaply
    from torch import Tensor

    from .state import State


@dataclass
class FitIns:
    """Coordinator -> site: train round `round` from the global shared state; `peers`: the other sites'
    shared extras of the last round (contrastive: their class means), never the site's own."""

    round: int
    shared: State
    peers: dict[str, Tensor] = field(default_factory=dict)

    def tensors(self) -> dict[str, Tensor]:
        return {**{f"shared.{k}": v for k, v in self.shared.items()}, **{f"peers.{k}": v for k, v in self.peers.items()}}


@dataclass
class FitRes:
    """Site -> coordinator after its local training: its shared state, training-image count, the round's
    mean losses, and its extras (contrastive: per-class mean projections)."""

    site: str
    round: int
    shared: State
    num_examples: int
    stats: dict[str, float]
    extras: dict[str, Tensor] = field(default_factory=dict)

    def tensors(self) -> dict[str, Tensor]:
        return {**{f"shared.{k}": v for k, v in self.shared.items()}, **{f"extras.{k}": v for k, v in self.extras.items()}}


@dataclass
class EvaluateIns:
    """Coordinator -> site: validate the averaged state of `round` with the site's own site-specific part."""

    round: int
    shared: State

    def tensors(self) -> dict[str, Tensor]:
        return {f"shared.{k}": v for k, v in self.shared.items()}


@dataclass
class EvaluateRes:
    """Site -> coordinator: metrics only (validation AUC per round; at the end, test metrics of best.pt)."""

    site: str
    round: int
    metrics: dict[str, float]

    def tensors(self) -> dict[str, Tensor]:
        return {}
