"""The settings of a federation (beside TrainConfig's, which every site trains with), with their defaults.

FedBN's own code (med-air/FedBN, federated/fed_digits.py and fed_office.py; Li et al., ICLR 2021) used
1 local epoch per round (`wk_iters`), 100 rounds (digits; 300 for Office-Caltech), plain SGD at lr 1e-2
rebuilt every round (SGD without momentum has no state to keep), batch 32 and uniform client weights.
Ours keep the paper's (Wang, Liu & Dou 2020) optimiser instead: Adam, lr 1e-4 cosine-annealed over the
rounds, whose moments are worth keeping at each site between rounds; 1 local epoch per round and as many
rounds as the centralised run has epochs, so each site sees each of its images as often as there; images-
weighted averaging as FedAvg (McMahan et al. 2017), uniform (FedBN's choice) as an option.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..errors import CrossSiteError
from ..io import atomic_write_text, read_yaml

WEIGHTINGS = ("images", "uniform")
#: the dtype of the shared tensors in messages: float16 halves every message; averaging stays in float32
TRANSFERS = ("float32", "float16")


@dataclass
class FedSettings:
    #: rounds of (local training, averaging); the cosine schedule spans them
    rounds: int = 100
    #: local epochs (passes over the site's own training images) per round
    epochs_per_round: int = 1
    #: local steps per round instead of epochs (0: use epochs_per_round)
    steps_per_round: int = 0
    #: how the shared state is averaged: by each site's number of training images, or uniformly
    weighting: str = "images"
    #: keep each site's Adam moments between rounds (False: a fresh optimiser state every round)
    keep_optimizer: bool = True
    #: fewest sites a round may go on with (0: every site); the others miss that round
    min_sites: int = 0
    #: dtype of the shared tensors sent each way (float16: half the bytes; the coordinator keeps and averages float32)
    transfer: str = "float32"

    def validate(self) -> None:
        problems = []
        if self.rounds < 1:
            problems.append(f"rounds must be at least 1, got {self.rounds}")
        if self.epochs_per_round < 1 or self.steps_per_round < 0:
            problems.append(f"epochs_per_round must be at least 1 and steps_per_round at least 0, "
                            f"got {self.epochs_per_round}, {self.steps_per_round}")
        if self.weighting not in WEIGHTINGS:
            problems.append(f"weighting must be one of {', '.join(WEIGHTINGS)}, got {self.weighting!r}")
        if self.transfer not in TRANSFERS:
            problems.append(f"transfer must be one of {', '.join(TRANSFERS)}, got {self.transfer!r}")
        if self.min_sites < 0:
            problems.append(f"min_sites must be at least 0, got {self.min_sites}")
        if problems:
            raise CrossSiteError("invalid federation settings: " + "; ".join(problems))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict, source: str = "federation settings") -> FedSettings:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise CrossSiteError(f"{source}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**values)


def save_settings(settings: FedSettings, path: Path) -> None:
    atomic_write_text(path, yaml.safe_dump(settings.to_dict(), sort_keys=False))


def load_settings(path: Path) -> FedSettings:
    values = read_yaml(path, "federation settings") or {}
    if not isinstance(values, dict):
        raise CrossSiteError(f"{path}: expected a mapping of setting: value")
    return FedSettings.from_dict(values, source=str(path))


_FLAG_HELP = {
    "rounds": "rounds of local training and averaging (default %(default)s; the cosine schedule spans them)",
    "epochs_per_round": "local epochs per round at each site (default %(default)s; FedBN's code: 1)",
    "steps_per_round": "local steps per round instead of epochs (default 0: use --epochs-per-round)",
    "weighting": "average by each site's training images (default, FedAvg) or uniformly (FedBN's code)",
    "keep_optimizer": "keep each site's Adam state between rounds (default: keep)",
    "min_sites": "fewest sites a round goes on with (default 0: all); the log names who took part",
    "transfer": "dtype of the shared weights in messages (default float32; float16 halves what travels, "
                "averaging stays float32)",
}
_CHOICES = {"weighting": WEIGHTINGS, "transfer": TRANSFERS}


def add_settings_flags(parser) -> None:
    """A flag for every FedSettings field (crosssite federate)."""
    import argparse

    for f in dataclasses.fields(FedSettings):
        flag, default = "--" + f.name.replace("_", "-"), f.default
        if isinstance(default, bool):
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=default,
                                help=_FLAG_HELP[f.name])
        else:
            parser.add_argument(flag, dest=f.name, type=type(default), default=default, help=_FLAG_HELP[f.name],
                                **({"choices": _CHOICES[f.name]} if f.name in _CHOICES else {}))


def settings_from_args(args) -> FedSettings:
    return FedSettings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(FedSettings)})
