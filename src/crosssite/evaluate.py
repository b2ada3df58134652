"""The `evaluate` command's home: a run's data, metrics on one part of its split, a checkpoint's evaluation.

The trainer validates and tests through `evaluate_part` too, so a checkpoint scores the same here
as it did during training.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import decisions, run_folder
from .checkpoint import load_trained
from .config import EVAL_BATCH_SIZE
from .data.images import DecodedCache
from .data.sites import Site, load_sites, parse_site_arg
from .data.splits import load_splits, make_splits
from .inference import predict_proba
from .metrics import site_metrics
from .scans import AGGREGATE, TOP_K, describe, level_metrics


@dataclass
class RunData:
    """The sites of a run, their split, and the decoded-image cache."""

    sites: dict[str, Site]
    splits: dict[str, dict[str, list[int]]]
    cache: DecodedCache

    @property
    def site_names(self) -> list[str]:
        return list(self.sites)

    def paths(self, site: str, part: str) -> list[Path]:
        samples = self.sites[site].samples
        return [samples[i].path for i in self.splits[site][part]]

    def labels(self, site: str, part: str) -> np.ndarray:
        return self.sites[site].labels()[self.splits[site][part]]

    def patients(self, site: str, part: str) -> list[str]:
        """Patient id of each image of the part ('' where the site has none)."""
        samples = self.sites[site].samples
        return [samples[i].patient or "" for i in self.splits[site][part]]


def evaluate_part(method, data: RunData, part: str, batch_size: int,
                  bn_sites: dict[str, int] | None = None, compile: bool = False) -> tuple[dict[str, dict], list[dict]]:
    """Metrics per site on one part of the split, and one prediction row per image.

    `bn_sites` maps a site to the model's site index to predict with (default: its position in the run).
    """
    per_site, rows = {}, []
    for position, name in enumerate(data.site_names):
        index = position if bn_sites is None else bn_sites[name]
        paths = data.paths(name, part)
        labels = data.labels(name, part)
        probs = predict_proba(method, data.cache.eval_batch(paths), index, batch_size, compile=compile)
        per_site[name] = site_metrics(labels, probs)
        rows += [
            {"site": name, "path": str(p), "patient": g, "label": int(y), "p_covid": float(q)}
            for p, g, y, q in zip(paths, data.patients(name, part), labels, probs)
        ]
    return per_site, rows


def evaluate_checkpoint(checkpoint: str, part: str = "test", data: str | None = None, sites: list[str] | None = None,
                        split_file: str | None = None, fold: int | None = None, as_site: str | None = None,
                        batch_size: int = EVAL_BATCH_SIZE, compile: bool = False, device: str = "auto",
                        how: str = AGGREGATE, top_k: int = TOP_K) -> dict:
    """Metrics of a checkpoint on a part of a split: per site, and per scan and patient where they exist.

    Defaults come from the checkpoint: its data folder and sites, the split.json beside it (else the
    split recomputed from its settings, or for `fold`). Sites the checkpoint does not know are evaluated
    only with `as_site`, the known site whose batch norms predict for them. Returns what
    `crosssite evaluate --json` prints: checkpoint, part, split (where it came from), sites, aggregate,
    scans, patients, and decisions (crosssite.decisions.assess: ECE before / after calibration and the
    operating point's sensitivity and specificity per level; `ood`: the share of images flagged).
    """
    trained = load_trained(checkpoint, device)
    config, site_names = trained.config, trained.site_names
    data_dir = data or config.data
    loaded = load_sites(Path(data_dir) if data_dir else None, sites if sites is not None else config.sites,
                        config.slices)
    # which of the model's sites predicts for each loaded site; unknown sites only with as_site
    bn_sites = {n: site_names.index(n) for n in loaded if n in site_names}
    if as_site is not None:
        as_index = trained.site_index(as_site)
        bn_sites.update({n: as_index for n in loaded if n not in site_names})
    named = [parse_site_arg(arg)[0] for arg in sites or []]
    unknown = [n for n in named if n not in bn_sites] or ([] if bn_sites else list(loaded))
    if unknown:  # raises: says to adapt the site first or to pass --as-site
        trained.site_index(unknown[0])
    loaded = {n: loaded[n] for n in bn_sites}
    split_path = Path(split_file) if split_file else Path(checkpoint).parent / run_folder.SPLIT
    fold_used = config.fold if fold is None else fold
    if part == "all":
        splits, source = {n: {"all": list(range(len(s)))} for n, s in loaded.items()}, "every image of each site"
    elif fold is None and split_path.exists():
        splits, source = load_splits(split_path, loaded), str(split_path)
    else:
        splits, source = {}, ""
    rest = {n: s for n, s in loaded.items() if n not in splits}  # sites the saved split does not hold
    if rest:
        splits.update(make_splits(rest, config.split, fold_used, config.folds, config.seed, config.group_duplicates,
                                  config.window))
        source = "; ".join(filter(None, [source, f"{', '.join(rest)}: {config.split} split, fold {fold_used}, "
                                                  f"seed {config.seed}"]))
    as_note = {n: site_names[i] for n, i in bn_sites.items() if n not in site_names}
    if as_note:
        source += "; batch norms: " + ", ".join(f"{n} as {k}" for n, k in as_note.items())
    run = RunData(loaded, splits, DecodedCache(config.image_size, config.window))
    per_site, rows = evaluate_part(trained.method, run, part, batch_size, bn_sites, compile=compile)
    levels = level_metrics(rows, how, top_k)
    # calibration and operating point of the site whose batch norms predict; OOD against every known site
    decided = decisions.assess(rows, {n: decisions.for_site(trained.payload, site_names[i]) for n, i in bn_sites.items()},
                               how, top_k)
    decided["ood"] = decisions.ood_rates(trained, {n: run.cache.eval_batch(run.paths(n, part)) for n in loaded},
                                         batch_size)
    return {"checkpoint": checkpoint, "part": part, "split": source, "sites": per_site,
            "aggregate": describe(how, top_k), "scans": levels["scan"], "patients": levels["patient"],
            "decisions": decided}
