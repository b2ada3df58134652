"""The table of export formats: what `crosssite export --format` writes and `predict --backend` runs.

An entry says how to write a traced network to a file, put crosssite's metadata into it, tell such a
file from others, and load it as a function from a (N, 3, S, S) float32 array to the outputs. Export,
the exported-model loader (crosssite.exported), predict's backends and the command line's help all
read this table, so a new format is one `register_export_format` call in its own module.

Every file carries one JSON document of metadata (crosssite.export): format, version, site, method,
config, input preprocessing, batch-norm statistics and the agreement measured when it was written.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CrossSiteError
from ..preprocessing import Preprocessing

METADATA_KEY = "crosssite"
EXPORT_FORMAT = "crosssite-export"
EXPORT_VERSION = 1
INPUT = "image"
OUTPUTS = ("logits", "bn_mean", "bn_sq_mean")

#: run(x) -> outputs: a (N, 3, S, S) float32 array in, [logits (N, 2), and bn_mean, bn_sq_mean if any] out
Runner = Callable[[np.ndarray], list[np.ndarray]]


@dataclass(frozen=True)
class ExportFormat:
    name: str  #: --format NAME of `crosssite export`
    backend: str  #: --backend NAME of `crosssite predict` that runs these files
    files: str  #: what the files are called in messages, e.g. "ONNX exports (.onnx)"
    suffix: str  #: the usual file suffix, for hints
    recognizes: Callable[[Path], bool]  #: is this file an export of this format (cheap: no loading)
    write: Callable[..., None]  #: write(network, example input, path); network.outputs names its outputs
    set_metadata: Callable[[Path, str], None]  #: store the metadata text in the file (replacing any)
    load: Callable[[Path, int | None], tuple[Runner, str | None]]  #: (runner, metadata text) of a file
    check_installed: Callable[[], None] = lambda: None  #: raise a one-line error naming a missing extra


EXPORT_FORMATS: dict[str, ExportFormat] = {}


def register_export_format(fmt: ExportFormat) -> ExportFormat:
    EXPORT_FORMATS[fmt.name] = fmt
    return fmt


def export_format(name: str) -> ExportFormat:
    if name not in EXPORT_FORMATS:
        raise CrossSiteError(f"--format {name!r}: expected one of {', '.join(EXPORT_FORMATS)}")
    return EXPORT_FORMATS[name]


def format_of_backend(backend: str) -> ExportFormat:
    return next(fmt for fmt in EXPORT_FORMATS.values() if fmt.backend == backend)


def export_backends() -> list[str]:
    """predict's --backend values beyond torch, one per export format."""
    return [fmt.backend for fmt in EXPORT_FORMATS.values()]


def format_of(path: Path) -> ExportFormat | None:
    """The format whose files `path` looks like, or None."""
    return next((fmt for fmt in EXPORT_FORMATS.values() if fmt.recognizes(Path(path))), None)


def _format_of_file(path: Path) -> ExportFormat:
    path = Path(path)
    if not path.is_file():
        raise CrossSiteError(f"{path}: no such export file")
    fmt = format_of(path)
    if fmt is None:
        raise CrossSiteError(f"{path}: not a crosssite export (not one of: "
                             f"{', '.join(f.files for f in EXPORT_FORMATS.values())})")
    return fmt


def load_export(path: Path, threads: int | None = None, fmt: ExportFormat | None = None) -> tuple[Runner, dict]:
    """(run, metadata) of an export file (of `fmt`, else of the format it looks like)."""
    path = Path(path)
    fmt = fmt or _format_of_file(path)
    run, text = fmt.load(path, threads)
    return run, parse_metadata(path, text)


def read_metadata(path: Path) -> dict:
    """The crosssite metadata of an export file."""
    return load_export(path)[1]


def set_metadata(path: Path, metadata: dict, fmt: ExportFormat | None = None) -> None:
    """Put the metadata document into an export file (replacing any earlier one)."""
    (fmt or _format_of_file(path)).set_metadata(Path(path), json.dumps(metadata))


def parse_metadata(path: Path, text: str | None) -> dict:
    if not text:
        raise CrossSiteError(f"{path}: not a crosssite export (no {METADATA_KEY!r} metadata); "
                             f"make one with: crosssite export CKPT --site NAME --out FILE")
    metadata = json.loads(text)
    if metadata.get("format") != EXPORT_FORMAT or metadata.get("version") != EXPORT_VERSION:
        raise CrossSiteError(f"{path}: export format {metadata.get('format')} version {metadata.get('version')} "
                             f"is not supported (expected {EXPORT_FORMAT} {EXPORT_VERSION})")
    return metadata


def preprocessing_of(metadata: dict) -> Preprocessing:
    """How inputs are prepared for an export: its input's preprocessing, or for files written before the
    input named the CT window and slices, those of its config (the same values)."""
    source = metadata["input"] if "window" in metadata["input"] else metadata["config"]
    return Preprocessing(metadata["input"]["image_size"], source["window"], source["slices"])


def p_covid(logits: np.ndarray) -> np.ndarray:
    """P(COVID) = softmax(logits)[:, 1] of an export's logits output."""
    logits = logits.astype(np.float64)
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted[:, 1] / shifted.sum(axis=1)
