"""The pre-registered analysis (docs/preregistration.md) on a synthetic 10-fold x 3 sweep: `crosssite report`
prints the contrast, its numbers agree with an independent computation, and an incomplete sweep is
called interim with no verdict."""

import json
import shutil

import numpy as np
import pytest
import yaml
from scipy.stats import nct, ttest_rel
from scipy.stats import t as t_dist

from crosssite import cli
from crosssite.report.preregistered import EQUIVALENT, IMPROVES, INCONCLUSIVE, LOWERS, decide

SITES = ("sars-cov-2-ct", "covid-ct")
ROWS = ("sepnorm-grouped", "contrastive-grouped")


def write_sweep(folder, tail):
    """sweep.yaml of the pre-registered design, one results.jsonl line per job with `tail` (job -> site ->
    last-epoch AUCs) and a small predictions.csv per job (the tables and figures read them)."""
    folder.mkdir()
    (folder / "sweep.yaml").write_text(yaml.safe_dump({
        "rows": list(ROWS), "folds": 10, "seeds": 3, "row_seeds": {},
        "config": {"image_size": 64, "width": 0.25, "epochs": 8, "batch_per_site": 16, "lr": 0.001,
                   "temperature": 0.05, "alpha": 1.0, "tail_epochs": 3},
    }))
    lines = []
    for (row, fold, seed), aucs in tail.items():
        job = f"{row}-fold{fold}-seed{seed}"
        (folder / "jobs" / job).mkdir(parents=True)
        rows = ["site,path,patient,label,p_covid"]
        for site in SITES:
            for i in range(6):
                patient = f"p{fold}-{i // 2}" if site == "covid-ct" else ""
                rows.append(f"{site},img/{site}-{fold}-{i}.png,{patient},{i % 2},{(i + seed) % 5 / 5 + 0.1}")
        (folder / "jobs" / job / "predictions.csv").write_text("\n".join(rows) + "\n")
        metrics = {m: 0.8 for m in ("accuracy", "f1", "recall", "precision")}
        lines.append({"job": job, "row": row, "fold": fold, "seed": seed, "folder": f"jobs/{job}", "status": "ok",
                      "seconds": 1.0, "commit": "abc",
                      "sites": {s: {**metrics, "auc": float(np.mean(a))} for s, a in aucs.items()},
                      "tail_auc": {s: {str(6 + e): a[e] for e in range(3)} for s, a in aucs.items()}})
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """60 jobs; contrastive 0.3 points below SepNorm on average with a spread near the planned one."""
    rng = np.random.default_rng(21)
    tail = {}
    for seed in range(3):
        for fold in range(10):
            for site, base in zip(SITES, (0.93, 0.76)):
                level = base + rng.normal(0, 0.01)
                for row, shift in zip(ROWS, (0.0, -0.003)):
                    aucs = (level + shift + rng.normal(0, 0.009) + rng.normal(0, 0.002, 3)).tolist()
                    tail.setdefault((row, fold, seed), {})[site] = aucs
    folder = tmp_path_factory.mktemp("decisive") / "sweep"
    write_sweep(folder, tail)
    return folder, tail


@pytest.fixture(scope="module")
def printed(synthetic):
    folder, _ = synthetic
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["report", str(folder)]) == 0
    return out.getvalue()


def expected(tail, site):
    """The pre-registered test computed from the job lines, independently of crosssite.stats."""
    keys = sorted({(fold, seed) for _, fold, seed in tail})
    d = np.array([100 * (np.mean(tail["contrastive-grouped", f, s][site]) - np.mean(tail["sepnorm-grouped", f, s][site]))
                  for f, s in keys])
    n, ratio = len(d), 0.10 / 0.72
    se = np.sqrt((1 / n + ratio) * d.var(ddof=1))
    half = t_dist.ppf(0.975, n - 1) * se
    critical, shift = t_dist.ppf(0.975, n - 1), 1.5 / se
    power = nct.sf(critical, n - 1, shift) + nct.cdf(-critical, n - 1, shift)
    naive = ttest_rel(d, np.zeros(n)).pvalue
    return {"mean": d.mean(), "low": d.mean() - half, "high": d.mean() + half,
            "p": 2 * t_dist.sf(abs(d.mean()) / se, n - 1), "naive": naive, "sd": d.std(ddof=1), "power": power,
            "se": se, "n": n}


def row_of(text, site):
    line = next(line for line in text.splitlines() if line.startswith(f"| {site} |"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_a_complete_sweep_prints_the_contrast_and_the_verdict(synthetic, printed):
    folder, tail = synthetic
    assert "pre-registered comparison" in printed and "Complete: 60 of 60 planned jobs" in printed
    for site in SITES:
        e = expected(tail, site)
        cells = row_of(printed, site)
        assert cells[1] == "30 pairs, 3 repetitions"
        assert cells[2] == f"{e['mean']:+.2f}" and cells[3] == f"[{e['low']:+.2f}, {e['high']:+.2f}]"
        assert cells[4] == f"{e['p']:.2g}" and cells[5] == f"{e['naive']:.2g}" and cells[6] == f"{e['sd']:.2f}"
        assert cells[7] == f"{e['power']:.2f}"
        detectable = float(cells[8])  # the true d found with 80 % power: check by the power it gives
        shift = detectable / e["se"]
        critical = t_dist.ppf(0.975, 29)
        assert nct.sf(critical, 29, shift) + nct.cdf(-critical, 29, shift) == pytest.approx(0.8, abs=0.005)
    e = expected(tail, "sars-cov-2-ct")
    verdict = decide(e["low"], e["high"])
    assert f"**Verdict (sars-cov-2-ct): {verdict}.**" in printed
    assert "n_test/n_train = 0.1389" in printed
    report = (folder / "report.md").read_text()
    assert "## The pre-registered comparison (docs/preregistration.md)" in report and verdict in report
    table1 = report.split("## Table I")[1].split("## Test AUC")[0]  # grouped rows alone: Table I shows them
    assert "| SepNorm, grouped folds |" in table1 and "| Contrastive (ours), grouped folds |" in table1


def test_an_incomplete_sweep_is_interim_and_draws_no_verdict(synthetic, tmp_path, capsys):
    folder, tail = synthetic
    partial = tmp_path / "partial"
    shutil.copytree(folder, partial)
    lines = (partial / "results.jsonl").read_text().splitlines(keepends=True)
    (partial / "results.jsonl").write_text("".join(lines[:20]))  # seed 0's first 10 pairs
    assert cli.main(["report", str(partial)]) == 0
    out = capsys.readouterr().out
    assert "**Interim**: 20 of 60 planned jobs" in out and "No verdict is drawn" in out
    assert "Verdict" not in out and row_of(out, "sars-cov-2-ct")[1] == "10 pairs, 1 repetition"


def test_the_decision_rule():
    assert decide(0.1, 2.0) == IMPROVES and decide(-3.0, -0.2) == LOWERS
    assert decide(-1.4, 1.4) == EQUIVALENT and decide(-1.6, 1.0) == INCONCLUSIVE and decide(-1.0, 1.5) == INCONCLUSIVE
