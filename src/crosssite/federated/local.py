"""Every site of a federation on this machine (`crosssite federate`): no framework, no network, no Ray.

Each site is a `SiteTrainer` reading only its own folder and writing only OUT/SITE; the coordinator
sees nothing but the messages. By default the sites train one after the other in this process, each with
every core: on one machine that is as fast as side by side, and it decodes each site's images once for
the whole run; `processes=True` gives each site its own process (crosssite.federated.processes).
"""

from __future__ import annotations

from pathlib import Path

from .. import run_folder
from ..config import TrainConfig, save_config
from ..data.sites import load_sites, refuse_shared_images
from ..errors import CrossSiteError
from ..train import check_same_settings
from .coordinator import Coordinator, run_federation
from .messages import EvaluateIns, EvaluateRes, FitIns, FitRes
from .settings import FedSettings, load_settings, save_settings
from .site import SiteTrainer, build_method, site_config
from .state import shared_state

#: the coordinator's files in OUT: any of them means OUT holds a federation
FEDERATION_FILES = ("federation.yaml", "server.pt", "federation_log.jsonl", "summary.json")


class InProcess:
    """The `Transport` of a federation in one process: a message is a call."""

    def __init__(self, trainers: dict[str, SiteTrainer]):
        self.trainers, self.sites = trainers, list(trainers)

    def fit(self, instructions: dict[str, FitIns]) -> list[FitRes]:
        return [self.trainers[s].fit(ins) for s, ins in instructions.items()]

    def evaluate(self, instructions: dict[str, EvaluateIns]) -> list[EvaluateRes]:
        return [self.trainers[s].evaluate(ins) for s, ins in instructions.items()]

    def finish(self, sites: list[str]) -> list[EvaluateRes]:
        return [self.trainers[s].finish() for s in sites]


def prepare_federation(config: TrainConfig, settings: FedSettings, resume: bool) -> bool:
    """Check the settings and OUT; write (or on resume compare) config.yaml and federation.yaml. Returns resume."""
    config.validate()
    settings.validate()
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise CrossSiteError(f"{out}: --out names a file, not a federation folder")
    held = [f for f in FEDERATION_FILES if (out / f).exists()]
    if held and not resume:
        raise CrossSiteError(f"{out}: holds a federation already ({', '.join(held)}); pass --resume to continue it "
                             "or choose another --out")
    resume = bool(held)
    if resume:
        check_same_settings(config, out / run_folder.CONFIG)
        saved = load_settings(out / "federation.yaml").to_dict()
        changed = [k for k, v in settings.to_dict().items() if saved.get(k) != v]
        if changed:
            raise CrossSiteError(f"{out / 'federation.yaml'}: --resume with different settings ({', '.join(changed)})")
    else:
        out.mkdir(parents=True, exist_ok=True)
        save_config(config, out / run_folder.CONFIG)
        save_settings(settings, out / "federation.yaml")
    return resume


def federate(config: TrainConfig, settings: FedSettings, resume: bool = False, progress: bool = True,
             device: str = "cpu", transport=None, processes: bool = False) -> dict:
    """Run (or resume) the federation of every site of `config` on this machine; return summary.json.
    `processes`: one process per site (crosssite.federated.processes) instead of all in this one.
    `transport`: wraps the in-process one (tests record or drop messages with it)."""
    resume = prepare_federation(config, settings, resume)
    out = Path(config.out)
    sites = load_sites(Path(config.data) if config.data else None, config.sites, config.slices)
    refuse_shared_images(sites)
    if len(sites) < 2:
        raise CrossSiteError(f"a federation needs at least two sites, got {', '.join(sites)}")
    if settings.min_sites > len(sites):
        raise CrossSiteError(f"min_sites {settings.min_sites} is more than the {len(sites)} sites")
    trainer_args = {name: (site_config(config, name, site.root, out / name), settings, resume, device,
                           progress and not processes) for name, site in sites.items()}
    coordinator = Coordinator(out, settings, shared_state(build_method(config)), list(sites))
    if processes:
        from .processes import SiteProcesses

        with SiteProcesses(trainer_args) as each:
            return run_federation(coordinator, transport(each) if transport else each)
    local = InProcess({name: SiteTrainer(*args) for name, args in trainer_args.items()})
    return run_federation(coordinator, transport(local) if transport else local)
