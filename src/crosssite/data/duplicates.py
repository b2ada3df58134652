"""Exact and near-duplicate images: one similarity measure shared by `crosssite audit` and the splits.

* exact duplicates: the same decoded pixels (sha256 of the grayscale array and its shape), not the same
  file bytes, so one image stored twice with another encoder or format is still found;
* near duplicates: Pearson correlation of 32x32 thumbnails (each image squashed to 32x32 with Pillow's
  box filter, then standardised to zero mean and unit norm, so the dot product of two rows is their
  correlation). Squashing ignores the aspect ratio on purpose: the network's eval transform does the same.

A CT slice (`SCAN#slice=I`, crosssite.data.volumes) is compared as training sees it: gray values through
the run's HU window, so two slices that differ only outside the window are exact duplicates.

`DEFAULT_THRESHOLD` = 0.95. On ../shared/data it flags both facts the data README reports (the two Site B
cross-class figures, correlation 0.993 / 0.985, and Site A's adjacent slices), no other pair across
classes and none across sites (highest there: 0.891). See docs/new_sites_and_leakage.md for the counts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from crosssite.data.images import load_image

THUMB_SIDE = 32
DEFAULT_THRESHOLD = 0.95
_BLOCK = 1024  # rows per block of the correlation matrix: 1024 x N float32 stays small


def fingerprint(path: Path, window) -> tuple[str, np.ndarray]:
    """(sha256 of the decoded pixels, standardised THUMB_SIDE^2 thumbnail) of one image or CT slice
    (through `window`, as training reads it)."""
    img = load_image(path, window)
    digest = hashlib.sha256(f"{img.shape}".encode() + img.tobytes()).hexdigest()
    thumb = np.asarray(Image.fromarray(img).resize((THUMB_SIDE, THUMB_SIDE), Image.Resampling.BOX), np.float32)
    thumb = thumb.ravel() - thumb.mean()
    norm = np.linalg.norm(thumb)
    return digest, thumb / norm if norm > 0 else thumb  # a flat image correlates with nothing


def fingerprints(paths: Sequence[Path], window) -> tuple[list[str], np.ndarray]:
    """Pixel hashes and an (N, THUMB_SIDE^2) float32 matrix of thumbnails, in the order of `paths`."""
    hashes, thumbs = [], np.zeros((len(paths), THUMB_SIDE * THUMB_SIDE), np.float32)
    for i, p in enumerate(paths):
        digest, thumbs[i] = fingerprint(p, window)
        hashes.append(digest)
    return hashes, thumbs


def similar_pairs(thumbs: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, correlation) for every pair i < j with correlation >= threshold, computed block by block."""
    rows, cols, scores = [], [], []
    for start in range(0, len(thumbs), _BLOCK):
        corr = thumbs[start:start + _BLOCK] @ thumbs.T
        i, j = np.nonzero(corr >= threshold)
        keep = start + i < j
        rows.append(start + i[keep])
        cols.append(j[keep])
        scores.append(corr[i[keep], j[keep]])
    if not rows:
        return np.zeros(0, int), np.zeros(0, int), np.zeros(0, np.float32)
    return np.concatenate(rows), np.concatenate(cols), np.minimum(np.concatenate(scores), 1.0)


def exact_pairs(hashes: Sequence[str]) -> list[tuple[int, int]]:
    """(i, j), i < j, for every two images with the same pixel hash."""
    by_hash: dict[str, list[int]] = {}
    for i, h in enumerate(hashes):
        by_hash.setdefault(h, []).append(i)
    return [(a, b) for members in by_hash.values() for k, a in enumerate(members) for b in members[k + 1:]]


def duplicate_groups(paths: Sequence[Path], threshold: float = DEFAULT_THRESHOLD,
                     groups: np.ndarray | None = None, *, window) -> np.ndarray:
    """Group id per image: connected components over near-duplicate links and same-group (patient) links.

    Feeding these ids to a grouped k-fold keeps every near-duplicate cluster, and every patient, in one part.
    CT slices are compared through `window`, the run's, so the groups are of what training sees.
    """
    n = len(paths)
    _, thumbs = fingerprints(paths, window)
    i, j, _ = similar_pairs(thumbs, threshold)
    if groups is not None:  # chain the images of each patient: a star from the first image of the group
        first: dict[str, int] = {}
        anchor = np.array([first.setdefault(str(g), k) for k, g in enumerate(groups)])
        i, j = np.concatenate([i, anchor]), np.concatenate([j, np.arange(n)])
    graph = coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    return labels.astype(str)
