"""Leakage audit: exact and near-duplicate image pairs within a site, across classes, across sites and,
given a run's split, across its train / validation / test parts.

`crosssite audit` prints a summary and writes `pairs.csv` (one row per pair, highest score first):
image_a, image_b, kind (exact = same decoded pixels, near = thumbnail correlation >= threshold), score
(the correlation; 1 for exact pairs), classes, sites, splits (each "a/b", splits empty without --split).
The similarity measure and its threshold live in `crosssite.data.duplicates`.

Sites may list CT scans: their slices are audited as training reads them (the run's `window` and
`slices` with --split, else --window / --slices, else the defaults) and named `SCAN#slice=I`; two slices
of one scan are their own relation ('same scan'), since neighbouring slices are near-duplicates by nature
and a patient-grouped split keeps them together.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from . import run_folder
from .config import TrainConfig, load_config
from .data.duplicates import DEFAULT_THRESHOLD, exact_pairs, fingerprints, similar_pairs
from .data.sites import LABEL_NAMES, Site, load_sites
from .data.splits import load_splits
from .data.volumes import scan_of
from .errors import CrossSiteError
from .io import atomic_write_csv

FIELDS = ("image_a", "image_b", "kind", "score", "classes", "sites", "splits")
SHOWN = 12  # notable pairs listed per group in the terminal summary


def find_pairs(sites: dict[str, Site], threshold: float = DEFAULT_THRESHOLD,
               splits: dict[str, dict[str, list[int]]] | None = None, *, window) -> list[dict]:
    """Every exact or near-duplicate pair among all images (and CT slices, through `window`) of all sites,
    as dicts with FIELDS."""
    images = [(name, i, s) for name, site in sites.items() for i, s in enumerate(site.samples)]
    part = {}
    for name, parts in (splits or {}).items():
        part.update({(name, i): p for p, idx in parts.items() for i in idx})
    hashes, thumbs = fingerprints([s.path for _, _, s in images], window)
    exact = set(exact_pairs(hashes))
    rows, cols, scores = similar_pairs(thumbs, threshold)
    found = {(int(a), int(b)): float(c) for a, b, c in zip(rows, cols, scores)}
    found.update({pair: 1.0 for pair in exact})
    pairs = []
    for (a, b), score in sorted(found.items(), key=lambda kv: (-kv[1], kv[0])):
        (site_a, ia, sa), (site_b, ib, sb) = images[a], images[b]
        pairs.append({
            "image_a": str(sa.path), "image_b": str(sb.path),
            "kind": "exact" if (a, b) in exact else "near",
            "score": round(score, 4),
            "classes": f"{LABEL_NAMES[sa.label]}/{LABEL_NAMES[sb.label]}",
            "sites": f"{site_a}/{site_b}",
            "splits": f"{part.get((site_a, ia), '-')}/{part.get((site_b, ib), '-')}" if splits else "",
        })
    return pairs


def relation(pair: dict) -> str:
    """'across sites', 'same scan' (two slices of one CT scan), 'across classes' or 'same class' (same site)."""
    site_a, site_b = pair["sites"].split("/")
    class_a, class_b = pair["classes"].split("/")
    if site_a != site_b:
        return "across sites"
    if scan_of(pair["image_a"]) is not None and scan_of(pair["image_a"]) == scan_of(pair["image_b"]):
        return "same scan"
    return "across classes" if class_a != class_b else "same class"


def straddles(pair: dict) -> bool:
    """Both images are in the split and in different parts of it."""
    a, _, b = pair["splits"].partition("/")
    return bool(pair["splits"]) and "-" not in (a, b) and a != b


def summary(pairs: list[dict], sites: dict[str, Site], threshold: float, split_source: str | None) -> str:
    samples = [s for site in sites.values() for s in site.samples]
    scans = {s.scan for s in samples if s.scan is not None}
    what = f"{len(samples)} images" + (f" ({len(scans)} CT scans' slices among them)" if scans else "")
    lines = [f"{what}; {len(pairs)} pairs: exact = same decoded pixels, "
             f"near = 32x32 thumbnail correlation >= {threshold}"]
    counts = Counter((p["kind"], relation(p), p["sites"].split("/")[0]) for p in pairs)
    lines.append(f"  {'kind':6} {'relation':15} {'site':16} pairs")
    for (kind, rel, site), n in sorted(counts.items()):
        lines.append(f"  {kind:6} {rel:15} {site if rel != 'across sites' else '-':16} {n}")
    if split_source:
        crossing = Counter((p["kind"], "-".join(sorted(p["splits"].split("/")))) for p in pairs if straddles(p))
        lines.append(f"pairs straddling the parts of {split_source}: {sum(crossing.values())}")
        for (kind, parts), n in sorted(crossing.items()):
            lines.append(f"  {kind:6} {parts:12} {n}")
    notable = [("exact duplicates", [p for p in pairs if p["kind"] == "exact"]),
               ("pairs across classes or sites", [p for p in pairs if relation(p) in ("across classes", "across sites")])]
    if split_source:
        notable.append(("pairs with one image in test", [p for p in pairs if straddles(p) and "test" in p["splits"]]))
    for title, group in notable:
        lines.append(f"{title}: {len(group)}" + (f" (first {SHOWN})" if len(group) > SHOWN else ""))
        for p in group[:SHOWN]:
            where = f"  [{p['splits']}]" if p["splits"] else ""
            lines.append(f"  {p['score']:.4f} {p['kind']:5} {p['classes']:17} {p['image_a']}  ==  {p['image_b']}{where}")
    return "\n".join(lines)


def run_audit(data: str | None, site_args: list[str], split_run: str | None, out: str,
              threshold: float = DEFAULT_THRESHOLD, window: list[float] | None = None,
              slices: str | None = None) -> str:
    """Audit the sites (default with --split: the run's own data, window and slices), write out/pairs.csv,
    return the summary."""
    if not 0 < threshold <= 1:
        raise CrossSiteError(f"--threshold must be in (0, 1], got {threshold}")
    split_file, settings = None, TrainConfig()
    if split_run is not None:
        split_file = Path(split_run) / run_folder.SPLIT if Path(split_run).is_dir() else Path(split_run)
        if (split_file.parent / run_folder.CONFIG).is_file():
            settings = load_config(split_file.parent / run_folder.CONFIG)
            if data is None and not site_args:
                data, site_args = settings.data, settings.sites
    settings = settings.replace(**{k: v for k, v in (("window", window), ("slices", slices)) if v is not None})
    settings.validate()
    if data is None and not site_args:
        raise CrossSiteError("no data: pass --data DIR and/or --site NAME=PATH (or --split RUN with its config.yaml)")
    sites = load_sites(Path(data) if data else None, site_args, settings.slices)
    splits = load_splits(split_file, sites) if split_file else None
    pairs = find_pairs(sites, threshold, splits, window=settings.window)
    atomic_write_csv(Path(out) / "pairs.csv", pairs, list(FIELDS))
    return summary(pairs, sites, threshold, str(split_file) if split_file else None) + \
        f"\nall pairs: {Path(out) / 'pairs.csv'}"
