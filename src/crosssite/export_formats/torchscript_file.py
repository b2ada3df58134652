"""TorchScript archives, run by torch.jit on the CPU; metadata in the archive's extra file crosssite.json."""

from __future__ import annotations

import contextlib
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch

from ..errors import CrossSiteError
from .registry import ExportFormat, register_export_format

TORCHSCRIPT_METADATA = "crosssite.json"


@contextlib.contextmanager
def _deprecation_notes_silenced():
    """torch 2.13 calls torch.jit.save/load deprecated; the user of an export cannot act on that note."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def is_torchscript_export(path: Path) -> bool:
    """A TorchScript archive with crosssite metadata (a checkpoint is a zip file too, without it)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith(f"/extra/{TORCHSCRIPT_METADATA}") for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def write_torchscript(model, example, path: Path) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the input check's trace note
        torch.jit.save(torch.jit.trace(model, (example,), check_trace=False), str(path))


def set_metadata(path: Path, text: str) -> None:
    with _deprecation_notes_silenced():
        torch.jit.save(torch.jit.load(str(path), map_location="cpu"), str(path),
                       _extra_files={TORCHSCRIPT_METADATA: text})


def load(path: Path, threads: int | None = None):
    extra = {TORCHSCRIPT_METADATA: ""}
    try:
        with _deprecation_notes_silenced():
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except RuntimeError:
        raise CrossSiteError(f"{path}: not a crosssite export (not a TorchScript file)") from None

    def run(x: np.ndarray) -> list[np.ndarray]:
        with torch.no_grad():
            out = module(torch.from_numpy(x))
        return [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]

    return run, extra[TORCHSCRIPT_METADATA]


TORCHSCRIPT = register_export_format(ExportFormat(
    name="torchscript", backend="torchscript", files="TorchScript exports", suffix=".pt",
    recognizes=is_torchscript_export, write=write_torchscript, set_metadata=set_metadata, load=load))
