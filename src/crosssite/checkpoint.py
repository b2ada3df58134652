"""Checkpoints: written atomically, loaded safely (`weights_only=True`), checked before use.

A checkpoint is a plain dict of tensors and Python values:
`format`, `version`, `method`, `config` (a `TrainConfig` dict), `site_names`,
`model` (the method's state dict) and, for the resumable `last.pt`, also
`optimizer`, `scheduler`, `epoch` (epochs completed) and `best_val_auc`.
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import torch

from .config import TrainConfig
from .errors import CheckpointError, CrossSiteError
from .io import atomic_write

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
        raise CheckpointError(f"{path}: not a crosssite checkpoint ({_first_line(e)})") from None
    except Exception as e:  # torch raises many kinds for a file that is not a torch.save archive
        raise CheckpointError(f"{path}: not a crosssite checkpoint ({_first_line(e)})") from None
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


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def method_from_checkpoint(payload: dict, path: Path | str = "checkpoint"):
    """Rebuild the trained method (in eval mode) with its config and site names."""
    from .methods import create_method

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
    return method, config, list(payload["site_names"])
