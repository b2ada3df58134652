"""A site the model never saw: new per-site batch-norm statistics from its unlabelled images (AdaBN).

AdaBN (Y. Li, N. Wang, J. Shi, J. Liu, X. Hou, "Revisiting Batch Normalization For Practical Domain
Adaptation", arXiv:1603.04779, 2016) keeps every weight of a trained network and replaces the batch-norm
statistics by those of the target domain. With site-specific batch norm this is a new site: every
`SiteBatchNorm` gets one more copy (`Method.add_site`: affine = mean of the trained sites'), whose
running mean and variance are the cumulative average (momentum None) over batches of the new site's
images, run with the eval transform, in train mode, without gradients. Nothing else changes, so the new
checkpoint predicts for the old sites exactly as before. Labels are never read.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np
import torch

from .checkpoint import load_trained, save_checkpoint
from .config import EVAL_BATCH_SIZE
from .data.sites import parse_site_arg
from .data.transforms import to_tensor
from .errors import CrossSiteError
from .inputs import AUTO, list_images
from .preprocessing import Preprocessing

# keys of a checkpoint that describe training state the adapted model no longer matches
_DROPPED = {"format", "version", "method", "config", "site_names", "model", "optimizer", "scheduler"}


@torch.no_grad()
def estimate_bn_statistics(method, site: int, images: np.ndarray, batch_size: int = EVAL_BATCH_SIZE) -> None:
    """Set `site`'s running statistics in every SiteBatchNorm to the cumulative average over `images`.

    Only that site's copies run in train mode, so no other buffer or parameter can change. Batches are
    near-equal chunks (np.array_split) so none has a single image, which batch norm cannot normalise.
    """
    method.eval()
    bns = method.site_batch_norms(site)
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average: every batch weighs the same
        bn.train()
    try:
        for idx in np.array_split(np.arange(len(images)), max(1, -(-len(images) // batch_size))):
            method.predict(to_tensor(images[idx]), site)
    finally:
        for bn, momentum in zip(bns, momenta):
            bn.momentum = momentum
            bn.eval()


def adapt_checkpoint(checkpoint: Path, site_arg: str, out: Path, batch_size: int = EVAL_BATCH_SIZE) -> dict:
    """Write `out`: `checkpoint` plus site NAME=PATH fitted by AdaBN; return the adaptation record."""
    name, source = parse_site_arg(site_arg)
    if name == AUTO:
        raise CrossSiteError(f"--site: {AUTO!r} is reserved for `crosssite predict --site auto`; choose another name")
    trained = load_trained(checkpoint)
    method, config, site_names, payload = trained.method, trained.config, trained.site_names, trained.payload
    if name in site_names:
        raise CrossSiteError(f"{checkpoint}: already has a site {name!r} (sites: {', '.join(site_names)}); "
                             "choose another name")
    if not method.site_batch_norms(0):
        raise CrossSiteError(f"{checkpoint}: method {payload['method']!r} has no site-specific batch norm, so "
                             "there is nothing to adapt; use it with any known site, or adapt a sepnorm or "
                             "contrastive checkpoint")
    try:
        new_site = method.add_site()
    except ValueError as e:
        raise CrossSiteError(f"{checkpoint}: cannot add a site ({e})") from None
    paths = list_images(source, config.slices)
    images = Preprocessing.of(config).cache().eval_batch(paths)
    estimate_bn_statistics(method, new_site, images, batch_size)

    record = {
        "site": name,
        "source": str(source.resolve()),
        "images": len(paths),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "from_checkpoint": str(Path(checkpoint).resolve()),
        "statistics": "AdaBN: cumulative average over eval-transformed images (labels unused)",
        "affine": f"mean of sites {', '.join(site_names)}",
    }
    extra = {k: v for k, v in payload.items() if k not in _DROPPED}
    extra["adaptations"] = list(payload.get("adaptations", [])) + [record]
    save_checkpoint(Path(out), method, config, site_names + [name], **extra)
    return record
