"""Checkpoints: written atomically, loaded safely (`weights_only=True`), checked before use.

A checkpoint is a plain dict of tensors and Python values:
`format`, `version`, `method`, `config` (a `TrainConfig` dict), `site_names`,
`model` (the method's state dict) and, for the resumable `last.pt`, also
`optimizer`, `scheduler`, `epoch` (epochs completed) and `best_val_auc`.
`load_trained` rebuilds the trained method from one: every command that uses a trained model loads it there.
"""

from __future__ import annotations

import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .config import TrainConfig
from .errors import CheckpointError, CrossSiteError, first_line
from .io import atomic_write

if TYPE_CHECKING:
    from .methods.base import Method

FORMAT = "crosssite-checkpoint"
VERSION = 1
#: what every checkpoint holds besides the format marker: the key and its type
REQUIRED = {"method": str, "config": dict, "site_names": list, "model": dict}


def save_checkpoint(path: Path, method, config: TrainConfig, site_names: list[str], **extra) -> None:
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "method": method.name,
        "config": config.to_dict(),
        "site_names": list(site_names),
        "model": method.state_dict(),
        **extra,
    }
    rewrite_checkpoint(path, payload)


def rewrite_checkpoint(path: Path, payload: dict) -> None:
    """Write a loaded (and checked) checkpoint payload back, e.g. with entries added; atomically."""
    atomic_write(Path(path), lambda tmp: _save(payload, tmp))


def _save(payload: dict, tmp: Path) -> None:
    try:
        torch.save(payload, tmp)
    except RuntimeError as e:  # how torch's writer reports a failed write (disk full, file size limit)
        raise OSError(str(e).strip().splitlines()[0]) from None


def load_checkpoint(path: Path, expect_method: str | None = None) -> dict:
    """Load and check a checkpoint; every failure is one clear `CheckpointError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickles before refusing them
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" in str(e):  # torch's advice to load it unsafely is not ours to give
            raise CheckpointError(f"{path}: not a crosssite checkpoint (it holds Python objects whose loading "
                                  "could run code; refused)") from None
        raise CheckpointError(f"{path}: not a crosssite checkpoint ({first_line(e)})") from None
    except Exception as e:  # torch raises many kinds for a file that is not a torch.save archive
        raise CheckpointError(f"{path}: not a crosssite checkpoint ({first_line(e)})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a crosssite checkpoint (no '{FORMAT}' marker)")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {payload.get('version')} is not supported (expected {VERSION})")
    damaged = [key for key, kind in REQUIRED.items() if not isinstance(payload.get(key), kind)]
    if damaged:
        raise CheckpointError(f"{path}: damaged checkpoint (no valid {', '.join(damaged)})")
    if expect_method is not None and payload["method"] != expect_method:
        raise CheckpointError(f"{path}: checkpoint of method {payload['method']!r}, expected {expect_method!r}")
    return payload


@dataclass
class TrainedModel:
    """A trained method rebuilt from its checkpoint (eval mode), with the settings and sites it was trained on."""

    path: Path
    method: Method
    config: TrainConfig
    site_names: list[str]
    payload: dict  # the whole checkpoint: epoch, adaptations, ...

    def site_index(self, site: str) -> int:
        """Index of `site` among the checkpoint's sites, or a clear error saying how to add a new one."""
        if site not in self.site_names:
            raise CrossSiteError(
                f"{self.path}: unknown site {site!r}; this checkpoint knows {', '.join(self.site_names)}. "
                f"Pass one of them with --site (evaluate: --as-site), or --site auto, or first add the new site "
                f"from its unlabelled images: crosssite adapt {self.path} --site {site}=FOLDER --out NEW.pt"
            )
        return self.site_names.index(site)


def load_trained(path: Path | str, device: str = "cpu", expect_method: str | None = None) -> TrainedModel:
    """The one way to load a trained model: check the file, rebuild its method from the config it carries,
    load the weights and move it to `device` (crosssite.distributed.device: "auto", "cpu", "cuda:N")."""
    from .distributed import device as resolve_device
    from .methods import create_method

    payload = load_checkpoint(Path(path), expect_method)
    try:
        config = TrainConfig.from_dict(payload["config"], source="config")
        config.validate()
        method = create_method(payload["method"], len(payload["site_names"]), config)
    except CrossSiteError as e:
        raise CheckpointError(f"{path}: unusable checkpoint ({e})") from None
    try:
        method.load_state_dict(payload["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit method {payload['method']!r} ({str(e).splitlines()[0]})") from None
    method.eval()
    method.to(resolve_device(device))
    return TrainedModel(Path(path), method, config, list(payload["site_names"]), payload)
