"""`crosssite calibrate`: fit a checkpoint's decisions (crosssite.decisions) after training.

For a checkpoint trained before decisions existed, for another operating-point rule, or for a site added
by `crosssite adapt`, which has no labelled validation part of its own until one is given here.
"""

from __future__ import annotations

from pathlib import Path

from . import decisions as decisions_module
from .checkpoint import load_trained
from .config import EVAL_BATCH_SIZE
from .data.images import DecodedCache
from .data.sites import load_sites, parse_site_arg, read_site
from .data.splits import load_splits
from .errors import CrossSiteError
from .evaluate import RunData
from .operating_point import DEFAULT_RULE, DEFAULT_SENSITIVITY


def calibrate_checkpoint(checkpoint: Path, site_args: list[str] | None = None, out: Path | None = None,
                         rule: str = DEFAULT_RULE, sensitivity: float = DEFAULT_SENSITIVITY,
                         batch_size: int = EVAL_BATCH_SIZE) -> dict:
    """`crosssite calibrate`: fit decisions and write them into `out` (default: `checkpoint` itself).

    Without `site_args`, every site of the checkpoint on the validation part of the run's split (the
    split.json beside it), as training does. With NAME=PATH arguments, site NAME of the checkpoint (for
    one added by `crosssite adapt`) on every image of the labelled set PATH (a site folder or CSV,
    crosssite.data.sites.read_site), which should be a set of that hospital's cases kept for this.
    """
    checkpoint = Path(checkpoint)
    trained = load_trained(checkpoint)
    config = trained.config
    cache = DecodedCache(config.image_size, config.window)
    if site_args:
        decisions = {}
        for arg in site_args:
            name, path = parse_site_arg(arg)
            index = trained.site_index(name)
            site = read_site(path, name, config.slices)
            decisions[name] = decisions_module.fit_site(trained.method, index, cache.eval_batch([s.path for s in site.samples]),
                                       site.labels(), f"labelled set {path} (all {len(site)} images)",
                                       batch_size, rule, sensitivity)
    else:
        split = checkpoint.parent / "split.json"
        if not split.is_file():
            raise CrossSiteError(f"{checkpoint}: no split.json beside it, so its validation part is unknown; "
                                 "give a labelled set per site with --site NAME=PATH")
        sites = load_sites(Path(config.data) if config.data else None, config.sites, config.slices)
        missing = [n for n in trained.site_names if n not in sites]
        if missing:
            raise CrossSiteError(f"{checkpoint}: site(s) {', '.join(missing)} not in the run's data; give a "
                                 "labelled set for each with --site NAME=PATH")
        sites = {n: sites[n] for n in trained.site_names}
        decisions = decisions_module.fit_validation(trained, RunData(sites, load_splits(split, sites), cache), batch_size, rule,
                                   sensitivity)
    decisions_module.store(checkpoint, decisions, out)
    return decisions
