"""`crosssite federate`: each site ends with an ordinary run folder that the other commands use unchanged."""

import csv
import json

import pytest

from crosssite.cli import main
from crosssite.data.sites import SAMPLE_DATA
from crosssite.data.splits import load_splits, make_splits
from crosssite.data.sites import load_sites
from crosssite.metrics import site_metrics

from conftest import TINY_TRAIN_FLAGS


def test_federate_writes_site_run_folders_that_predict_evaluate_and_adapt_use(tmp_path, capsys):
    out = tmp_path / "fed"
    assert main(["federate", "--method", "sepnorm", "--data", str(SAMPLE_DATA), "--rounds", "2",
                 "--steps-per-round", "2", "--out", str(out), *TINY_TRAIN_FLAGS]) == 0
    sites = load_sites(SAMPLE_DATA, [])
    for name in sites:
        folder = out / name
        metrics = json.loads((folder / "metrics.json").read_text())
        assert list(metrics["sites"]) == [name] and 1 <= metrics["best_epoch"] <= 2
        assert [json.loads(r)["round"] for r in (folder / "train_log.jsonl").read_text().splitlines()] == [1, 2]
        # the same fold as a centralised run of the same seed
        assert load_splits(folder / "split.json", {name: sites[name]}) == \
            make_splits({name: sites[name]}, "fold", 0, 4, 0)
    # pooled: as if every site's test images were one set, from the four confusion counts each site sent
    summary = json.loads((out / "summary.json").read_text())
    rows = [r for name in sites for r in csv.DictReader(open(out / name / "predictions.csv"))]
    expected = site_metrics([int(r["label"]) for r in rows], [float(r["p_covid"]) for r in rows])
    assert summary["pooled"] == pytest.approx({k: v for k, v in expected.items() if k != "auc"})
    assert "tp" in summary["sites"]["covid-ct"] and "tp" not in summary["mean_over_sites"]
    assert f"pooled over all sites' test images (n={len(rows)})" in capsys.readouterr().out
    covid = out / "covid-ct" / "best.pt"
    image = next((SAMPLE_DATA / "covid-ct" / "CT_COVID").iterdir())
    capsys.readouterr()
    assert main(["predict", str(covid), "--site", "covid-ct", str(image)]) == 0
    printed = capsys.readouterr().out
    assert "P(COVID)=" in printed and "uncalibrated" not in printed and "not fitted" not in printed
    # calibrated and given an operating point on its own validation part, as a centralised run is
    fitted = json.loads((out / "covid-ct" / "decisions.json").read_text())
    assert list(fitted) == ["covid-ct"] and fitted["covid-ct"]["fit_on"].startswith("validation part")
    assert main(["evaluate", str(covid)]) == 0
    # a hospital that never took part: AdaBN from this site's batch norms (docs/federated.md)
    adapted = tmp_path / "adapted.pt"
    assert main(["adapt", str(covid), "--site", f"new={SAMPLE_DATA / 'sars-cov-2-ct'}", "--out", str(adapted)]) == 0
    assert main(["predict", str(adapted), "--site", "new", str(image)]) == 0
    assert main(["federate", "--method", "sepnorm", "--data", str(SAMPLE_DATA), "--rounds", "2", "--processes",
                 "--out", str(out), *TINY_TRAIN_FLAGS]) == 2
    assert "holds a federation already" in capsys.readouterr().err
