"""One-line user errors: every optional extra, when missing, is named by its entry point in one line."""

import sys
from pathlib import Path

import pytest

from crosssite.errors import CrossSiteError, DataError, first_line, require_extra


def _entry_points(tmp_path):
    """(module that is missing, what the user called, the extra the line must name); the scan readers' are
    tested through the reader table (tests/data/test_volumes.py)."""
    from crosssite import dicom_sr, pacs, slurm, tensorboard
    from crosssite.export_formats import onnx_file
    from crosssite.federated import loopback

    return [
        ("onnx", onnx_file.check_installed, "onnx"),
        ("onnxruntime", onnx_file.import_onnxruntime, "onnx"),
        ("submitit", slurm.SlurmLauncher().check, "slurm"),
        ("pynetdicom", lambda: pacs.send([], "127.0.0.1:104"), "dicom-out"),
        ("highdicom", dicom_sr._highdicom, "dicom-out"),
        ("tensorboard", lambda: tensorboard.EventLog(tmp_path), "tensorboard"),
        ("flwr", loopback.require_flower, "fed"),
    ]


def test_every_missing_extra_is_one_line_naming_it(tmp_path, monkeypatch):
    for module, call, extra in _entry_points(tmp_path):
        with monkeypatch.context() as patch:
            patch.setitem(sys.modules, module, None)  # import fails as where the extra is not installed
            with pytest.raises(CrossSiteError) as raised:
                call()
        message = str(raised.value)
        assert f"needs the [{extra}] extra: pip install 'crosssite[{extra}]'" in message, module
        assert "\n" not in message, module


def test_a_file_that_needs_an_extra_is_named_and_the_error_is_a_data_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "json", None)
    with pytest.raises(DataError, match=r"^scan\.x: reading it needs the \[x\] extra"):
        require_extra("json", f"{Path('scan.x')}: reading it", "x", DataError)


def test_first_line_quotes_the_text_or_the_type():
    assert first_line(ValueError("\n  bad header\n  at byte 12")) == "bad header"
    assert first_line(ValueError("")) == "ValueError"
