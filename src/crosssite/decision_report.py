"""How a model's decisions (crosssite.decisions) fare on test data: the text `evaluate` prints, the model
card's section, the sweep report's section."""

from __future__ import annotations

import csv
import json
from collections import defaultdict

import numpy as np
from matplotlib.figure import Figure

from . import calibration, decisions, ood
from .checkpoint import load_checkpoint
from .operating_point import rates_with_intervals
from .paper import ROW_BY_NAME


def format_decisions(assessed: dict) -> str:
    """`assess`'s result (and its `ood`) as the text `crosssite evaluate` prints."""
    lines = [f"calibration (per-site Platt map fitted on validation; ECE over {assessed['binning']}) and "
             "the operating point:",
             f"{'level':8}{'site':18}{'n':>5}{'ECE before':>12}{'ECE after':>11}{'threshold':>11}"
             f"{'sensitivity':>13}{'specificity':>13}"]
    for level, per_site in assessed["levels"].items():
        for site, x in per_site.items():
            after = f"{x['ece_after']:.3f}" if x["calibrated"] else "uncalib."
            lines.append(f"{level:8}{site:18}{x['n']:>5}{x['ece_before']:>12.3f}{after:>11}{x['threshold']:>11.3f}"
                         f"{100 * x['sensitivity']:>12.1f}%{100 * x['specificity']:>12.1f}%")
    for site, x in assessed["levels"]["image"].items():
        for when in ("before", "after"):
            bins = "  ".join(f"{b['low']:.1f}-{b['high']:.1f}: {b['mean_p']:.2f}/{b['fraction_covid']:.2f} "
                             f"(n {b['n']})" for b in x[f"reliability_{when}"])
            lines.append(f"reliability {site} {when} (bin: mean P(COVID) / fraction COVID): {bins}")
    if assessed.get("ood") is None:
        lines.append("out-of-distribution flag: not available (no OOD thresholds in this checkpoint, or no "
                     "site-specific batch norm)")
    else:
        lines.append(f"out-of-distribution flag (beyond every site's {ood.QUANTILE:g} quantile of its own "
                     "validation images' distance): " + ", ".join(
                         f"{site} {x['flagged']}/{x['n']} ({100 * x['rate']:.1f} %)" for site, x in assessed["ood"].items()))
    return "\n".join(lines)


def card_facts(run, rows: list[dict], patients: dict[str, str | None]) -> dict:
    """The model card's facts on the decisions of a run's best.pt, measured on its test predictions
    (predictions.csv rows, raw P(COVID)): per site how they were fitted, ECE before / after at image
    and patient level, and sensitivity / specificity at the operating point (calibrated P) with
    percentile intervals of a bootstrap over patients (images where there are no ids)."""
    best = run / "best.pt"
    payload = load_checkpoint(best) if best.is_file() else {}
    rows = [{**r, "patient": patients.get(r["path"]) or ""} for r in rows]
    decision_of = {site: decisions.for_site(payload, site) for site in dict.fromkeys(r["site"] for r in rows)}
    assessed = decisions.assess(rows, decision_of)
    calibrated = decisions.calibrated_rows(rows, decision_of)
    facts = {"binning": assessed["binning"], "ood_quantile": ood.QUANTILE, "sites": {}}
    for site, decision in decision_of.items():
        mine = [r for r in calibrated if r["site"] == site]
        threshold = decision["operating_point"]["threshold"]
        facts["sites"][site] = {
            "calibration": decisions.describe_calibration(decision),
            "operating_point": decision["operating_point"],
            "ood_threshold": decision["ood"],
            "ece": {level: {k: per_site[site][k] for k in ("n", "ece_before", "ece_after")}
                    for level, per_site in assessed["levels"].items() if site in per_site},
            "test_at_operating_point": rates_with_intervals([int(r["label"]) for r in mine],
                                                            [r["p_covid"] for r in mine], threshold,
                                                            [r["patient"] or None for r in mine]),
        }
    return facts


def _pct(x) -> str:
    return "n/a" if x is None or np.isnan(x) else f"{100 * x:.1f}"


def card_markdown(facts: dict) -> list[str]:
    """The card's section on calibration, operating point and OOD flag."""
    lines = ["## Calibration, operating point, out-of-distribution flag", "",
             "Fitted per site on its validation part at the end of training (never on test); measured here on "
             f"the test part. ECE over {facts['binning']}; the operating point's sensitivity and specificity with "
             "95 % percentile intervals of a bootstrap over patients (images where there are no ids). An image "
             f"is flagged out-of-distribution when its batch-norm distance to every site exceeds that site's "
             f"{facts['ood_quantile']:g} quantile of its own validation images (docs/pacs.md).", "",
             "| site | calibration | ECE before / after (images) | ECE before / after (patients) | operating point "
             "| threshold | test sensitivity | test specificity | OOD threshold |", "|---|---|---|---|---|---|---|---|---|"]
    for site, x in facts["sites"].items():
        ece = {level: f"{e['ece_before']:.3f} / {e['ece_after']:.3f} (n {e['n']})" for level, e in x["ece"].items()}
        test = x["test_at_operating_point"]
        sens, spec = (f"{_pct(test[k])} ({_pct(test[k + '_interval'][0])}-{_pct(test[k + '_interval'][1])})"
                      for k in ("sensitivity", "specificity"))
        threshold = x["ood_threshold"]["threshold"] if x["ood_threshold"] else None
        lines.append(f"| {site} | {x['calibration']} | {ece.get('image', 'n/a')} | {ece.get('patient', 'n/a')} | "
                     f"{x['operating_point']['rule']} | {x['operating_point']['threshold']:.3f} | {sens} | {spec} | "
                     f"{'none' if threshold is None else f'{threshold:.3g}'} |")
    return lines + [""]


def _job_rows(folder) -> tuple[list[dict], dict | None]:
    """A finished job's test prediction rows and its decisions (None where the job predates them)."""
    with open(folder / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    path = folder / decisions.DECISIONS_FILE
    return rows, json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def sweep_entries(res) -> list[dict]:
    """Per row, site and level: ECE before and after calibration and the operating point's sensitivity and
    specificity on test, each as mean and sample std over the row's jobs that have decisions."""
    collected: dict[tuple, list[dict]] = defaultdict(list)
    uncalibrated: dict[str, int] = defaultdict(int)
    for row in res.rows:
        for job in res.ok(row.name):
            rows, fitted = _job_rows(res.folder / job["folder"])
            if fitted is None:
                uncalibrated[row.name] += 1
                continue
            sites = dict.fromkeys(r["site"] for r in rows)
            assessed = decisions.assess(rows, {s: fitted.get(s) or decisions.for_site({}, s) for s in sites})
            for level, per_site in assessed["levels"].items():
                for site, x in per_site.items():
                    collected[row.name, site, level].append(x)
    entries = []
    for (row, site, level), xs in collected.items():
        entry = {"row": row, "method": ROW_BY_NAME[row].display, "site": site, "level": level, "jobs": len(xs),
                 "uncalibrated_jobs": uncalibrated[row], "n": int(np.mean([x["n"] for x in xs]))}
        for key in ("ece_before", "ece_after", "sensitivity", "specificity"):
            values = np.array([x[key] for x in xs], dtype=float)
            entry[key] = float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
            entry[f"{key}_std"] = float(np.nanstd(values, ddof=1)) if np.isfinite(values).sum() > 1 else float("nan")
        entries.append(entry)
    return entries


def reliability_figure(res, row: str, bins: int = calibration.BINS) -> Figure:
    """Reliability diagrams of one row's test images, pooled over its jobs with decisions, per site: fraction
    COVID against mean P(COVID) per bin, before and after each job's calibration map."""
    pooled: dict[str, dict[str, tuple[list, list]]] = defaultdict(lambda: {"before": ([], []), "after": ([], [])})
    for job in res.ok(row):
        rows, fitted = _job_rows(res.folder / job["folder"])
        if fitted is None:
            continue
        after = decisions.calibrated_rows(rows, {s: fitted.get(s) or decisions.for_site({}, s)
                                                 for s in dict.fromkeys(r["site"] for r in rows)})
        for when, these in (("before", rows), ("after", after)):
            for r in these:
                pooled[r["site"]][when][0].append(int(r["label"]))
                pooled[r["site"]][when][1].append(float(r["p_covid"]))
    fig = Figure(figsize=(5 * max(1, len(pooled)), 4.8))
    axes = np.atleast_1d(fig.subplots(1, max(1, len(pooled))))
    for ax, (site, by_when) in zip(axes, pooled.items()):
        for when, (labels, probs) in by_when.items():
            points = calibration.reliability(labels, probs, bins)
            ax.plot([b["mean_p"] for b in points], [b["fraction_covid"] for b in points], marker="o",
                    label=f"{when} calibration (ECE {calibration.ece(labels, probs, bins):.3f})")
        ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=0.8)
        ax.set(title=f"site {site}", xlabel="mean P(COVID) in bin", ylabel="fraction COVID in bin",
               xlim=(0, 1), ylim=(0, 1.01))
        ax.legend(loc="upper left", fontsize=8)
    fig.suptitle(f"Reliability, {ROW_BY_NAME[row].display}: test images pooled over jobs ({bins} equal-width bins)")
    return fig


def _cell(entry: dict, key: str, percent: bool = False) -> str:
    scale, digits = (100, 1) if percent else (1, 3)
    mean, std = entry[key], entry[f"{key}_std"]
    if np.isnan(mean):
        return "n/a"
    return f"{scale * mean:.{digits}f}" + ("" if np.isnan(std) else f" ± {scale * std:.{digits}f}")


def sweep_section(res, tables, figures) -> list[str]:
    """The report's section on calibration and the operating point (writes tables/calibration.csv and
    figures/reliability_<row>.png); markdown lines."""
    from .gradcam import save_figure
    from .io import atomic_write_csv
    from .report import _markdown  # the report's table format (report imports this module)

    entries = sweep_entries(res)
    lines = ["## Calibration and the operating point", "",
             "Each job fitted a Platt map and an operating point per site on its validation part at the end of "
             "training (`crosssite.decisions`, decisions.json in the job folder); here both are applied to its "
             f"test predictions. ECE over {calibration.describe_binning()}; sensitivity and specificity of the "
             "calibrated P(COVID) at the site's operating point; mean ± sample std over jobs, (jobs). Scan and "
             "patient rows aggregate calibrated slice probabilities as Table I's patient level does.", ""]
    if not entries:
        return lines + ["No job of this sweep has decisions.json (jobs trained before calibration existed; "
                        "`crosssite calibrate JOB/best.pt` fits them where the checkpoint is kept).", ""]
    atomic_write_csv(tables / "calibration.csv", entries)
    grid = [[e["method"], e["site"], e["level"], str(e["n"]), _cell(e, "ece_before"), _cell(e, "ece_after"),
             _cell(e, "sensitivity", True), _cell(e, "specificity", True),
             f"{e['jobs']}" + (f" (+{e['uncalibrated_jobs']} without)" if e["uncalibrated_jobs"] else "")]
            for e in entries]
    lines += [_markdown(["Method", "Site", "Level", "n per job", "ECE before", "ECE after", "Sensitivity %",
                         "Specificity %", "Jobs"], grid), ""]
    for row in dict.fromkeys(e["row"] for e in entries):
        name = f"reliability_{row}.png"
        save_figure(reliability_figure(res, row), figures / name)
        lines += [f"![Reliability, {ROW_BY_NAME[row].display}](figures/{name})", ""]
    return lines

