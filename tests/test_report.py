"""Reports of a tiny real sweep: files written, Table I and the t-tests recomputed, missing jobs named.

The report is written once per fixture (module scope): `reported` from the whole sweep, `damaged` from a
copy with a job missing, one failed and a row cut to one job; tests only read them."""

import csv
import json
import shutil

import numpy as np
import pytest
from PIL import Image
from scipy.stats import t as t_dist
from scipy.stats import ttest_rel

from conftest import TINY_SETTINGS

from crosssite import cli
from crosssite.config import TrainConfig
from crosssite.report import write_report
from crosssite.io import read_jsonl
from crosssite.paper import COMPARISONS, ROW_BY_NAME
from crosssite.sweep import run_sweep

SITES = ["sars-cov-2-ct", "covid-ct"]
TINY = {**TINY_SETTINGS, "epochs": 1, "folds": 2}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """joint-redesign and contrastive, 2 folds x 2 seeds: 8 real jobs, so the t-tests have 4 pairs; then
    joint-redesign on duplicate-grouped folds at 1 seed (2 jobs, run last)."""
    out = tmp_path_factory.mktemp("sweep")
    rows = [ROW_BY_NAME["joint-redesign"], ROW_BY_NAME["contrastive"], ROW_BY_NAME["joint-redesign-grouped"]]
    run_sweep(TrainConfig(**TINY), rows, seeds=2, out=out, progress=False, row_seeds={"joint-redesign-grouped": 1})
    return out


@pytest.fixture()
def copied(sweep, tmp_path):
    folder = tmp_path / "sweep"
    shutil.copytree(sweep, folder)
    return folder


@pytest.fixture(scope="module")
def reported(sweep, tmp_path_factory):
    folder = tmp_path_factory.mktemp("reported") / "sweep"
    shutil.copytree(sweep, folder)
    assert cli.main(["report", str(folder)]) == 0
    return folder


@pytest.fixture(scope="module")
def damaged(sweep, tmp_path_factory):
    """The sweep with joint-redesign's first job never finished, a contrastive job failed (its last line
    counts) and the grouped row cut to one job, reported once."""
    folder = tmp_path_factory.mktemp("damaged") / "sweep"
    shutil.copytree(sweep, folder)
    results = folder / "results.jsonl"
    lines = read_jsonl(results)
    dropped = {lines[0]["job"], "joint-redesign-grouped-fold1-seed0"}
    kept = [r for r in lines if r["job"] not in dropped]
    kept.append({**lines[6], "status": "failed", "error": "DivergedError: loss became nan"})
    results.write_text("".join(json.dumps(r) + "\n" for r in kept))
    write_report(folder)
    return folder, lines[0]["job"], lines[6]["job"]


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_report_writes_markdown_csv_latex_and_figures(reported):
    for stem in ("table1", *(stem for _, stem, _, _ in COMPARISONS)):
        assert (reported / "tables" / f"{stem}.csv").exists() and (reported / "tables" / f"{stem}.tex").exists()
    figures = [f"fig3_roc_{s}.png" for s in SITES] + [f"fig{4 + i}_gradcam_{s}.png" for i, s in enumerate(SITES)]
    for name in figures:
        assert Image.open(reported / "figures" / name).size[0] > 300
    text = (reported / "report.md").read_text()
    assert all(f"(figures/{name})" in text for name in figures)
    assert "10 of 10 planned jobs finished" in text and "None: every planned job finished." in text
    assert "ttest_rel" in text and "AUC" in text
    assert all(f"## Table {number}: " in text for number, _, _, _ in COMPARISONS)
    assert "\\begin{tabular}" in (reported / "tables" / "table1.tex").read_text()


def test_table1_is_the_mean_and_std_of_the_jobs_in_percent(reported):
    lines = read_jsonl(reported / "results.jsonl")
    entries = read_csv(reported / "tables" / "table1.csv")
    cell = next(e for e in entries if e["row"] == "contrastive" and e["site"] == "covid-ct" and e["metric"] == "f1")
    values = [100 * r["sites"]["covid-ct"]["f1"] for r in lines if r["row"] == "contrastive"]
    assert int(cell["n"]) == 4
    assert float(cell["mean"]) == pytest.approx(np.mean(values))
    assert float(cell["std"]) == pytest.approx(np.std(values, ddof=1))
    for site in SITES:  # exactly the best mean of each column is bold
        for metric in ("accuracy", "auc"):
            column = [e for e in entries if e["site"] == site and e["metric"] == metric]
            best = max(column, key=lambda e: float(e["mean"]))
            assert best["best"] == "True"


def test_paired_differences_are_the_corrected_repeated_cv_test_beside_the_naive_ttest_rel(reported):
    lines = read_jsonl(reported / "results.jsonl")
    auc = {(r["row"], r["fold"], r["seed"], s): r["sites"][s]["auc"] for r in lines for s in SITES}
    tests = [t for t in read_csv(reported / "tables" / "table2.csv") if t["epoch"] == "best_val"]
    assert {t["site"] for t in tests} == set(SITES) and {t["row"] for t in tests} == {"joint-redesign"}
    ratio = (1 / 2) / ((1 - 1 / 2) * (1 - 1 / 5))  # test fold over the fitted part: 2 folds, 1/5 validation
    for t in tests:
        keys = [(f, s) for f in (0, 1) for s in (0, 1)]
        ours = [auc["contrastive", f, s, t["site"]] for f, s in keys]
        theirs = [auc["joint-redesign", f, s, t["site"]] for f, s in keys]
        expected = ttest_rel(ours, theirs)  # the paper's test, every job pair independent
        assert t["metric"] == "auc" and int(t["n_pairs"]) == 4 and int(t["repetitions"]) == 2
        assert float(t["p_naive_ttest_rel"]) == pytest.approx(expected.pvalue, rel=1e-12)
        assert float(t["t_naive_ttest_rel"]) == pytest.approx(expected.statistic, rel=1e-12)
        diffs = 100 * np.subtract(ours, theirs)  # all 2 x 2 (fold, seed) pairs, none averaged
        se = np.sqrt((1 / 4 + ratio) * np.var(diffs, ddof=1))
        assert float(t["test_train_ratio"]) == pytest.approx(ratio) and int(t["df"]) == 3
        assert float(t["mean_diff"]) == pytest.approx(diffs.mean())
        assert float(t["ci_high"]) - float(t["mean_diff"]) == pytest.approx(3.18244631 * se, rel=1e-6)  # t(0.975, 3)
        assert float(t["p"]) == pytest.approx(2 * t_dist.sf(abs(diffs.mean()) / se, 3))
    assert read_csv(reported / "tables" / "table3.csv") == []  # no comparison methods in this sweep
    text = (reported / "report.md").read_text()
    assert "Bouckaert & Frank" in text and "n_test/n_train = 1.2500" in text and "naive ttest_rel p" in text


def test_missing_and_failed_jobs_are_named(damaged):
    folder, dropped, failed = damaged
    text = (folder / "report.md").read_text()
    assert f"- missing (never finished): `{dropped}`" in text
    assert f"- failed: `{failed}`: DivergedError: loss became nan" in text
    assert "- missing (never finished): `joint-redesign-grouped-fold1-seed0`" in text
    assert "7 of 10 planned jobs finished" in text
    cells = read_csv(folder / "tables" / "table1.csv")
    assert {int(e["n"]) for e in cells if e["row"] != "joint-redesign-grouped"} == {3}
    assert {int(t["n_pairs"]) for t in read_csv(folder / "tables" / "table2.csv")} == {2}


def test_report_of_a_folder_that_is_no_sweep_is_an_error(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path)]) == 2
    assert "no sweep.yaml" in capsys.readouterr().err


def test_final_and_last_epoch_aucs_come_with_bootstrap_intervals(reported):
    lines = [r for r in read_jsonl(reported / "results.jsonl") if r["row"] == "contrastive"]
    cells = read_csv(reported / "tables" / "auc_intervals.csv")
    for site in SITES:
        cell = next(e for e in cells if e["row"] == "contrastive" and e["site"] == site and e["epoch"] == "final")
        finals = [100 * r["tail_auc"][site][max(r["tail_auc"][site], key=int)] for r in lines]
        assert int(cell["n"]) == 4 and float(cell["mean"]) == pytest.approx(np.mean(finals))
        assert float(cell["ci_low"]) <= float(cell["mean"]) <= float(cell["ci_high"])
    text = (reported / "report.md").read_text()
    assert "## Which differences are resolved" in text
    assert "Contrastive (ours) vs Joint (redesigned), covid-ct, validation-chosen epoch:" in text


def test_a_cell_of_one_job_has_no_spread_and_no_interval(damaged):
    folder, _, _ = damaged
    cell = next(e for e in read_csv(folder / "tables" / "auc_intervals.csv")
                if e["row"] == "joint-redesign-grouped" and e["site"] == "covid-ct" and e["epoch"] == "best_val")
    assert cell["n"] == "1" and cell["std"] == "nan" and cell["ci_low"] == "nan"
    assert "n/a (1)" in (folder / "report.md").read_text()


def test_grouped_folds_are_compared_with_ordinary_folds(reported):
    changes = read_csv(reported / "tables" / "grouped_folds.csv")
    assert {(c["row"], c["site"]) for c in changes} == {("joint-redesign", s) for s in SITES}
    for c in changes:
        assert float(c["change"]) == pytest.approx(float(c["grouped_mean"]) - float(c["ordinary_mean"]))
    assert "## Duplicate-grouped folds" in (reported / "report.md").read_text()


def test_the_report_is_regenerated_byte_for_byte(reported):
    written = sorted(p for p in reported.rglob("*") if p.is_file() and p.parent.name in ("tables", "figures"))
    first = {p: p.read_bytes() for p in written + [reported / "report.md"]}
    write_report(reported)  # the one test that writes the report again: it must give the same bytes
    assert {p: p.read_bytes() for p in first} == first


@pytest.mark.parametrize("name, content, message", [
    ("sweep.yaml", "rows: [joint-redesign\nfolds: 2\n", "sweep.yaml:2: not valid YAML"),
    ("sweep.yaml", "- joint-redesign\n", "not a crosssite sweep.yaml"),
    ("sweep.yaml", "rows: [joint-redesign]\nfolds: two\nseeds: 1\nconfig: {}\n", "no valid folds"),
    ("sweep.yaml", "rows: [joint-redesign]\nfolds: 2\nseeds: 1\nconfig: {}\nextended_by: [yes]\n", "no valid extended_by"),
    ("results.jsonl", '{"job": "joint-redesign-fold0-seed0", "status": "ok"}\n', "record 1 is not a sweep result"),
    ("results.jsonl", "[1, 2]\n", "line 1 is not a JSON object"),
])
def test_damaged_sweep_files_are_one_line_errors(copied, capsys, name, content, message):
    (copied / name).write_text(content)
    assert cli.main(["report", str(copied)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


@pytest.mark.parametrize("change, key", [(lambda m: m.pop("auc"), "'auc'"), (lambda m: m.update(f1="0.5"), "'f1'")],
                         ids=["no auc", "f1 not a number"])
def test_a_job_line_without_a_metric_is_a_one_line_error(copied, capsys, change, key):
    results = copied / "results.jsonl"
    lines = read_jsonl(results)
    change(lines[2]["sites"]["covid-ct"])  # a hand-edited or old line
    results.write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert cli.main(["report", str(copied)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(results) in err and lines[2]["job"] in err and "covid-ct" in err
    assert key in err
    assert not (copied / "report.md").exists()


def test_patient_level_auc_only_where_the_site_has_patient_ids(reported):
    from crosssite.scans import level_metrics

    cells = read_csv(reported / "tables" / "patient_level.csv")
    assert {c["site"] for c in cells} == {"covid-ct"}  # sars-cov-2-ct has no patient ids
    cell = next(c for c in cells if c["row"] == "contrastive")
    jobs = [r for r in read_jsonl(reported / "results.jsonl") if r["row"] == "contrastive"]
    expected = [100 * level_metrics(read_csv(reported / r["folder"] / "predictions.csv"))["patient"]["covid-ct"]["auc"]
                for r in jobs]
    assert int(cell["n"]) == 4 and float(cell["mean"]) == pytest.approx(np.mean(expected))
    assert "## Patient-level test AUC" in (reported / "report.md").read_text()


def test_calibration_section_applies_each_jobs_validation_fit_to_its_test_predictions(reported):
    from crosssite import decisions, run_folder

    job = reported / "jobs" / "contrastive-fold0-seed0"
    (job / run_folder.DECISIONS).rename(job / "old.json")  # one job as if trained before calibration
    assert cli.main(["report", str(reported)]) == 0
    text = (reported / "report.md").read_text()
    assert "## Calibration and the operating point" in text and "(figures/reliability_contrastive.png)" in text
    assert Image.open(reported / "figures" / "reliability_contrastive.png").size[0] > 300
    entries = {(e["row"], e["site"], e["level"]): e for e in read_csv(reported / "tables" / "calibration.csv")}
    assert entries["contrastive", "covid-ct", "image"]["jobs"] == "3"
    assert entries["contrastive", "covid-ct", "image"]["uncalibrated_jobs"] == "1"
    assert entries["joint-redesign", "covid-ct", "patient"]["jobs"] == "4"
    # recomputed from the job files: the mean over jobs of the ECE after each job's own map
    after = []
    for seed, fold in ((0, 1), (1, 0), (1, 1)):
        folder = reported / "jobs" / f"contrastive-fold{fold}-seed{seed}"
        rows = read_csv(folder / "predictions.csv")
        fitted = json.loads((folder / run_folder.DECISIONS).read_text())
        assessed = decisions.assess(rows, {s: fitted[s] for s in SITES})
        after.append(assessed["levels"]["image"]["covid-ct"]["ece_after"])
    assert float(entries["contrastive", "covid-ct", "image"]["ece_after"]) == pytest.approx(np.mean(after))
