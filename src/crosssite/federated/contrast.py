"""The federated contrastive term (ours): other sites' class-mean projections as extra labelled rows.

The paper's supervised NT-Xent (Wang, Liu & Dou 2020, eq. 3-5) compares every projection of a step's
joint batch with every other, across sites; federated, no site sees another's images or features. Here
each site sends, per round, the mean projection of each class over the images it trained on in that
round (2 x 128 values), and every other site appends those means, as fixed rows with their class labels,
to its own step's projections in the same NT-Xent. docs/methods.md says how this differs and what a class
mean tells another site.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..methods.contrastive import Contrastive

NUM_CLASSES = 2


class FederatedContrastive(Contrastive):
    """`contrastive` at one site of a federation (same name, same state dict: its checkpoints load as
    `contrastive`). `peers` holds the other sites' class means; `class_means()` hands this site's over."""

    def __init__(self, num_sites, config):
        super().__init__(num_sites, config)
        self.peers: dict[str, Tensor] = {}
        self._sums: Tensor | None = None
        self._counts = torch.zeros(NUM_CLASSES)

    def contrastive_term(self, projections: Tensor, labels: Tensor) -> Tensor:
        p = projections.detach().float()
        if self._sums is None:
            self._sums = torch.zeros(NUM_CLASSES, p.shape[1], dtype=torch.float64, device=p.device)
        self._sums.index_add_(0, labels, p.double())
        self._counts += torch.bincount(labels.cpu(), minlength=NUM_CLASSES)
        if not self.peers:
            return super().contrastive_term(projections, labels)
        rows = torch.stack(list(self.peers.values())).to(projections)
        row_labels = torch.tensor([peer_class(k) for k in self.peers], device=labels.device)
        return super().contrastive_term(torch.cat([projections, rows]), torch.cat([labels, row_labels]))

    def class_means(self) -> dict[str, Tensor]:
        """This round's mean projection of each class the site trained on ({"class_0": (D,), ...}); resets."""
        means = {} if self._sums is None else {
            f"class_{c}": (self._sums[c] / self._counts[c]).float().cpu() for c in range(NUM_CLASSES) if self._counts[c]}
        self._sums, self._counts = None, torch.zeros(NUM_CLASSES)
        return means


def peer_class(key: str) -> int:
    """The class of a peer row named 'SITE/class_C'."""
    return int(key.rsplit("_", 1)[1])
