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

from ..config import choice_problems, from_mapping, setting, setting_type, type_problems
from ..errors import CrossSiteError
from ..io import atomic_write_text, read_yaml

WEIGHTINGS = ("images", "uniform")
#: the dtype of the shared tensors in messages: float16 halves every message; averaging stays in float32
TRANSFERS = ("float32", "float16")


@dataclass
class FedSettings:
    """How a federation runs, declared as TrainConfig's settings are (flags, choices, types: crosssite.config)."""

    rounds: int = setting(100, "rounds of local training and averaging (the cosine schedule spans them)")
    epochs_per_round: int = setting(1, "local epochs (passes over the site's own training images) per round "
                                       "(FedBN's code: 1)")
    steps_per_round: int = setting(0, "local steps per round instead of epochs (0: use --epochs-per-round)")
    weighting: str = setting("images", "average the shared state by each site's training images (FedAvg) or "
                                       "uniformly (FedBN's code)", choices=WEIGHTINGS)
    keep_optimizer: bool = setting(True, "keep each site's Adam moments between rounds (no: a fresh optimiser "
                                         "state every round)")
    min_sites: int = setting(0, "fewest sites a round goes on with (0: every site); the others miss that round "
                                "and the log names who took part")
    transfer: str = setting("float32", "dtype of the shared weights in messages (float16 halves what travels; the "
                                       "coordinator keeps and averages float32)", choices=TRANSFERS)

    def validate(self) -> None:
        if problems := type_problems(self):  # the range rules below compare values
            raise CrossSiteError("invalid federation settings: " + "; ".join(problems))
        problems = choice_problems(self)
        if self.rounds < 1:
            problems.append(f"rounds must be at least 1, got {self.rounds}")
        if self.epochs_per_round < 1 or self.steps_per_round < 0:
            problems.append(f"epochs_per_round must be at least 1 and steps_per_round at least 0, "
                            f"got {self.epochs_per_round}, {self.steps_per_round}")
        if self.min_sites < 0:
            problems.append(f"min_sites must be at least 0, got {self.min_sites}")
        if problems:
            raise CrossSiteError("invalid federation settings: " + "; ".join(problems))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict, source: str = "federation settings") -> FedSettings:
        return from_mapping(cls, values, source)


def save_settings(settings: FedSettings, path: Path) -> None:
    atomic_write_text(path, yaml.safe_dump(settings.to_dict(), sort_keys=False))


def load_settings(path: Path) -> FedSettings:
    values = read_yaml(path, "federation settings") or {}
    if not isinstance(values, dict):
        raise CrossSiteError(f"{path}: expected a mapping of setting: value")
    return FedSettings.from_dict(values, source=str(path))


def add_settings_flags(parser) -> None:
    """A flag for every FedSettings field (crosssite federate)."""
    import argparse

    for f in dataclasses.fields(FedSettings):
        flag, help_text = "--" + f.name.replace("_", "-"), f.metadata["help"] + " (default %(default)s)"
        if setting_type(f.name, FedSettings) is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=f.default,
                                help=help_text)
        else:
            parser.add_argument(flag, dest=f.name, type=setting_type(f.name, FedSettings), default=f.default,
                                help=help_text, choices=f.metadata["choices"] or None)


def settings_from_args(args) -> FedSettings:
    return FedSettings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(FedSettings)})
