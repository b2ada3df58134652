"""predict --dicom-out --send: the SR reaches a real PACS (Orthanc on loopback, started and stopped by
scripts/orthanc.py) and reads back through its REST API; where Orthanc is not installed, a pynetdicom
storage SCP on loopback stands in (a warning says so). Failures are one line; the file stays."""

import contextlib
import io
import json
import sys
import warnings
from pathlib import Path

import pytest

from conftest import sr_content
from crosssite.cli import main

pydicom = pytest.importorskip("pydicom")
pynetdicom = pytest.importorskip("pynetdicom", reason="PACS tests need the dicom-out extra: pip install -e '.[dicom-out]'")
sys.path.insert(0, str(Path(__file__).parents[1] / "scripts"))
import orthanc  # noqa: E402

CALLING_AE = "CROSSSITE_TEST"


class StorageSCP:
    """The stand-in PACS: a pynetdicom storage SCP on 127.0.0.1 accepting CALLING_AE, keeping what it gets."""

    called_ae = "STORESCP"

    def __init__(self, status: int = 0x0000):
        from pynetdicom import AE, AllStoragePresentationContexts, evt

        self.stored, self.status = [], status
        ae = AE(ae_title=self.called_ae)
        ae.supported_contexts = AllStoragePresentationContexts
        ae.require_calling_aet = [CALLING_AE]
        self.dicom_port = orthanc.free_port()
        self.server = ae.start_server(("127.0.0.1", self.dicom_port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._store)])

    def _store(self, event):
        if self.status == 0x0000:
            ds = event.dataset
            ds.file_meta = event.file_meta
            self.stored.append(ds)
        return self.status

    def datasets(self):
        return list(self.stored)

    def stop(self):
        self.server.shutdown()


class RunningOrthanc:
    """Orthanc through scripts/orthanc.py; what it stored, read back through its REST API."""

    def __init__(self):
        self.server = orthanc.start(CALLING_AE)
        self.called_ae, self.dicom_port = self.server.called_ae, self.server.dicom_port

    def datasets(self):
        return [pydicom.dcmread(io.BytesIO(self.server.get(f"/instances/{i}/file")))
                for i in self.server.get_json("/instances")]

    def stop(self):
        self.server.stop()


@pytest.fixture
def pacs():
    if orthanc.executable() is None:
        warnings.warn("Orthanc is not installed: testing against a pynetdicom storage SCP on loopback instead "
                      "(apt-get install orthanc runs the real PACS)")
        server = StorageSCP()
    else:
        server = RunningOrthanc()
    yield server
    server.stop()


def _predict(tiny_run, series, out, *extra):
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(["predict", str(tiny_run / "best.pt"), "--site", "auto", "--json", "--dicom-out", str(out),
                     *extra, str(series)])
    return code, stdout.getvalue(), stderr.getvalue()


def test_sr_sent_to_the_pacs_reads_back_with_references_value_and_codes(pacs, tiny_run, dicom_series, tmp_path):
    code, out, err = _predict(tiny_run, dicom_series, tmp_path, "--send", f"127.0.0.1:{pacs.dicom_port}",
                              "--called-ae", pacs.called_ae, "--calling-ae", CALLING_AE)
    assert code == 0, err
    (row,) = json.loads(out)
    (sr,) = pacs.datasets()
    (written,) = tmp_path.iterdir()
    assert sr.SOPInstanceUID == pydicom.dcmread(written).SOPInstanceUID
    source = pydicom.dcmread(next(dicom_series.iterdir()), stop_before_pixels=True)
    assert sr.StudyInstanceUID == source.StudyInstanceUID
    (series,) = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
    assert series.SeriesInstanceUID == source.SeriesInstanceUID and len(series.ReferencedSOPSequence) == 6
    content = sr_content(sr)
    assert content["Probability of COVID-19, calibrated"] == [pytest.approx(row["p_covid"], abs=1e-12)]
    assert content["COVID-19"][0][0] == ("52101004" if row["label"] == "COVID" else "272519000")
    assert content["Out of distribution for the model"][0][0] == ("373066001" if row["ood"] else "373067005")


def test_grad_cam_captures_reach_the_pacs_in_the_study_beside_the_sr(pacs, tiny_run, dicom_series, tmp_path):
    code, _, err = _predict(tiny_run, dicom_series, tmp_path, "--dicom-gradcam", "--top-k", "2", "--send",
                            f"127.0.0.1:{pacs.dicom_port}", "--called-ae", pacs.called_ae, "--calling-ae", CALLING_AE)
    assert code == 0, err
    stored = pacs.datasets()
    source = pydicom.dcmread(next(dicom_series.iterdir()), stop_before_pixels=True)
    assert sorted(ds.Modality for ds in stored) == ["OT", "OT", "SR"]
    assert {ds.StudyInstanceUID for ds in stored} == {source.StudyInstanceUID}
    assert {ds.SOPInstanceUID for ds in stored} == {pydicom.dcmread(f).SOPInstanceUID for f in tmp_path.iterdir()}


def test_an_unknown_calling_ae_is_one_line_and_the_sr_stays(pacs, tiny_run, dicom_series, tmp_path):
    code, _, err = _predict(tiny_run, dicom_series, tmp_path, "--send", f"127.0.0.1:{pacs.dicom_port}",
                            "--called-ae", pacs.called_ae, "--calling-ae", "INTRUDER")
    assert code == 2
    (line,) = [x for x in err.splitlines() if x.startswith("crosssite: error")]
    assert "association with PACS" in line and "as INTRUDER failed (" in line and str(tmp_path) in line  # rejected, or aborted under load
    assert len(list(tmp_path.iterdir())) == 1 and pacs.datasets() == []


def test_a_failure_status_is_one_line(tiny_run, dicom_series, tmp_path):
    full = StorageSCP(status=0xA700)  # "out of resources"
    try:
        code, _, err = _predict(tiny_run, dicom_series, tmp_path, "--send", f"127.0.0.1:{full.dicom_port}",
                                "--called-ae", full.called_ae, "--calling-ae", CALLING_AE)
    finally:
        full.stop()
    assert code == 2
    assert "failed (status 0xA700); the file stays where it is" in err.strip().splitlines()[-1]
    assert len(list(tmp_path.iterdir())) == 1


def test_send_needs_dicom_out(tiny_run, dicom_series, capsys):
    assert main(["predict", str(tiny_run / "best.pt"), "--site", "auto", "--send", "127.0.0.1:4242",
                 str(dicom_series)]) == 2
    assert "--send stores the SRs of --dicom-out DIR" in capsys.readouterr().err
