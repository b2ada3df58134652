"""Atomic file writes: a killed process leaves the old file or the new one, never half of one.

Under torchrun only rank 0 writes: on the other ranks, which compute the same results, every
write here does nothing (crosssite.distributed), so no two processes write one file.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import yaml

from . import ranks
from .errors import CrossSiteError, CrossSiteWarning


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` on a temporary file beside `path`, then rename it over `path`."""
    if not ranks.is_main():
        return
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(tmp)
        try:
            write(tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    except OSError as e:  # read-only folder, disk full, a file where a folder should be: the old file stays
        raise CrossSiteError(f"{path}: cannot write ({e.strerror or e})") from None


def atomic_write_text(path: Path, text: str) -> None:
    """UTF-8; a file name that is not UTF-8 (legal on Linux, held as surrogates by Python) is written as
    its own bytes, so that it names the same file when read back with errors="surrogateescape"."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8", errors="surrogateescape"))


def atomic_write_csv(path: Path, rows: list[dict], fields: list[str] | None = None) -> None:
    """Rows under a header of `fields` (default: the first row's keys; no rows and no fields: an empty file)."""
    buffer = io.StringIO()
    fields = list(fields if fields is not None else rows[0] if rows else [])
    if fields:
        writer = csv.DictWriter(buffer, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def append_jsonl(path: Path, record: dict) -> None:
    """Append one JSON line and flush it to disk; a torn last line (see `read_jsonl`) is cut off first,
    so that the new line does not continue it."""
    if not ranks.is_main():
        return
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _end_last_line(path)
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise CrossSiteError(f"{path}: cannot write ({e.strerror or e})") from None


def _end_last_line(path: Path) -> None:
    """A last line without its newline: end it if it holds a whole record, else cut it off."""
    if not path.exists():
        return
    content = path.read_bytes()
    if not content or content.endswith(b"\n"):
        return
    start = content.rfind(b"\n") + 1
    try:
        json.loads(content[start:])
    except (json.JSONDecodeError, UnicodeDecodeError):
        os.truncate(path, start)
        return
    with open(path, "ab") as f:
        f.write(b"\n")


def read_jsonl(path: Path) -> list[dict]:
    """All records (JSON objects); a torn last line (the writer was killed mid-write) is dropped with a
    warning, any other bad line is an error."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise CrossSiteError(f"{path}: not a JSON-lines file (not UTF-8 text)") from None
    lines = [line for line in text.splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                warnings.warn(f"{path}: dropped its last line, which is torn (a writer was stopped mid-line)",
                              CrossSiteWarning, stacklevel=2)
                break
            raise CrossSiteError(f"{path}: line {number} is not valid JSON") from None
        if not isinstance(record, dict):
            raise CrossSiteError(f"{path}: line {number} is not a JSON object")
        records.append(record)
    return records


def read_yaml(path: Path, what: str):
    """The YAML document in `path`; an unreadable file or bad YAML is one line naming the file (and line)."""
    path = Path(path)
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise CrossSiteError(f"{path}: cannot read {what} ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise CrossSiteError(f"{path}: not a {what} (not UTF-8 text)") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = " ".join(str(getattr(e, "problem", None) or e).split())
        raise CrossSiteError(f"{where}: not valid YAML ({problem})") from None


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file's bytes (checkpoints and exports name the exact file they came from)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
