"""`crosssite card`: a model card and metadata.json from what a run folder holds."""

import csv
import json
import shutil

import pytest

from crosssite.cli import main


def test_card_from_a_run(tiny_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    assert main(["card", str(run)]) == 0
    card = (run / "MODEL_CARD.md").read_text()
    facts = json.loads((run / "metadata.json").read_text())
    assert "Research use only, not for diagnosis" in card and "doi:10.1109/JBHI.2020.3023246" in card
    assert "CC BY-NC-SA 4.0" in card and "no patient ids" in card and "kjr-21-e24-p5-29" in card
    metrics = json.loads((run / "metrics.json").read_text())["sites"]
    for site, x in facts["sites"].items():
        low, high = x["auc_interval"]
        assert 0 <= low <= high <= 1 and x["auc"] == metrics[site]["auc"]
        assert f"| {site} | {x['n']} | {100 * x['auc']:.1f} |" in card
    assert facts["sites"]["covid-ct"]["interval_level"].startswith("patient (")
    assert facts["sites"]["sars-cov-2-ct"]["interval_level"] == "image (no patient ids)"
    assert facts["training"]["epochs"] == 2 and facts["preprocessing"]["image_size"] == 32


def test_patient_column_of_predictions_is_used(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    with open(run / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    with open(run / "predictions.csv", "w", newline="") as f:  # one patient per site: every image in one group
        writer = csv.DictWriter(f, fieldnames=[*rows[0], "patient"])
        writer.writeheader()
        writer.writerows({**r, "patient": r["site"]} for r in rows)
    assert main(["card", str(run)]) == 0
    facts = json.loads((run / "metadata.json").read_text())
    assert facts["intervals"]["patient_ids"] == "the patient column of predictions.csv"
    for x in facts["sites"].values():  # one group holding both classes: every replicate has the same AUC
        assert x["interval_level"] == "patient (1 patients)"
        assert x["auc_interval"] == pytest.approx([x["auc"], x["auc"]])


def test_card_refuses_an_unfinished_run(tiny_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "metrics.json").unlink()
    assert main(["card", str(run)]) == 2
    err = capsys.readouterr().err
    assert "not a finished run folder (missing metrics.json)" in err and not (run / "MODEL_CARD.md").exists()
