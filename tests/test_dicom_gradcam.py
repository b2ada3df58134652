"""predict --dicom-out DIR --dicom-gradcam: a Grad-CAM Secondary Capture of each DICOM series' top slices."""

import contextlib
import io
import json
import shutil
import subprocess

import numpy as np
import pytest

from crosssite.cli import main
from crosssite.data.sites import SAMPLE_DATA

pydicom = pytest.importorskip("pydicom")
pytest.importorskip("highdicom", reason="Secondary Capture tests need the dicom-out extra: pip install -e '.[dicom-out]'")


@pytest.fixture(scope="module")
def captured(tiny_run, dicom_series, tmp_path_factory):
    """(predict --json rows, the SC datasets, the SR dataset) for one series and one PNG."""
    out = tmp_path_factory.mktemp("sc")
    png = sorted((SAMPLE_DATA / "covid-ct" / "CT_COVID").iterdir())[0]
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        assert main(["predict", str(tiny_run / "best.pt"), "--site", "covid-ct", "--json", "--top-k", "3",
                     "--dicom-out", str(out), "--dicom-gradcam", str(dicom_series), str(png)]) == 0
    captures = [pydicom.dcmread(p) for p in sorted(out.glob("SC_*.dcm"))]
    (sr,) = [pydicom.dcmread(p) for p in out.glob("SR_*.dcm")]
    return json.loads(stdout.getvalue()), captures, sr


def test_one_capture_per_top_slice_referencing_it_in_the_source_study(captured, dicom_series):
    rows, captures, sr = captured
    sources = {ds.SOPInstanceUID: ds for ds in (pydicom.dcmread(p, stop_before_pixels=True)
                                                for p in dicom_series.iterdir())}
    first = next(iter(sources.values()))
    series = rows[0]
    top = sorted(series["slices"], key=lambda s: s["p_covid"], reverse=True)[:3]
    assert len(captures) == 3  # the PNG input gets none
    for sc in captures:
        assert sc.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
        assert (sc.StudyInstanceUID, sc.PatientID) == (first.StudyInstanceUID, first.PatientID)
        assert sc.SeriesInstanceUID not in (first.SeriesInstanceUID, sr.SeriesInstanceUID)
        assert "NOT FOR CLINICAL USE" in sc.SeriesDescription and "NOT FOR CLINICAL USE" in sc.ImageComments
        assert list(sc.PatientOrientation) == ["L", "P"]
        (reference,) = sc.SourceImageSequence
        assert reference.ReferencedSOPInstanceUID in sources
    assert len({sc.SeriesInstanceUID for sc in captures}) == 1
    # the explained slices are the scan's top 3, each with its own P(COVID) in the comments
    shown = {float(sc.ImageComments.split("P(COVID)=")[1].split(" ")[0]) for sc in captures}
    assert shown == {round(s["p_covid"], 4) for s in top}


def test_the_capture_is_the_slice_under_the_colour_map(captured, dicom_series):
    _, captures, _ = captured
    slice_shape = pydicom.dcmread(next(dicom_series.iterdir())).pixel_array.shape
    for sc in captures:
        pixels = sc.pixel_array
        assert sc.PhotometricInterpretation == "RGB" and pixels.shape == (*slice_shape, 3)
        assert pixels.dtype == np.uint8 and np.ptp(pixels.astype(int), axis=2).max() > 0  # coloured, not gray


def test_needs_dicom_out_and_the_torch_backend(tiny_run, dicom_series, capsys):
    assert main(["predict", str(tiny_run / "best.pt"), "--site", "covid-ct", "--dicom-gradcam", str(dicom_series)]) == 2
    assert "--dicom-out" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (Debian dicom3tools) not installed")
def test_dciodvfy_finds_no_error(captured, tmp_path):
    _, captures, _ = captured
    path = tmp_path / "sc.dcm"
    captures[0].save_as(path, enforce_file_format=True)
    checked = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    report = checked.stdout + checked.stderr
    assert "SecondaryCapture" in report or "SCImage" in report, report
    assert not [line for line in report.splitlines() if line.startswith("Error")], report
