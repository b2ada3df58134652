"""predict --dicom-out: one DICOM Comprehensive SR per series read, referencing it, carrying the result."""

import contextlib
import hashlib
import io
import json
import shutil
import subprocess

import pytest

from conftest import sr_content
from crosssite.cli import main
from crosssite.data.sites import SAMPLE_DATA

pydicom = pytest.importorskip("pydicom")
pytest.importorskip("highdicom", reason="SR tests need the dicom-out extra: pip install -e '.[dicom-out]'")


@pytest.fixture(scope="module")
def reported(tiny_run, dicom_series, tmp_path_factory):
    """(predict --json rows, SR dataset, SR path, the printed stderr) for one series and one PNG
    (module-scoped, so the CLI's output is captured here rather than by capsys)."""
    out = tmp_path_factory.mktemp("sr")
    png = sorted((SAMPLE_DATA / "covid-ct" / "CT_COVID").iterdir())[0]
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        assert main(["predict", str(tiny_run / "best.pt"), "--site", "covid-ct", "--json", "--dicom-out", str(out),
                     str(dicom_series), str(png)]) == 0
    (path,) = sorted(out.iterdir())
    return json.loads(stdout.getvalue()), pydicom.dcmread(path), path, stderr.getvalue()


def test_one_sr_per_series_and_a_note_for_other_inputs(reported):
    rows, _, path, err = reported
    assert path.name.startswith("SR_") and path.suffix == ".dcm"
    assert f"{rows[1]['path']}: not a DICOM series (an image file): no SR" in err


def test_sr_references_the_series_and_copies_the_patient(reported, dicom_series):
    _, sr, _, _ = reported
    sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(dicom_series.iterdir())]
    assert sr.SOPClassUID == pydicom.uid.ComprehensiveSRStorage and sr.Modality == "SR"
    assert sr.StudyInstanceUID == sources[0].StudyInstanceUID and sr.PatientID == sources[0].PatientID
    assert sr.SeriesInstanceUID != sources[0].SeriesInstanceUID
    (study,) = sr.CurrentRequestedProcedureEvidenceSequence
    (series,) = study.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == sources[0].SeriesInstanceUID
    assert {r.ReferencedSOPInstanceUID for r in series.ReferencedSOPSequence} == {s.SOPInstanceUID for s in sources}
    assert "NOT FOR CLINICAL USE" in sr.SeriesDescription and sr.VerificationFlag == "UNVERIFIED"


def test_sr_carries_the_calibrated_value_label_ood_and_model(reported, tiny_run):
    rows, sr, _, _ = reported
    content = sr_content(sr)
    (p,) = content["Probability of COVID-19, calibrated"]
    assert p == pytest.approx(rows[0]["p_covid"], abs=1e-12)  # a DICOM decimal string holds 16 characters
    assert content["COVID-19"] == [("52101004", "SCT", "Present") if rows[0]["label"] == "COVID"
                                   else ("272519000", "SCT", "Absent")]
    assert content["Out of distribution for the model"] == [("373066001", "SCT", "Yes") if rows[0]["ood"]
                                                            else ("373067005", "SCT", "No")]
    parameters = content["Algorithm Parameters"]
    digest = hashlib.sha256((tiny_run / "best.pt").read_bytes()).hexdigest()
    assert f"checkpoint sha256: {digest}" in parameters
    assert "training sites: sars-cov-2-ct, covid-ct" in parameters
    assert any(t.startswith("NOT FOR CLINICAL USE") for t in parameters)
    assert content["Algorithm Name"] == ["crosssite contrastive (covidnet-redesign)"]


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (Debian dicom3tools) not installed")
def test_dciodvfy_finds_no_error(reported):
    _, _, path, _ = reported
    checked = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    report = checked.stdout + checked.stderr
    assert "ComprehensiveSR" in report
    assert not [line for line in report.splitlines() if line.startswith("Error")], report
