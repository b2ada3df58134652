"""Inference on new images with a trained checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .checkpoint import load_checkpoint, method_from_checkpoint
from .data.images import DecodedCache
from .errors import CrossSiteError
from .evaluate import predict_proba

LABEL_NAMES = {0: "NonCOVID", 1: "COVID"}


def site_index(site_names: list[str], site: str, checkpoint: Path) -> int:
    """Index of `site` among the checkpoint's sites, or a clear error listing the known ones."""
    if site not in site_names:
        raise CrossSiteError(
            f"{checkpoint}: unknown site {site!r}; this checkpoint knows {', '.join(site_names)} "
            "(pass one of them with --site)"
        )
    return site_names.index(site)


def predict_images(checkpoint: Path, site: str, images: list[Path], batch_size: int = 64) -> list[dict]:
    """One dict per image: path, P(COVID) and predicted label (P(COVID) >= 0.5)."""
    payload = load_checkpoint(checkpoint)
    method, config, site_names = method_from_checkpoint(payload, checkpoint)
    index = site_index(site_names, site, checkpoint)
    if not images:
        raise CrossSiteError("no images given")
    cache = DecodedCache(config.image_size)
    probs = predict_proba(method, cache.eval_batch([Path(p) for p in images]), index, batch_size)
    return [
        {"path": str(p), "p_covid": float(q), "label": LABEL_NAMES[int(q >= 0.5)]} for p, q in zip(images, np.asarray(probs))
    ]
