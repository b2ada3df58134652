"""The sweep report's section on calibration and the operating point: each job's decisions (decisions.json,
fitted on its validation part) applied to its test predictions, per row, site and level."""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np
from matplotlib.figure import Figure

from .. import calibration, decisions, run_folder
from ..gradcam import save_figure
from ..io import atomic_write_csv
from ..paper import ROW_BY_NAME
from .render import markdown


def _job_rows(folder) -> tuple[list[dict], dict | None]:
    """A finished job's test prediction rows and its decisions per site: decisions.json in the job folder, or
    for a federated job the one in each site's folder (None where the job predates them)."""
    rows = run_folder.read_predictions(folder / run_folder.PREDICTIONS)
    own = folder / run_folder.DECISIONS
    paths = [own] if own.is_file() else sorted(folder.glob(f"*/{run_folder.DECISIONS}"))
    fitted = {}
    for path in paths:
        fitted.update(json.loads(path.read_text(encoding="utf-8")))
    return rows, fitted or None


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
    entries = sweep_entries(res)
    lines = ["## Calibration and the operating point", "",
             "Each job fitted a Platt map and an operating point per site on its validation part at the end of "
             "training (`crosssite.decisions`, decisions.json in the job folder, or in each site's folder of a federated job); here both are applied to its "
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
    lines += [markdown(["Method", "Site", "Level", "n per job", "ECE before", "ECE after", "Sensitivity %",
                         "Specificity %", "Jobs"], grid), ""]
    for row in dict.fromkeys(e["row"] for e in entries):
        name = f"reliability_{row}.png"
        save_figure(reliability_figure(res, row), figures / name)
        lines += [f"![Reliability, {ROW_BY_NAME[row].display}](figures/{name})", ""]
    return lines

