"""Losses: the supervised contrastive NT-Xent of the paper (eq. 3-5)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def supervised_nt_xent(embeddings: Tensor, labels: Tensor, temperature: float = 0.05) -> Tensor:
    """Supervised NT-Xent loss, as pytorch-metric-learning's ``NTXentLoss`` with labels.

    With ``s_ij = cos(z_i, z_j) / temperature`` the loss is the mean, over every
    ordered positive pair ``(a, p)`` (``a != p``, same label), of::

        -log( exp(s_ap) / (exp(s_ap) + sum_{n: label_n != label_a} exp(s_an)) )

    i.e. every other sample of the anchor's class is a positive in turn, the
    denominator holds that one positive plus all of the anchor's negatives (not
    the other positives), and anchors without negatives contribute 0.

    Checked against pytorch-metric-learning (``losses/ntxent_loss.py``,
    ``utils/loss_and_miner_utils.get_all_pairs_indices``, default
    ``CosineSimilarity`` distance on L2-normalised embeddings and the default
    ``MeanReducer``): positive pairs are all ordered same-label pairs with the
    diagonal removed; negatives of anchor ``a`` are all samples with a
    different label; each pair's loss is ``-log(num / (num + sum neg))`` with
    a per-row max subtracted; the reduction is the mean over positive pairs.
    Differences: pytorch-metric-learning adds 1e-20 inside the log (here an
    exact logsumexp is used); with no positive pair it returns a zero loss and
    so do we (still a function of the embeddings, with zero gradients). The reference
    training script only applied the loss to batches of exactly 32 samples;
    this function works for any batch size.
    """
    if embeddings.dim() != 2:
        raise ValueError(f"embeddings must be (B, D), got shape {tuple(embeddings.shape)}")
    labels = labels.reshape(-1)
    if labels.numel() != embeddings.shape[0]:
        raise ValueError(f"got {labels.numel()} labels for {embeddings.shape[0]} embeddings")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")

    labels = labels.to(embeddings.device)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=embeddings.device)
    positive = same & ~eye
    negative = ~same

    z = F.normalize(embeddings, dim=1)
    sim = (z @ z.t()) / temperature

    # log sum_n exp(s_an) over each anchor's negatives; -inf for anchors without any
    # (computed on a finite fill so no NaN gradients leak from all -inf rows).
    has_negative = negative.any(dim=1)
    neg_lse = torch.logsumexp(sim.masked_fill(~negative, float("-inf")).masked_fill(~has_negative[:, None], 0.0), dim=1)
    neg_lse = torch.where(has_negative, neg_lse, torch.full_like(neg_lse, float("-inf")))

    # every pair's loss, kept where (a, p) is a positive pair: masks rather than indexing by the pairs,
    # whose number only the device knows, so that the loss never waits for it (crosssite.capture)
    per_pair = torch.logaddexp(sim, neg_lse[:, None]) - sim
    return torch.where(positive, per_pair, 0.0).sum() / positive.sum().clamp_min(1)
