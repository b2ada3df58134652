"""One place for every training setting, with the paper's values as defaults.

`TrainConfig` is the single registry of hyper-parameters: the CLI flags (built from
each field's `setting` help by crosssite.cli), the `--config FILE` YAML and the
`config.yaml` written next to each run all map onto its fields, so a saved config
reproduces its run.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .data.volumes import LUNG_WINDOW, parse_slices
from .errors import CrossSiteError
from .io import atomic_write_text, read_yaml
from .models.contract import IMAGE_SIZE_STEP, image_size_problem


#: images per forward pass where nothing is learnt (validation, test, evaluate, predict, adapt, export's
#: check); the one default of every --batch-size but train's
EVAL_BATCH_SIZE = 64

def parse_window(text: str) -> list[float]:
    """--window W,L -> [W, L] (argparse turns the ValueError into a one-line usage error)."""
    width, level = (float(v) for v in text.split(","))
    return [width, level]


def setting(default=dataclasses.MISSING, help: str = "", *, factory=dataclasses.MISSING, choices: tuple = (),
            execution: bool = False, **flag):
    """A field of a settings dataclass (TrainConfig, FedSettings) and its command-line flag: `help`; `choices`, the values it may take (checked by
    `validate`); `execution`, a setting of how a run executes, not of what it computes (`--resume` and a
    sweep's restart may change it); and where the default rule does not fit, `flag` (default --field-name),
    `parse` (default: the field's annotated type), argparse's `metavar`, `action`."""
    return field(default=default, default_factory=factory,
                 metadata={"help": help, "choices": tuple(choices), "execution": execution, **flag})


@dataclass
class TrainConfig:
    """Settings of one training run (defaults: Wang, Liu & Dou 2020 and its reference code)."""

    method: str = setting("contrastive", "the training method")
    backbone: str = setting("covidnet-redesign", "the network")
    data: str | None = setting(None, "folder holding the sites' original layouts (e.g. ../shared/data)")
    sites: list[str] = setting(factory=list, help="add a site (or override a discovered one); repeatable",
                               flag="--site", metavar="NAME=PATH", action="append")
    split: str = setting("fold", "'fold' (stratified, patient-grouped k-fold) or 'official' (COVID-CT's split)",
                         choices=("fold", "official"))
    fold: int = setting(0, "test fold index")
    folds: int = setting(4, "number of cross-validation folds")
    seed: int = setting(0, "random seed (splits, initialisation, sampling, augmentation)")
    epochs: int = setting(100, "training epochs")
    batch_per_site: int = setting(16, "images per site in a step")  # paper: batch 32 = 16 per site
    image_size: int = setting(224, f"input size in pixels, a multiple of {IMAGE_SIZE_STEP} (224 = paper)")
    width: float = setting(1.0, "channel multiplier of the backbone (1.0 = paper)")
    # reference PEPX has no activation inside
    pepx_relu: bool = setting(False, "ReLU inside PEPX blocks")
    lr: float = setting(1e-4, "Adam learning rate (cosine-annealed to 0)")
    weight_decay: float = setting(1e-7, "Adam weight decay")  # reference code
    grad_clip: float = setting(2.0, "gradient-norm clipping")  # reference code
    temperature: float = setting(0.05, "NT-Xent temperature")
    alpha: float = setting(1.0, "weight of the contrastive loss")
    projection_head: str = setting(
        "bn-relu", "end of the contrastive projection head: bn-relu (reference code) or linear (ablation)",
        choices=("bn-relu", "linear"))
    kd_temperature: float = setting(2.0, "ms-net: temperature of the knowledge transfer (KL) term")  # docs/methods.md
    # 0.5/0.5 as liuquande/MS-Net main.py
    kd_weight: float = setting(0.5, "ms-net: universal head loss = (1 - w) CE + w KL")
    group_duplicates: float | None = setting(
        None, "fold split: group near-duplicate images (thumbnail correlation >= this, e.g. 0.95) so none straddles "
        "parts")
    eval_batch_size: int = setting(EVAL_BATCH_SIZE, "batch size for validation and test")
    tail_epochs: int = setting(
        3, "test predictions of the last K epochs are kept (tail_predictions.csv) for the report; never for selection")
    # CT scans (DICOM/NIfTI/MetaImage): HU window [width, level] (lung window), and which slices to use
    window: list[float] = setting(factory=lambda: list(LUNG_WINDOW), parse=parse_window,
                                  help="CT scans: HU window WIDTH,LEVEL (default %g,%g: lung)" % LUNG_WINDOW)
    slices: str = setting("all", "CT scans: 'all' or START:STOP[:STEP] of each scan's slices, e.g. '::4' (every 4th)")
    out: str = setting("runs/default", "run folder")
    precision: str = setting("fp32", "fp32, or bf16 (autocast; CUDA GPUs only)", choices=("fp32", "bf16"))
    cuda_graphs: bool = setting(  # crosssite.capture
        True, "on a CUDA GPU, replay each training step as one CUDA graph (default: on; never on a CPU)",
        execution=True)
    save_every: int = setting(  # crosssite.train.SavePacing
        0, "write last.pt (the resume state) every K epochs and after the last; 0: whenever the time since the "
           "last write reaches 20x what that write took (writing then costs at most 5 %%)", execution=True)
    tensorboard: bool = setting(  # crosssite.tensorboard
        False, "also write the training curves as TensorBoard events into the run folder's tensorboard/ (extra "
               "[tensorboard])", execution=True)

    def validate(self) -> None:
        """Reject settings that would fail later, deep inside training (or, worse, train wrongly)."""
        if problems := type_problems(self):  # the range rules below compare values, so they need the right types
            raise CrossSiteError("invalid settings: " + "; ".join(problems))
        problems = choice_problems(self)
        if self.folds < 2:
            problems.append(f"folds must be at least 2, got {self.folds}")
        if not 0 <= self.fold < self.folds:
            problems.append(f"fold must be in 0..{self.folds - 1}, got {self.fold}")
        if self.epochs < 1:
            problems.append(f"epochs must be at least 1, got {self.epochs}")
        if self.batch_per_site < 2:
            problems.append(f"batch_per_site must be at least 2 (batch norm needs two samples), got {self.batch_per_site}")
        if problem := image_size_problem(self.image_size):
            problems.append(problem)
        if self.width <= 0:
            problems.append(f"width must be positive, got {self.width}")
        if self.lr <= 0 or self.temperature <= 0:
            problems.append(f"lr and temperature must be positive, got {self.lr}, {self.temperature}")
        if self.weight_decay < 0 or self.alpha < 0:
            problems.append(f"weight_decay and alpha must be at least 0, got {self.weight_decay}, {self.alpha}")
        if self.grad_clip <= 0:
            problems.append(f"grad_clip must be positive (a gradient-norm limit), got {self.grad_clip}")
        if self.eval_batch_size < 1:
            problems.append(f"eval_batch_size must be at least 1, got {self.eval_batch_size}")
        if not self.out.strip():
            problems.append("out must name a run folder, got ''")
        if self.kd_temperature <= 0 or not 0 <= self.kd_weight <= 1:
            problems.append(
                f"kd_temperature must be positive and kd_weight in [0, 1], got {self.kd_temperature}, {self.kd_weight}"
            )
        if self.tail_epochs < 1:
            problems.append(f"tail_epochs must be at least 1 (all epochs when more than epochs), got {self.tail_epochs}")
        if self.group_duplicates is not None and (self.split != "fold" or not 0 < self.group_duplicates <= 1):
            problems.append(f"group_duplicates must be a correlation in (0, 1] and needs split 'fold', "
                            f"got {self.group_duplicates} with split {self.split!r}")
        if len(self.window) != 2 or not float(self.window[0]) > 0:
            problems.append(f"window must be [width, level] in HU with a positive width, got {self.window}")
        try:
            parse_slices(self.slices)
        except CrossSiteError as e:
            problems.append(str(e))
        if self.save_every < 0:
            problems.append(f"save_every must be 0 (paced by write time) or a number of epochs, got {self.save_every}")
        if problems:
            raise CrossSiteError("invalid settings: " + "; ".join(problems))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict, source: str = "config") -> TrainConfig:
        return from_mapping(cls, values, source)

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)


#: settings of how a run executes, not of what it computes: `--resume` may change them
EXECUTION_SETTINGS = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.metadata["execution"])


@functools.cache
def _field_types(declared: type) -> dict[str, object]:
    return typing.get_type_hints(declared)


def setting_type(name: str, declared: type = TrainConfig) -> type:
    """The type of setting `name`'s values, from its annotation: int, float, bool, str or list (X | None: X)."""
    kind = _field_types(declared)[name]
    if isinstance(kind, types.UnionType):
        kind = next(t for t in typing.get_args(kind) if t is not type(None))
    return typing.get_origin(kind) or kind


def from_mapping(declared: type, values: dict, source: str):
    """A settings dataclass from a mapping (YAML, a run config) that names only its fields."""
    known = {f.name for f in dataclasses.fields(declared)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise CrossSiteError(f"{source}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return declared(**values)


def type_problems(settings) -> list[str]:
    """What is wrong with the types of a dataclass of `setting` fields (TrainConfig, FedSettings)."""
    return [p for f in dataclasses.fields(settings)
            if (p := _type_problem(type(settings), f.name, getattr(settings, f.name)))]


def choice_problems(settings) -> list[str]:
    """The fields of a dataclass of `setting` fields whose value is not one of its declared `choices`."""
    return [f"{f.name} must be {' or '.join(map(repr, f.metadata['choices']))}, got {getattr(settings, f.name)!r}"
            for f in dataclasses.fields(settings)
            if f.metadata["choices"] and getattr(settings, f.name) not in f.metadata["choices"]]


def _type_problem(declared: type, name: str, value) -> str | None:
    """What is wrong with the type of `value` for field `name` (from its annotation), or None.

    YAML gives bools for "true", ints for "10" and strings for "10a": an int must be a real int (not a
    bool), a float a finite number (an int is accepted), a bool a real bool, a list[X] a list of X.
    """
    expected = _field_types(declared)[name]
    if isinstance(expected, types.UnionType):  # X | None
        if value is None:
            return None
        expected = next(t for t in typing.get_args(expected) if t is not type(None))
    if expected is int:
        ok, kind = _is_int(value), "an integer"
    elif expected is float:
        ok, kind = _is_number(value), "a finite number"
    elif typing.get_origin(expected) is list:
        (item,) = typing.get_args(expected)
        fits = _is_number if item is float else lambda v: isinstance(v, item)
        ok, kind = isinstance(value, list) and all(fits(v) for v in value), f"a list of {item.__name__}"
    elif isinstance(expected, type):
        ok, kind = isinstance(value, expected), {bool: "true or false", str: "a string"}.get(expected, expected.__name__)
    else:  # an annotation this check does not know: left to the range rules
        return None
    if ok:
        return None
    return f"{name} must be {kind}, got {value!r}" + (_NUMBER_AS_TEXT if _looks_numeric(value) else "")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    """A finite int or float (YAML writes 1500 for 1500.0), never a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


_NUMBER_AS_TEXT = " (a number in quotes, or YAML's 1e-4, which it reads as text: write 1.0e-4)"


def _looks_numeric(value) -> bool:
    try:
        return isinstance(value, str) and math.isfinite(float(value))
    except ValueError:
        return False


def load_config(path: str | Path) -> TrainConfig:
    """Read a YAML config (as written next to every run)."""
    path = Path(path)
    values = read_yaml(path, "config")
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise CrossSiteError(f"{path}: expected a mapping of setting: value")
    return TrainConfig.from_dict(values, source=str(path))


def save_config(config: TrainConfig, path: str | Path) -> None:
    atomic_write_text(Path(path), yaml.safe_dump(config.to_dict(), sort_keys=False))
