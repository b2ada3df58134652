"""Checkpoints: written atomically, loaded safely (`weights_only=True`), checked before use.

A checkpoint is a plain dict of tensors and Python values:
`format`, `version`, `method`, `config` (a `TrainConfig` dict), `site_names`,
`model` (the method's state dict) and, for the resumable `last.pt`, also
`optimizer`, `scheduler`, `epoch` (epochs completed) and `best_val_auc`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .config import TrainConfig
from .errors import CheckpointError
from .io import atomic_write

FORMAT = "crosssite-checkpoint"
VERSION = 1


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
    atomic_write(Path(path), lambda tmp: torch.save(payload, tmp))


def load_checkpoint(path: Path, expect_method: str | None = None) -> dict:
    """Load and check a checkpoint; every failure is one clear `CheckpointError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds for a file that is not a torch.save archive
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: not a crosssite checkpoint ({first_line})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a crosssite checkpoint (no '{FORMAT}' marker)")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {payload.get('version')} is not supported (expected {VERSION})")
    if expect_method is not None and payload["method"] != expect_method:
        raise CheckpointError(f"{path}: checkpoint of method {payload['method']!r}, expected {expect_method!r}")
    return payload


def method_from_checkpoint(payload: dict, path: Path | str = "checkpoint"):
    """Rebuild the trained method (in eval mode) with its config and site names."""
    from .methods import create_method

    config = TrainConfig.from_dict(payload["config"], source=str(path))
    method = create_method(payload["method"], len(payload["site_names"]), config)
    try:
        method.load_state_dict(payload["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit method {payload['method']!r} ({str(e).splitlines()[0]})") from None
    method.eval()
    return method, config, list(payload["site_names"])
