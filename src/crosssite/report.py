"""`crosssite report SWEEP`: the paper's Tables I-III and Figs. 3-5 from a sweep folder.

Reads sweep.yaml (which jobs were planned), results.jsonl (per-job test metrics; the last line of
a job counts) and the jobs' predictions.csv and best.pt; writes report.md, tables/*.csv and *.tex,
and figures/*.png into the sweep folder. Jobs planned but without an "ok" line are named in the
report. Table I averages per-job metrics over folds x seeds; Fig. 3 pools predictions instead.
"""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from scipy.stats import ttest_rel
from sklearn.metrics import roc_auc_score, roc_curve

from .errors import CrossSiteError
from .evaluate import METRIC_NAMES
from .io import atomic_write_text
from .sweep import ROW_BY_NAME, Row, job_name, read_results, read_sweep_settings

METRICS = METRIC_NAMES[:5]  # Table I of the paper: all but specificity
TESTED_METRIC = "auc"
OURS = "contrastive"
#: Table II: the paper's method against the baselines; Table III: against the comparison methods
TABLE2 = ("single-redesign", "joint-redesign", "sepnorm")
TABLE3 = ("series-adapter", "parallel-adapter", "ms-net")
#: Fig. 3's panels: (title, rows)
PANELS = (
    ("(a) Single and Joint, both backbones", ("single-covidnet", "single-redesign", "joint-covidnet", "joint-redesign")),
    ("(b) Contrastive vs Single and Joint", (OURS, "single-redesign", "joint-redesign")),
    ("(c) Contrastive vs comparison methods", (OURS, *TABLE3)),
)
GRADCAM_EXAMPLES = 4  # correctly and wrongly classified test images per site in Figs. 4/5


@dataclass
class SweepResults:
    folder: Path
    settings: dict  # sweep.yaml
    rows: list[Row]
    planned: list[str]  # job names
    latest: dict[str, dict]  # job name -> its last results.jsonl record
    sites: list[str]

    def ok(self, row: str) -> list[dict]:
        """The row's finished jobs, ordered by (seed, fold)."""
        jobs = [r for r in self.latest.values() if r["row"] == row and r["status"] == "ok"]
        return sorted(jobs, key=lambda r: (r["seed"], r["fold"]))


def load_results(folder: Path) -> SweepResults:
    folder = Path(folder)
    settings_file = folder / "sweep.yaml"
    if not settings_file.is_file():
        raise CrossSiteError(f"{folder}: not a sweep folder (no sweep.yaml; run `crosssite sweep --out {folder}`)")
    settings = read_sweep_settings(settings_file)
    unknown = [r for r in settings["rows"] if r not in ROW_BY_NAME]
    if unknown:
        raise CrossSiteError(f"{settings_file}: unknown row(s) {', '.join(unknown)}")
    rows = [ROW_BY_NAME[r] for r in settings["rows"]]
    planned = [
        job_name(r.name, fold, seed) for seed in range(settings["seeds"]) for r in rows for fold in range(settings["folds"])
    ]
    latest = {r["job"]: r for r in read_results(folder / "results.jsonl")}
    sites = list(dict.fromkeys(s for r in latest.values() if r["status"] == "ok" for s in r["sites"]))
    if not sites:
        raise CrossSiteError(f"{folder / 'results.jsonl'}: no finished job to report on")
    return SweepResults(folder, settings, rows, planned, latest, sites)


# ---- Table I: mean ± std per row, site and metric ----------------------------------------------


def table1(res: SweepResults) -> list[dict]:
    """One entry per (row, site, metric): mean and sample std (ddof=1) in %, and n jobs."""
    entries = []
    for row in res.rows:
        jobs = res.ok(row.name)
        for site in res.sites:
            for metric in METRICS:
                values = [100 * j["sites"][site][metric] for j in jobs if site in j["sites"]]
                values = [v for v in values if not math.isnan(v)]
                entries.append(
                    {
                        "row": row.name,
                        "method": row.display,
                        "site": site,
                        "metric": metric,
                        "mean": float(np.mean(values)) if values else math.nan,
                        "std": float(np.std(values, ddof=1)) if len(values) > 1 else math.nan,
                        "n": len(values),
                    }
                )
    best = defaultdict(lambda: -math.inf)
    for e in entries:
        if not math.isnan(e["mean"]):
            best[e["site"], e["metric"]] = max(best[e["site"], e["metric"]], round(e["mean"], 2))
    for e in entries:
        e["best"] = not math.isnan(e["mean"]) and round(e["mean"], 2) == best[e["site"], e["metric"]]
    return entries


def _cell(e: dict, latex: bool) -> str:
    if e["n"] == 0:
        return "--" if latex else "–"
    std = "--" if math.isnan(e["std"]) else f"{e['std']:.2f}"
    if latex:
        value = f"{e['mean']:.2f} \\pm {std}"
        return (f"$\\mathbf{{{value}}}$" if e["best"] else f"${value}$") + f" ({e['n']})"
    value = f"{e['mean']:.2f} ± {std}"
    return (f"**{value}**" if e["best"] else value) + f" ({e['n']})"


def _table1_grid(res: SweepResults, entries: list[dict], site: str, latex: bool) -> list[list[str]]:
    cells = {(e["row"], e["metric"]): _cell(e, latex) for e in entries if e["site"] == site}
    return [[r.display] + [cells[r.name, m] for m in METRICS] for r in res.rows]


# ---- Tables II and III: paired t-tests on AUC --------------------------------------------------


def paired_tests(res: SweepResults, others: tuple[str, ...]) -> list[dict]:
    """Contrastive vs each row in `others`, per site: ttest_rel on AUC over jobs paired by (fold, seed)."""
    ours = {(j["fold"], j["seed"]): j for j in res.ok(OURS)}
    in_sweep = {r.name for r in res.rows}
    tests = []
    for name in others:
        if OURS not in in_sweep or name not in in_sweep:
            continue
        theirs = {(j["fold"], j["seed"]): j for j in res.ok(name)}
        for site in res.sites:
            pairs = [
                (ours[k]["sites"][site][TESTED_METRIC], theirs[k]["sites"][site][TESTED_METRIC])
                for k in sorted(ours.keys() & theirs.keys())
            ]
            pairs = [(a, b) for a, b in pairs if not (math.isnan(a) or math.isnan(b))]
            t, p = ttest_rel([a for a, _ in pairs], [b for _, b in pairs]) if len(pairs) > 1 else (math.nan, math.nan)
            tests.append(
                {
                    "comparison": f"{ROW_BY_NAME[OURS].display} vs {ROW_BY_NAME[name].display}",
                    "row": name,
                    "site": site,
                    "metric": TESTED_METRIC,
                    "n_pairs": len(pairs),
                    "mean_diff": float(np.mean([a - b for a, b in pairs])) if pairs else math.nan,
                    "t": float(t),
                    "p": float(p),
                }
            )
    return tests


def _p_cell(test: dict) -> str:
    if test["n_pairs"] < 2:
        return f"n/a ({test['n_pairs']})"
    return f"{test['p']:.3g} ({test['n_pairs']})"


def _tests_grid(res: SweepResults, tests: list[dict]) -> list[list[str]]:
    by_row = defaultdict(dict)
    for t in tests:
        by_row[t["comparison"]][t["site"]] = _p_cell(t)
    return [[comparison] + [cells.get(s, "–") for s in res.sites] for comparison, cells in by_row.items()]


# ---- writers ------------------------------------------------------------------------------------


def _csv(entries: list[dict]) -> str:
    buffer = io.StringIO()
    if entries:
        writer = csv.DictWriter(buffer, fieldnames=list(entries[0]))
        writer.writeheader()
        writer.writerows(entries)
    return buffer.getvalue()


def _markdown(header: list[str], grid: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in grid]) + "\n"


def _latex(header: list[str], grid: list[list[str]], caption: str) -> str:
    def escape(text: str) -> str:
        return text if text.startswith("$") else text.replace("&", "\\&").replace("%", "\\%").replace("_", "\\_")

    lines = [
        "\\begin{table}[t]",
        "\\centering",
        f"\\caption{{{escape(caption)}}}",
        "\\begin{tabular}{l" + "c" * (len(header) - 1) + "}",
        "\\hline",
        " & ".join(escape(h) for h in header) + " \\\\",
        "\\hline",
        *[" & ".join(escape(c) for c in row) + " \\\\" for row in grid],
        "\\hline",
        "\\end{tabular}",
        "\\end{table}",
    ]
    return "\n".join(lines) + "\n"


# ---- figures ------------------------------------------------------------------------------------


def pooled_predictions(res: SweepResults, row: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per site, (labels, P(COVID)) of the test images of all the row's finished jobs together."""
    pooled = defaultdict(lambda: ([], []))
    for job in res.ok(row):
        path = res.folder / job["folder"] / "predictions.csv"
        if not path.is_file():
            raise CrossSiteError(f"{path}: missing, though results.jsonl records job {job['job']} as finished")
        with open(path, newline="") as f:
            for r in csv.DictReader(f):
                pooled[r["site"]][0].append(int(r["label"]))
                pooled[r["site"]][1].append(float(r["p_covid"]))
    return {site: (np.array(y), np.array(p)) for site, (y, p) in pooled.items()}


def roc_figure(pooled: dict[str, dict], site: str) -> Figure:
    """Fig. 3 for one site; `pooled` maps row name -> `pooled_predictions` of that row."""
    fig = Figure(figsize=(15, 4.8))
    axes = fig.subplots(1, len(PANELS))
    for ax, (title, rows) in zip(axes, PANELS):
        for name in rows:
            labels, probs = pooled.get(name, {}).get(site, ([], []))
            if len(set(labels)) < 2:
                continue
            fpr, tpr, _ = roc_curve(labels, probs)
            ax.plot(fpr, tpr, label=f"{ROW_BY_NAME[name].display} (AUC {roc_auc_score(labels, probs):.3f})")
        ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=0.8)
        ax.set(title=title, xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="lower right", fontsize=8)
        else:
            ax.text(0.5, 0.5, "no finished jobs", ha="center")
    fig.suptitle(f"ROC curves, site {site} (test predictions pooled over folds and seeds)")
    return fig


def gradcam_figures(res: SweepResults, examples: int) -> tuple[dict[str, Figure], str]:
    """Per site a figure of Grad-CAM overlays (row 1 correct, row 2 wrong) from the first finished
    contrastive job with a best.pt, and a sentence saying which job it is (or why there is none)."""
    from .checkpoint import load_checkpoint, method_from_checkpoint
    from .gradcam import draw_overlay, explain

    jobs = [j for j in res.ok(OURS) if (res.folder / j["folder"] / "best.pt").is_file()]
    if not jobs:
        return {}, f"No Grad-CAM figures: no finished `{OURS}` job with its best.pt in {res.folder / 'jobs'}."
    job = jobs[0]
    checkpoint = res.folder / job["folder"] / "best.pt"
    method, config, site_names = method_from_checkpoint(load_checkpoint(checkpoint), checkpoint)
    with open(res.folder / job["folder"] / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    figures, unreadable = {}, []
    for site in res.sites:
        here = [r for r in rows if r["site"] == site]
        unreadable += [r["path"] for r in here if not Path(r["path"]).is_file()]
        here = [r for r in here if Path(r["path"]).is_file()]
        correct = [r for r in here if (float(r["p_covid"]) >= 0.5) == (r["label"] == "1")][:examples]
        wrong = [r for r in here if (float(r["p_covid"]) >= 0.5) != (r["label"] == "1")][:examples]
        fig = Figure(figsize=(3 * examples, 6.6))
        axes = fig.subplots(2, examples, squeeze=False)
        for line, (kind, chosen) in enumerate((("correctly classified", correct), ("misclassified", wrong))):
            results = explain(method, config, site_names.index(site), [Path(r["path"]) for r in chosen]) if chosen else []
            for ax, r, result in zip(axes[line], chosen, results):
                truth = "COVID" if r["label"] == "1" else "NonCOVID"
                draw_overlay(ax, result, f"{result['path'].name}\ntrue {truth}, P(COVID)={result['p_covid']:.3f}")
            for ax in axes[line][len(chosen):]:
                ax.axis("off")
            axes[line][0].text(-0.08, 0.5, kind, transform=axes[line][0].transAxes, rotation=90, va="center", ha="right")
        fig.suptitle(f"Grad-CAM of the COVID class, site {site}, {job['job']}")
        figures[site] = fig
    note = f"Grad-CAM maps of the COVID class from job `{job['job']}` (its best.pt), first test images in file order."
    if unreadable:
        note += f" {len(unreadable)} test image(s) not found here were left out, e.g. `{unreadable[0]}`."
    return figures, note


# ---- the report ---------------------------------------------------------------------------------


def write_report(folder: Path, examples: int = GRADCAM_EXAMPLES) -> Path:
    """Write report.md, tables/ and figures/ into the sweep folder; return report.md's path."""
    from .gradcam import save_figure

    res = load_results(Path(folder))
    tables, figures = res.folder / "tables", res.folder / "figures"
    config = res.settings["config"]
    ok = [r for r in res.latest.values() if r["status"] == "ok"]
    failed = {r["job"]: r["error"] for r in res.latest.values() if r["status"] != "ok" and r["job"] in res.planned}
    missing = [j for j in res.planned if j not in res.latest]
    md = [
        f"# Reproduction report: {res.folder.name}",
        "",
        f"{len(ok)} of {len(res.planned)} planned jobs finished ({len(res.rows)} rows x {res.settings['folds']} folds "
        f"x {res.settings['seeds']} seed(s)); training time summed over finished jobs: "
        f"{sum(r['seconds'] for r in ok) / 3600:.2f} h. Settings: {config['image_size']} px, width {config['width']}, "
        f"{config['epochs']} epochs, {config['batch_per_site']} images per site per step, lr {config['lr']} "
        f"(cosine), temperature {config['temperature']}, alpha {config['alpha']}.",
        "",
    ]

    entries = table1(res)
    atomic_write_text(tables / "table1.csv", _csv(entries))
    header = ["Method"] + [m.capitalize() if m != "auc" else "AUC" for m in METRICS]
    latex = []
    md += ["## Table I: test metrics per site", "",
           "Mean ± sample standard deviation (ddof=1) over folds x seeds, in %; best mean per column in bold; "
           "(n) = number of jobs behind the cell.", ""]
    for site in res.sites:
        grid = _table1_grid(res, entries, site, latex=False)
        md += [f"### Site {site}", "", _markdown(header, grid)]
        latex.append(_latex(header, _table1_grid(res, entries, site, latex=True), f"Test metrics (%), site {site}"))
    atomic_write_text(tables / "table1.tex", "\n".join(latex))

    for number, stem, others, title in (
        ("II", "table2", TABLE2, "contrastive vs Single, Joint and SepNorm"),
        ("III", "table3", TABLE3, "contrastive vs the comparison methods"),
    ):
        tests = paired_tests(res, others)
        atomic_write_text(tables / f"{stem}.csv", _csv(tests))
        grid = _tests_grid(res, tests)
        caption = f"Paired t-test p-values on test {TESTED_METRIC.upper()}, {title}"
        atomic_write_text(tables / f"{stem}.tex", _latex(["Comparison", *res.sites], grid, caption))
        md += [f"## Table {number}: {caption}", "",
               f"SciPy `ttest_rel` on per-job test {TESTED_METRIC.upper()}, jobs paired by (fold, seed); "
               "(n) = number of pairs; n/a where fewer than 2 pairs exist.", "",
               _markdown(["Comparison", *res.sites], grid) if grid else "No comparison rows in this sweep.\n"]

    md += ["## Fig. 3: ROC curves", "",
           "Each curve pools the test predictions of all finished jobs of a row (every image once per seed); "
           "the legend's AUC is that pooled curve's, so it can differ from Table I's mean of per-job AUCs.", ""]
    pooled = {r.name: pooled_predictions(res, r.name) for r in res.rows}
    for site in res.sites:
        name = f"fig3_roc_{site}.png"
        save_figure(roc_figure(pooled, site), figures / name)
        md += [f"![ROC curves, site {site}](figures/{name})", ""]

    cams, note = gradcam_figures(res, examples)
    md += ["## Figs. 4 and 5: Grad-CAM of the contrastive model", "", note, ""]
    for number, (site, fig) in enumerate(cams.items(), start=4):
        name = f"fig{number}_gradcam_{site}.png"
        save_figure(fig, figures / name)
        md += [f"Fig. {number}, site {site} (top: correctly classified, bottom: misclassified):", "",
               f"![Grad-CAM, site {site}](figures/{name})", ""]

    md += ["## Missing and failed jobs", ""]
    if not missing and not failed:
        md += ["None: every planned job finished.", ""]
    md += [f"- missing (never finished): `{j}`" for j in missing]
    md += [f"- failed: `{j}`: {error}" for j, error in failed.items()]
    report = res.folder / "report.md"
    atomic_write_text(report, "\n".join(md).rstrip() + "\n")
    return report
