"""One place for every training setting, with the paper's values as defaults.

`TrainConfig` is the single registry of hyper-parameters: the CLI flags, the
`--config FILE` YAML and the `config.yaml` written next to each run all map
onto its fields, so a saved config reproduces its run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import CrossSiteError
from .io import atomic_write_text


#: settings of how a run executes, not of what it computes: `--resume` may change them
EXECUTION_SETTINGS = ("cuda_graphs", "save_every")


@dataclass
class TrainConfig:
    """Settings of one training run (defaults: Wang, Liu & Dou 2020 and its reference code)."""

    method: str = "contrastive"
    backbone: str = "covidnet-redesign"
    data: str | None = None  # folder holding the known site layouts
    sites: list[str] = field(default_factory=list)  # extra / overriding sites as NAME=PATH
    split: str = "fold"  # "fold" (cross-validation) or "official" (COVID-CT's own split)
    fold: int = 0
    folds: int = 4
    seed: int = 0
    epochs: int = 100
    batch_per_site: int = 16  # paper: batch 32 = 16 per site
    image_size: int = 224
    width: float = 1.0  # channel multiplier; 1.0 is the paper's network
    pepx_relu: bool = False  # reference PEPX has no activation inside; True adds ReLUs
    lr: float = 1e-4
    weight_decay: float = 1e-7  # reference code
    grad_clip: float = 2.0  # gradient-norm clipping, reference code
    temperature: float = 0.05  # NT-Xent temperature (contrastive)
    alpha: float = 1.0  # weight of the contrastive loss (contrastive)
    kd_temperature: float = 2.0  # softening of MS-Net's knowledge transfer (ms-net; see docs/methods.md)
    kd_weight: float = 0.5  # MS-Net universal head: (1 - w) CE + w KL; 0.5/0.5 as liuquande/MS-Net main.py
    group_duplicates: float | None = None  # fold split: keep near-duplicates (correlation >= this) in one part
    eval_batch_size: int = 64
    out: str = "runs/default"
    precision: str = "fp32"  # "bf16": autocast on a CUDA GPU
    cuda_graphs: bool = True  # on a CUDA GPU, replay each training step as one CUDA graph (crosssite.capture)
    save_every: int = 1  # write last.pt (the resume state) every this many epochs, and after the last

    def validate(self) -> None:
        """Reject settings that would fail later, deep inside training."""
        problems = []
        if self.split not in ("fold", "official"):
            problems.append(f"split must be 'fold' or 'official', got {self.split!r}")
        if self.folds < 2:
            problems.append(f"folds must be at least 2, got {self.folds}")
        if not 0 <= self.fold < self.folds:
            problems.append(f"fold must be in 0..{self.folds - 1}, got {self.fold}")
        if self.epochs < 1:
            problems.append(f"epochs must be at least 1, got {self.epochs}")
        if self.batch_per_site < 2:
            problems.append(f"batch_per_site must be at least 2 (batch norm needs two samples), got {self.batch_per_site}")
        if self.image_size < 32 or self.image_size % 16:
            problems.append(f"image_size must be a multiple of 16, at least 32, got {self.image_size}")
        if self.width <= 0:
            problems.append(f"width must be positive, got {self.width}")
        if self.lr <= 0 or self.temperature <= 0:
            problems.append("lr and temperature must be positive")
        if self.kd_temperature <= 0 or not 0 <= self.kd_weight <= 1:
            problems.append(
                f"kd_temperature must be positive and kd_weight in [0, 1], got {self.kd_temperature}, {self.kd_weight}"
            )
        if self.group_duplicates is not None and (self.split != "fold" or not 0 < self.group_duplicates <= 1):
            problems.append(f"group_duplicates must be a correlation in (0, 1] and needs split 'fold', "
                            f"got {self.group_duplicates} with split {self.split!r}")
        if self.precision not in ("fp32", "bf16"):
            problems.append(f"precision must be 'fp32' or 'bf16', got {self.precision!r}")
        if self.save_every < 1:
            problems.append(f"save_every must be at least 1, got {self.save_every}")
        if problems:
            raise CrossSiteError("invalid settings: " + "; ".join(problems))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict, source: str = "config") -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise CrossSiteError(f"{source}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**values)

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)


def load_config(path: str | Path) -> TrainConfig:
    """Read a YAML config (as written next to every run)."""
    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text())
    except OSError as e:
        raise CrossSiteError(f"{path}: cannot read config ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise CrossSiteError(f"{path}: not valid YAML ({e})") from None
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise CrossSiteError(f"{path}: expected a mapping of setting: value")
    return TrainConfig.from_dict(values, source=str(path))


def save_config(config: TrainConfig, path: str | Path) -> None:
    atomic_write_text(Path(path), yaml.safe_dump(config.to_dict(), sort_keys=False))
