"""Train/val/test splits per site: patient-grouped stratified folds, or COVID-CT's official split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from crosssite.data.duplicates import duplicate_groups
from crosssite.data.sites import SPLIT_PARTS, Site
from crosssite.errors import CrossSiteError, DataError
from crosssite.io import atomic_write

SPLIT_KINDS = ("fold", "official")
__all__ = ["SPLIT_PARTS", "SPLIT_KINDS", "fold_split", "official_split", "make_splits", "save_splits", "load_splits"]


def _group_fold(labels: np.ndarray, groups: np.ndarray, n_splits: int, fold: int, seed: int,
                where: str) -> tuple[np.ndarray, np.ndarray]:
    """(rest, held-out) positions of one StratifiedGroupKFold fold; too few patients -> CrossSiteError."""
    n_groups = len(np.unique(groups))
    if n_groups < n_splits:
        raise CrossSiteError(f"{where}: {n_groups} patients/images cannot be split into {n_splits} folds")
    cv = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    splits = cv.split(np.zeros(len(labels)), labels, groups)
    for _ in range(fold):
        next(splits)
    return next(splits)


def fold_split(site: Site, fold: int, n_folds: int = 4, seed: int = 0, val_folds: int = 5,
               group_duplicates: float | None = None, window=None) -> dict[str, list[int]]:
    """Test = fold `fold` of n_folds, val = 1/val_folds of the rest; grouped by patient so that no
    patient's slices leak across parts (sites without ids: each image is its own group).

    `group_duplicates` (a correlation threshold, see data/duplicates.py) widens each group to a
    connected component of patient and near-duplicate links, so no near-duplicate cluster straddles parts;
    CT slices are compared through `window` (the run's HU window), as training sees them: it has no
    default, so grouping without it is refused rather than done through some other window.
    """
    if n_folds < 2 or not 0 <= fold < n_folds:
        raise CrossSiteError(f"--fold {fold} is out of range for --folds {n_folds} (use 0..{n_folds - 1}, "
                             "with at least 2 folds)")
    if val_folds < 2:
        raise CrossSiteError(f"val_folds must be at least 2, got {val_folds}")
    labels = site.labels()
    groups = site.groups()
    if group_duplicates is not None:
        if window is None:
            raise ValueError("group_duplicates needs the run's window")
        groups = duplicate_groups([s.path for s in site.samples], group_duplicates, groups, window=window)
    elif groups is None:
        groups = np.arange(len(site)).astype(str)
    rest, test = _group_fold(labels, groups, n_folds, fold, seed, f"site {site.name}")
    train_pos, val_pos = _group_fold(labels[rest], groups[rest], val_folds, 0, seed,
                                     f"site {site.name}, training part of fold {fold}")
    parts = {"train": rest[train_pos], "val": rest[val_pos], "test": test}
    return {part: sorted(int(i) for i in parts[part]) for part in SPLIT_PARTS}


def official_split(site: Site) -> dict[str, list[int]]:
    if site.official_split is None:
        raise CrossSiteError(f"site {site.name} has no official split (only COVID-CT with Data-split/ has one)")
    return {part: list(site.official_split[part]) for part in SPLIT_PARTS}


def make_splits(sites: dict[str, Site], kind: str, fold: int, n_folds: int, seed: int,
                group_duplicates: float | None = None, window=None) -> dict[str, dict[str, list[int]]]:
    if kind not in SPLIT_KINDS:
        raise CrossSiteError(f"unknown split kind {kind!r} (use one of: {', '.join(SPLIT_KINDS)})")
    if kind == "official":
        missing = [name for name, site in sites.items() if site.official_split is None]
        if missing:
            have = [name for name, site in sites.items() if site.official_split is not None]
            raise CrossSiteError(f"official split: site(s) {', '.join(missing)} have none; sites with one: "
                                 f"{', '.join(have) or 'none'} (use the fold split instead)")
        return {name: official_split(site) for name, site in sites.items()}
    return {name: fold_split(site, fold, n_folds, seed, group_duplicates=group_duplicates, window=window)
            for name, site in sites.items()}


def save_splits(path: Path, sites: dict[str, Site], splits: dict[str, dict[str, list[int]]],
                settings: dict | None = None) -> None:
    """JSON {"settings": {...}, "sites": {site: {part: [image paths]}}}; paths as given, for auditing.

    Written to a temporary file and renamed, so a crash never leaves a half-written split file.
    """
    path = Path(path)
    doc = {"settings": dict(settings or {}),
           "sites": {name: {part: [str(sites[name].samples[i].path) for i in idx] for part, idx in parts.items()}
                     for name, parts in splits.items()}}
    try:
        atomic_write(path, lambda tmp: tmp.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8"))
    except OSError as exc:
        raise DataError(f"{path}: cannot write split file ({exc.strerror or exc})") from None


def load_splits(path: Path, sites: dict[str, Site]) -> dict[str, dict[str, list[int]]]:
    """Indices for a saved split; paths are matched as stored, else after resolving them."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        saved = doc["sites"]
        assert isinstance(saved, dict)
    except (OSError, ValueError, KeyError, TypeError, AssertionError) as exc:
        raise DataError(f"{path}: not a crosssite split file ({type(exc).__name__}: {exc})") from None
    out: dict[str, dict[str, list[int]]] = {}
    for name, parts in saved.items():
        if name not in sites:
            raise DataError(f"{path}: split is for site {name!r}, which is not loaded "
                            f"(loaded: {', '.join(sites) or 'none'})")
        index = {str(s.path): i for i, s in enumerate(sites[name].samples)}
        index.update({str(s.path.resolve()): i for i, s in enumerate(sites[name].samples)})
        out[name] = {}
        for part, stored in parts.items():
            idx = []
            for p in stored:
                i = index.get(p, index.get(str(Path(p).resolve())))
                if i is None:
                    raise DataError(f"{path}: site {name} {part}: {p} is not an image of that site")
                idx.append(i)
            out[name][part] = idx
    return out
