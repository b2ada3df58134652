"""Per-scan / per-patient decisions: aggregation, metrics on prediction rows, and the command line on
DICOM series end to end."""

import numpy as np
import pytest

from crosssite.cli import main
from crosssite.data.sites import read_covid_ct
from crosssite.scans import aggregate, grouped, level_metrics


def test_aggregates():
    probs = [0.1, 0.9, 0.2, 0.8, 0.3]
    assert aggregate(probs, "topk", 2) == pytest.approx(0.85)
    assert aggregate(probs, "topk", 10) == pytest.approx(np.mean(probs))
    assert aggregate(probs, "max") == 0.9 and aggregate(probs, "mean") == pytest.approx(0.46)


def test_scan_rows_from_slice_rows():
    rows = [{"site": "h", "path": f"/d/s{k}#slice={i}", "label": str(k % 2), "p_covid": str(p), "patient": ""}
            for k, ps in enumerate([[0.1, 0.2], [0.7, 0.9, 0.4]]) for i, p in enumerate(ps)]
    groups = grouped(rows, "scan", "max")["h"]
    assert [(g["key"], g["label"], g["p_covid"], g["slices"]) for g in groups] == [("/d/s0", 0, 0.2, 2),
                                                                                 ("/d/s1", 1, 0.9, 3)]
    levels = level_metrics(rows, "max")
    assert levels["scan"]["h"]["n"] == 2 and levels["scan"]["h"]["auc"] == 1.0
    assert levels["patient"] == {}  # no patient ids


def test_patient_level_on_covid_ct_ids(sample_dir):
    """COVID-CT's images carry patient ids: patient-level metrics work on today's PNG data."""
    site = read_covid_ct(sample_dir / "covid-ct")
    rng = np.random.default_rng(0)
    rows = [{"site": "covid-ct", "path": str(s.path), "label": s.label, "patient": s.patient,
             "p_covid": float(np.clip(0.6 * s.label + 0.4 * rng.random(), 0, 1))} for s in site.samples]
    levels = level_metrics(rows)
    assert levels["scan"] == {}  # PNG slices are no scans
    patients = {s.patient for s in site.samples}
    assert levels["patient"]["covid-ct"]["n"] == len(patients) < len(site)
    assert levels["patient"]["covid-ct"]["auc"] > 0.9


def test_train_predict_evaluate_on_dicom_series(ct_series_site, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--method", "single", "--site", f"hosp={ct_series_site}", "--epochs", "1",
                 "--image-size", "32", "--width", "0.25", "--batch-per-site", "4", "--slices", "::2",
                 "--window", "1400,-500", "--out", str(run), "--quiet"]) == 0
    assert "window:\n- 1400.0\n- -500.0" in (run / "config.yaml").read_text()
    assert (run / "predictions.csv").read_text().splitlines()[1].split(",")[2].startswith("demo-")  # patient
    capsys.readouterr()
    series = ct_series_site.parent / "covid-00"
    assert main(["predict", str(run / "best.pt"), "--site", "hosp", str(series), "--aggregate", "max"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and all("#slice=" in line for line in lines[:3])  # slices 0, 2, 4
    slice_probs = [float(line.split("P(COVID)=")[1].split()[0]) for line in lines[:3]]
    assert lines[3].startswith(f"{series}\tP(COVID)={max(slice_probs):.4f}") and "max over slices of 3" in lines[3]
    assert main(["evaluate", str(run / "best.pt")]) == 0
    out = capsys.readouterr().out
    assert "scan-level (mean of the top 5 slices, n = scans):" in out and "patient-level" in out


def test_predict_input_folder_without_scans(tmp_path):
    from crosssite.errors import DataError
    from crosssite.inputs import expand_inputs

    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: no CT scan in it"):
        expand_inputs([tmp_path / "empty"])
