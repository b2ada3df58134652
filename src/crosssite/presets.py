"""Named settings for `crosssite sweep --preset`: the paper's scale, a CPU-sized one, and the demo's.

A preset is a base `TrainConfig` (the per-job fields method, backbone, fold, seed and out
are filled in by the sweep) plus the number of seeds; `config.folds` is the number of
cross-validation folds, and the sweep runs every one of them. `crosssite demo` trains its preset's
config once.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import TrainConfig
from .data.sites import SAMPLE_DATA
from .errors import CrossSiteError


@dataclass(frozen=True)
class Preset:
    config: TrainConfig
    seeds: int
    about: str


PRESETS = {
    # Wang, Liu & Dou 2020, Sec. IV-A: 224 px, batch 32 (16 per site), Adam lr 1e-4 with cosine
    # decay, 100 epochs, temperature 0.05, alpha 1; 4-fold cross-validation, 3 runs: TrainConfig's defaults.
    "paper": Preset(
        TrainConfig(),
        seeds=3,
        about="the paper's settings (a GPU job: 108 trainings of 100 epochs at 224 px)",
    ),
    # the whole Table I (9 rows x 4 folds x 1 seed) within 3 hours on 2 CPU cores; see README.md.
    # One contrastive job (fold 0) took 211 s of CPU time with 1 thread; lr 1e-3 instead of 1e-4
    # because in 8 epochs 1e-4 leaves the networks far from trained (validation AUC 0.91/0.81 after
    # 10 epochs at 1e-4 against 0.96/0.88 after 7 at 1e-3, same job).
    "cpu": Preset(
        TrainConfig(
            image_size=64, width=0.25, epochs=8, batch_per_site=16, lr=1e-3, temperature=0.05, alpha=1.0, folds=4
        ),
        seeds=1,
        about="64 px, width 0.25, 8 epochs, lr 1e-3, 1 seed: the whole Table I on 2 CPU cores within 3 hours",
    ),
    # `crosssite demo`: the paper's method on the shipped sample, about a minute on 2 CPU cores (README)
    "demo": Preset(
        TrainConfig(method="contrastive", data=str(SAMPLE_DATA), epochs=20, batch_per_site=8, image_size=64,
                    width=0.25, lr=1e-3, out="runs/demo"),
        seeds=1,
        about="the shipped sample (data included), 64 px, width 0.25, 20 epochs, batch 8 + 8, lr 1e-3: the demo",
    ),
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise CrossSiteError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[name]
