"""`crosssite report SWEEP`: the paper's Tables I-III and Figs. 3-5 from a sweep folder, with intervals.

Reads sweep.yaml (which jobs were planned), results.jsonl (per-job test metrics; the last line of
a job counts) and the jobs' predictions.csv, tail_predictions.csv and best.pt; writes report.md,
tables/*.csv and *.tex, and figures/*.png into the sweep folder. Jobs planned but without an "ok"
line are named in the report. Table I averages per-job metrics over folds x seeds; Fig. 3 pools
predictions instead. Beside the paper's tables: test AUC of the validation-chosen, final and last-k
epochs with patient-bootstrap intervals, paired differences with t-intervals, the ablations and
duplicate-grouped folds. Everything is computed from the folder: the same folder gives the same bytes.
"""

from __future__ import annotations

import math
import zlib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import roc_auc_score, roc_curve

from . import report_calibration
from .errors import CrossSiteError
from .metrics import is_covid
from .io import atomic_write_csv, atomic_write_text
from .scans import describe, level_metrics
from .stats import BOOTSTRAP_REPLICATES, bootstrap_auc, cv_paired_difference, paired_difference, percentile_interval
from .run_folder import BEST, PREDICTIONS, TAIL_PREDICTIONS, read_predictions
from .paper import COMPARED_METRIC, COMPARISONS, FIG3_PANELS, OURS, ROW_BY_NAME, TABLE1_METRICS, Row, planned_names
from .sweep import EXTENSIONS, PROVENANCE, job_name, read_results, read_sweep_settings

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
    row_seeds = settings.get("row_seeds", {})
    planned = [job_name(r.name, fold, seed) for r, fold, seed in planned_names(rows, settings["folds"], settings["seeds"], row_seeds)]
    latest = {r["job"]: r for r in read_results(folder / "results.jsonl")}
    for record in latest.values():
        _check_metrics(folder / "results.jsonl", record)
    sites = list(dict.fromkeys(s for r in latest.values() if r["status"] == "ok" for s in r["sites"]))
    if not sites:
        raise CrossSiteError(f"{folder / 'results.jsonl'}: no finished job to report on")
    return SweepResults(folder, settings, rows, planned, latest, sites)


def _check_metrics(path: Path, record: dict) -> None:
    """A finished job's line holds, for every site, each metric the tables read: a hand-edited line, or one
    from an older crosssite, may not, and would otherwise stop the report with a traceback."""
    if record["status"] != "ok":
        return
    for site, metrics in record["sites"].items():
        missing = [m for m in TABLE1_METRICS
                   if isinstance(metrics.get(m), bool) or not isinstance(metrics.get(m), (int, float))]
        if missing:
            raise CrossSiteError(f"{path}: job {record['job']}, site {site}: no {', '.join(map(repr, missing))} metric "
                                 f"(needed: {', '.join(TABLE1_METRICS)}); mend its line from the job's metrics.json "
                                 "or re-run the job")


# ---- Table I: mean ± std per row, site and metric ----------------------------------------------


def table1(res: SweepResults) -> list[dict]:
    """One entry per (row, site, metric): mean and sample std (ddof=1) in %, and n jobs."""
    entries = []
    for row in res.rows:
        jobs = res.ok(row.name)
        for site in res.sites:
            for metric in TABLE1_METRICS:
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
    return [[r.display] + [cells[r.name, m] for m in TABLE1_METRICS] for r in res.rows if r.group != "grouped"]


# ---- test AUC of the chosen, final and last-k epochs, with patient-bootstrap intervals ----------

#: which epoch's test AUC: the validation-chosen one (best.pt), the last one, the mean of the last k
EPOCH_CHOICES = {"best_val": "validation-chosen epoch", "final": "final epoch", "last_k": "mean of the last k epochs"}


def job_aucs(res: SweepResults, job: dict) -> dict[tuple[str, str], tuple[float, np.ndarray]]:
    """(site, epoch choice) -> (test AUC, its bootstrap replicates) of one job.

    Patients are resampled where the site has ids, else images; each job and site has its own
    fixed random stream, shared by the three choices so that they are compared on the same draws.
    """
    folder = res.folder / job["folder"]
    best_rows = read_predictions(folder / PREDICTIONS)
    tail_file = folder / TAIL_PREDICTIONS
    tail_rows = read_predictions(tail_file) if tail_file.is_file() else []
    out = {}
    for site in res.sites:
        rows = [r for r in best_rows if r["site"] == site]
        if not rows:
            continue
        labels = np.array([int(r["label"]) for r in rows])
        patients = [r.get("patient") or None for r in rows]
        seed = zlib.crc32(f"{job['job']}/{site}".encode())
        best = np.array([float(r["p_covid"]) for r in rows])
        out[site, "best_val"] = (job["sites"][site]["auc"], bootstrap_auc(labels, best, patients, seed=seed))
        by_epoch = defaultdict(dict)
        for r in tail_rows:
            if r["site"] == site:
                by_epoch[int(r["epoch"])][r["path"]] = float(r["p_covid"])
        if not by_epoch:
            continue
        epochs = sorted(by_epoch)
        scores = [np.array([by_epoch[e][r["path"]] for r in rows]) for e in epochs]
        aucs = job.get("tail_auc", {}).get(site, {})
        point = [aucs.get(str(e), math.nan) for e in epochs]
        out[site, "final"] = (point[-1], bootstrap_auc(labels, scores[-1], patients, seed=seed))
        out[site, "last_k"] = (float(np.mean(point)), bootstrap_auc(labels, scores, patients, seed=seed))
    return out


def robust_auc(res: SweepResults, aucs: dict[str, dict]) -> list[dict]:
    """One entry per (row, site, epoch choice): mean, std over jobs and the 95 % bootstrap interval of the
    mean, in %; `aucs` maps job name -> `job_aucs`. Fewer than 2 jobs: no spread and no interval."""
    entries = []
    for row in res.rows:
        jobs = res.ok(row.name)
        for site in res.sites:
            for choice in EPOCH_CHOICES:
                found = [aucs[j["job"]][site, choice] for j in jobs if (site, choice) in aucs[j["job"]]]
                found = [(v, reps) for v, reps in found if not math.isnan(v)]
                values = [100 * v for v, _ in found]
                low = high = math.nan
                if len(found) > 1:
                    low, high = percentile_interval(100 * np.nanmean([reps for _, reps in found], axis=0))
                entries.append({
                    "row": row.name, "method": row.display, "site": site, "epoch": choice, "n": len(values),
                    "mean": float(np.mean(values)) if values else math.nan,
                    "std": float(np.std(values, ddof=1)) if len(values) > 1 else math.nan,
                    "ci_low": low, "ci_high": high,
                })
    return entries


def _interval_cell(e: dict) -> str:
    if e["n"] == 0:
        return "–"
    if e["n"] < 2:
        return f"{e['mean']:.1f}, n/a (1)"
    return f"{e['mean']:.1f} ± {e['std']:.1f} [{e['ci_low']:.1f}, {e['ci_high']:.1f}] ({e['n']})"


def _robust_grid(entries: list[dict], site: str, rows: list[Row]) -> list[list[str]]:
    cells = {(e["row"], e["epoch"]): _interval_cell(e) for e in entries if e["site"] == site}
    return [[r.display] + [cells[r.name, c] for c in EPOCH_CHOICES] for r in rows]


def patient_level(res: SweepResults) -> list[dict]:
    """Per (row, site with patient ids): mean and std over jobs of the patient-level test AUC, in %, where a
    patient's P(COVID) aggregates their slices (crosssite.scans, default aggregate)."""
    entries = []
    for row in res.rows:
        values = defaultdict(list)
        for job in res.ok(row.name):
            patients = level_metrics(read_predictions(res.folder / job["folder"] / PREDICTIONS))["patient"]
            for site, metrics in patients.items():
                if not math.isnan(metrics["auc"]):
                    values[site].append((100 * metrics["auc"], metrics["n"]))
        for site, found in values.items():
            aucs = [v for v, _ in found]
            entries.append({"row": row.name, "method": row.display, "site": site, "n": len(aucs),
                            "patients": found[0][1], "mean": float(np.mean(aucs)),
                            "std": float(np.std(aucs, ddof=1)) if len(aucs) > 1 else math.nan})
    return entries


# ---- Tables II and III and the ablations: paired differences on AUC ---------------------------


def paired_tests(res: SweepResults, comparisons: list[tuple[str, str]], aucs: dict[str, dict]) -> list[dict]:
    """Row a vs row b for each (a, b), per site and epoch choice: the mean paired difference a - b of test
    AUC over jobs paired by (fold, seed), in points, with the 95 % interval and p of
    `stats.cv_paired_difference` (seeds of a fold averaged, folds' overlap corrected for) and, as in the
    paper, SciPy's ttest_rel over the job pairs (`t_ttest_rel`, `p_ttest_rel`)."""
    in_sweep = {r.name for r in res.rows}
    test_train_ratio = 1 / max(res.settings["folds"] - 1, 1)  # one test fold against the k - 1 others
    tests = []
    for a, b in comparisons:
        if a not in in_sweep or b not in in_sweep:
            continue
        jobs_a = {(j["fold"], j["seed"]): aucs[j["job"]] for j in res.ok(a)}
        jobs_b = {(j["fold"], j["seed"]): aucs[j["job"]] for j in res.ok(b)}
        for site in res.sites:
            for choice in ("best_val", "last_k"):
                pairs = [(fold, jobs_a[fold, seed].get((site, choice)), jobs_b[fold, seed].get((site, choice)))
                         for fold, seed in sorted(jobs_a.keys() & jobs_b.keys())]
                pairs = [(fold, 100 * x[0], 100 * y[0]) for fold, x, y in pairs
                         if x and y and not (math.isnan(x[0]) or math.isnan(y[0]))]
                ours, theirs = [x for _, x, _ in pairs], [y for _, _, y in pairs]
                naive = paired_difference(ours, theirs)
                tests.append({
                    "comparison": f"{ROW_BY_NAME[a].display} vs {ROW_BY_NAME[b].display}",
                    "row": b, "site": site, "metric": COMPARED_METRIC, "epoch": choice, "n_pairs": len(pairs),
                    **cv_paired_difference(np.subtract(ours, theirs), [f for f, _, _ in pairs], test_train_ratio),
                    "t_ttest_rel": naive["t"], "p_ttest_rel": naive["p"],
                })
    return tests


def _difference_cell(test: dict) -> str:
    if test["n_folds"] < 2:
        return f"n/a ({test['n_pairs']})"
    return (f"{test['mean_diff']:+.1f} [{test['ci_low']:+.1f}, {test['ci_high']:+.1f}], p {test['p']:.2g} "
            f"({test['n_folds']} folds, {test['n_pairs']} pairs; ttest_rel p {test['p_ttest_rel']:.2g})")


def _tests_grid(res: SweepResults, tests: list[dict]) -> list[list[str]]:
    by_row = defaultdict(dict)
    for t in tests:
        by_row[t["comparison"]][t["site"], t["epoch"]] = _difference_cell(t)
    columns = [(s, c) for s in res.sites for c in ("best_val", "last_k")]
    return [[comparison] + [cells.get(c, "–") for c in columns] for comparison, cells in by_row.items()]


def _tests_header(res: SweepResults) -> list[str]:
    return ["Comparison"] + [f"{s}, {EPOCH_CHOICES[c]}" for s in res.sites for c in ("best_val", "last_k")]


def verdicts(tests: list[dict]) -> list[str]:
    """One sentence per comparison, site and epoch choice: resolved (the interval excludes 0) or not."""
    lines = []
    for t in tests:
        where = f"{t['comparison']}, {t['site']}, {EPOCH_CHOICES[t['epoch']]}"
        jobs = f"{t['n_folds']} folds, {t['n_pairs']} job pairs"
        if t["n_folds"] < 2:
            lines.append(f"- {where}: not tested ({jobs}).")
        elif t["ci_low"] > 0 or t["ci_high"] < 0:
            side = "higher" if t["mean_diff"] > 0 else "lower"
            lines.append(f"- {where}: **resolved**, {side} by {abs(t['mean_diff']):.1f} AUC points "
                         f"(95 % CI [{t['ci_low']:+.1f}, {t['ci_high']:+.1f}], {jobs}).")
        else:
            lines.append(f"- {where}: not resolved ({t['mean_diff']:+.1f} points, 95 % CI "
                         f"[{t['ci_low']:+.1f}, {t['ci_high']:+.1f}] includes 0, {jobs}).")
    return lines


def grouped_changes(res: SweepResults, entries: list[dict], aucs: dict[str, dict]) -> list[dict]:
    """Each duplicate-grouped row against its row on ordinary folds, per site and epoch choice: both means
    and the change, with a bootstrap interval of the change (test sampling only; the folds differ)."""
    cells = {(e["row"], e["site"], e["epoch"]): e for e in entries}
    changes = []
    for row in res.rows:
        base = row.name.removesuffix("-grouped")
        if row.group != "grouped" or base not in {r.name for r in res.rows}:
            continue
        for site in res.sites:
            for choice in ("best_val", "last_k"):
                g, b = cells[row.name, site, choice], cells[base, site, choice]
                reps = [np.nanmean([aucs[j["job"]][site, choice][1] for j in res.ok(name)
                                    if (site, choice) in aucs[j["job"]]], axis=0)
                        for name in (row.name, base) if g["n"] > 1 and b["n"] > 1]
                low, high = percentile_interval(100 * (reps[0] - reps[1])) if reps else (math.nan, math.nan)
                changes.append({"row": base, "display": ROW_BY_NAME[base].display, "site": site, "epoch": choice,
                                "ordinary": b, "grouped": g, "change": g["mean"] - b["mean"],
                                "ci_low": low, "ci_high": high})
    return changes


def _grouped_grid(changes: list[dict]) -> list[list[str]]:
    grid = []
    for c in changes:
        change = "n/a" if math.isnan(c["ci_low"]) else f"{c['change']:+.1f} [{c['ci_low']:+.1f}, {c['ci_high']:+.1f}]"
        grid.append([c["display"], c["site"], EPOCH_CHOICES[c["epoch"]], _interval_cell(c["ordinary"]),
                     _interval_cell(c["grouped"]), change])
    return grid


# ---- writers ------------------------------------------------------------------------------------


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
        path = res.folder / job["folder"] / PREDICTIONS
        if not path.is_file():
            raise CrossSiteError(f"{path}: missing, though results.jsonl records job {job['job']} as finished")
        for r in read_predictions(path):
            pooled[r["site"]][0].append(int(r["label"]))
            pooled[r["site"]][1].append(float(r["p_covid"]))
    return {site: (np.array(y), np.array(p)) for site, (y, p) in pooled.items()}


def roc_figure(pooled: dict[str, dict], site: str) -> Figure:
    """Fig. 3 for one site; `pooled` maps row name -> `pooled_predictions` of that row."""
    fig = Figure(figsize=(15, 4.8))
    axes = fig.subplots(1, len(FIG3_PANELS))
    for ax, (title, rows) in zip(axes, FIG3_PANELS):
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
    from .checkpoint import load_trained
    from .gradcam import draw_overlay, explain

    jobs = [j for j in res.ok(OURS) if (res.folder / j["folder"] / BEST).is_file()]
    if not jobs:
        return {}, f"No Grad-CAM figures: no finished `{OURS}` job with its best.pt in {res.folder / 'jobs'}."
    job = jobs[0]
    checkpoint = res.folder / job["folder"] / BEST
    trained = load_trained(checkpoint)
    trained.method.double()  # float64: the figures do not depend on the thread count's summation order
    rows = read_predictions(res.folder / job["folder"] / PREDICTIONS)
    figures, unreadable = {}, []
    for site in res.sites:
        here = [r for r in rows if r["site"] == site]
        unreadable += [r["path"] for r in here if not Path(r["path"]).is_file()]
        here = [r for r in here if Path(r["path"]).is_file()]
        correct = [r for r in here if is_covid(float(r["p_covid"])) == (r["label"] == "1")][:examples]
        wrong = [r for r in here if is_covid(float(r["p_covid"])) != (r["label"] == "1")][:examples]
        fig = Figure(figsize=(3 * examples, 6.6))
        axes = fig.subplots(2, examples, squeeze=False)
        for line, (kind, chosen) in enumerate((("correctly classified", correct), ("misclassified", wrong))):
            results = explain(trained.method, trained.config, trained.site_index(site),
                              [Path(r["path"]) for r in chosen]) if chosen else []
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
    started = res.settings.get(PROVENANCE, {})
    commits = sorted({r.get("commit", "unknown") for r in ok})
    fewer = res.settings.get("row_seeds", {})
    md = [
        f"# Reproduction report: {res.folder.name}",
        "",
        f"{len(ok)} of {len(res.planned)} planned jobs finished ({len(res.rows)} rows x {res.settings['folds']} folds "
        f"x {res.settings['seeds']} seed(s)"
        + (f"; run at fewer seeds: {', '.join(f'{k} ({v})' for k, v in fewer.items())}" if fewer else "")
        + f"); training time summed over finished jobs: "
        f"{sum(r['seconds'] for r in ok) / 3600:.2f} h. Settings: {config['image_size']} px, width {config['width']}, "
        f"{config['epochs']} epochs, {config['batch_per_site']} images per site per step, lr {config['lr']} "
        f"(cosine), temperature {config['temperature']}, alpha {config['alpha']}.",
        "",
        f"Produced by `{started.get('command', '(not recorded)')}` (sweep started at commit "
        f"`{started.get('commit', 'unknown')}`"
        + "".join(f"; extended by `{e.get('command')}` at commit `{e.get('commit')}`" for e in res.settings.get(EXTENSIONS, []))
        + f"; finished jobs ran at commit(s) {', '.join(f'`{c}`' for c in commits)}), "
        f"then `crosssite report` on this folder. Nothing below is typed by hand.",
        "",
    ]

    entries = table1(res)
    atomic_write_csv(tables / "table1.csv", entries)
    header = ["Method"] + [m.capitalize() if m != "auc" else "AUC" for m in TABLE1_METRICS]
    latex = []
    md += ["## Table I: test metrics per site", "",
           "Mean ± sample standard deviation (ddof=1) over folds x seeds, in %; best mean per column in bold; "
           "(n) = number of jobs behind the cell.", ""]
    for site in res.sites:
        grid = _table1_grid(res, entries, site, latex=False)
        md += [f"### Site {site}", "", _markdown(header, grid)]
        latex.append(_latex(header, _table1_grid(res, entries, site, latex=True), f"Test metrics (%), site {site}"))
    atomic_write_text(tables / "table1.tex", "\n".join(latex))

    aucs = {j["job"]: job_aucs(res, j) for j in ok}
    robust = robust_auc(res, aucs)
    atomic_write_csv(tables / "auc_intervals.csv", robust)
    k = config.get("tail_epochs", 3)
    md += ["## Test AUC of the chosen, final and last epochs, with intervals", "",
           "The validation-chosen epoch is what Table I reports; the final epoch and the mean over the last "
           f"{k} epochs do not depend on a noisy choice of epoch (test predictions of those epochs were kept "
           "for this table only; nothing was selected on them). Cells: mean ± std over jobs "
           f"[95 % interval of the mean from a bootstrap of the test patients, {BOOTSTRAP_REPLICATES} "
           "replicates, each job's test set resampled] (n jobs), in %. Sites without patient ids "
           "(sars-cov-2-ct) are resampled by image, which understates the uncertainty where neighbouring "
           "slices are near-duplicates. n/a: fewer than 2 jobs.", ""]
    non_grouped = [r for r in res.rows if r.group != "grouped"]
    for site in res.sites:
        md += [f"### Site {site}", "", _markdown(["Method", *EPOCH_CHOICES.values()], _robust_grid(robust, site, non_grouped))]

    by_patient = patient_level(res)
    atomic_write_csv(tables / "patient_level.csv", by_patient)
    md += ["## Patient-level test AUC", "",
           f"Where a site has patient ids, each test patient's P(COVID) is the {describe()} of their "
           "images (`crosssite.scans`), and the AUC is taken over patients: mean ± std over jobs (n jobs; "
           "patients per test fold in brackets). n/a: fewer than 2 jobs.", ""]
    if by_patient:
        grid = [[e["method"], e["site"], (f"{e['mean']:.1f} ± {e['std']:.1f} ({e['n']})" if e["n"] > 1
                                          else f"{e['mean']:.1f}, n/a (1)") + f" [{e['patients']} patients]"]
                for e in by_patient if ROW_BY_NAME[e["row"]].group != "grouped"]
        md += [_markdown(["Method", "Site", "Patient-level AUC"], grid)]
    else:
        md += ["No site of this sweep has patient ids.", ""]

    said, tested = [], 0
    for number, stem, comparisons, title in COMPARISONS:
        tests = paired_tests(res, comparisons, aucs)
        said += verdicts(tests)
        tested += sum(t["n_folds"] > 1 for t in tests)
        atomic_write_csv(tables / f"{stem}.csv", tests)
        grid = _tests_grid(res, tests)
        caption = f"Paired differences of test {COMPARED_METRIC.upper()}, {title}"
        atomic_write_text(tables / f"{stem}.tex", _latex(_tests_header(res), grid, caption))
        md += [f"## Table {number}: {caption}", "",
               f"Mean paired difference (first row minus second) of per-job test {COMPARED_METRIC.upper()} in "
               "points, jobs paired by (fold, seed), [95 % interval], p (folds, job pairs; p of SciPy "
               "`ttest_rel` over the job pairs, the paper's test). The interval and the first p allow "
               "for how the jobs depend on each other: the pairs of a fold share its test set, so they are "
               "averaged first, and the folds share most of their training data, so the variance of the mean "
               "over folds is corrected as by Nadeau & Bengio (2003), with folds - 1 degrees of freedom. "
               "`ttest_rel` treats every job pair as independent and is optimistic. n/a where fewer than 2 "
               "folds have pairs.", "",
               _markdown(_tests_header(res), grid) if grid else "No comparison rows in this sweep.\n"]
    md += ["## Which differences are resolved", "",
           f"A difference is resolved when its 95 % interval above excludes 0. Of the {tested} differences "
           f"tested here, about {tested / 20:.1f} would exclude 0 by chance alone if no method differed from "
           "another (no correction for multiple comparisons is made), so a single resolved difference is weak "
           "evidence; one that holds at the validation-chosen epoch and over the last epochs, on both sites, "
           "is stronger.", "",
           *(said or ["No comparisons in this sweep."]), ""]

    changes = grouped_changes(res, robust, aucs)
    md += ["## Duplicate-grouped folds", ""]
    if changes:
        atomic_write_csv(tables / "grouped_folds.csv", [
            {k: v for k, v in c.items() if k not in ("ordinary", "grouped")}
            | {"ordinary_mean": c["ordinary"]["mean"], "grouped_mean": c["grouped"]["mean"]} for c in changes
        ])
        md += ["Rows re-run on folds that keep near-duplicate images (thumbnail correlation >= 0.95) in one part "
               "(`--group-duplicates 0.95`), against the same rows on ordinary folds. sars-cov-2-ct has no "
               "patient ids, so on ordinary folds neighbouring slices of one patient can straddle train and "
               "test. Change = grouped minus ordinary mean, in points, [95 % bootstrap interval of test "
               "sampling only: the folds differ, so the pairs are not matched].", "",
               _markdown(["Method", "Site", "Epoch", "Ordinary folds", "Grouped folds", "Change"], _grouped_grid(changes))]
    else:
        md += ["No duplicate-grouped rows in this sweep (run `crosssite sweep --methods grouped`).", ""]

    md += report_calibration.sweep_section(res, tables, figures, _markdown)

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
