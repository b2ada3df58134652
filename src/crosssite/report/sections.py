"""report.md as a list of sections: each takes the report being written, writes its tables and figures and
returns its Markdown lines; `write_report` walks SECTIONS in order. A new section is one function and one
entry of SECTIONS."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from ..data.splits import VAL_FOLDS
from ..io import atomic_write_csv, atomic_write_text
from ..paper import COMPARED_METRIC, COMPARISONS
from ..scans import describe
from ..stats import BOOTSTRAP_REPLICATES
from ..sweep import EXTENSIONS, PROVENANCE
from . import render
from .calibration_section import sweep_section
from .federated_section import federated_section
from .figures import gradcam_figures, pooled_predictions, roc_figure
from .preregistered import primary_contrast
from .results import SweepResults, job_scores, load_results
from .tables import (EPOCH_CHOICES, auc_replicates, design_ratio, grouped_changes, paired_tests, patient_level,
                     robust_auc, table1)

GRADCAM_EXAMPLES = 4  # correctly and wrongly classified test images per site in Figs. 4/5


@dataclass
class Report:
    """A report being written: the sweep, where its files go, and the numbers several sections share."""

    res: SweepResults
    examples: int = GRADCAM_EXAMPLES
    against: SweepResults | None = None  # the centralised reference sweep of federated rows (--against)

    @property
    def tables(self) -> Path:
        return self.res.folder / "tables"

    @property
    def figures(self) -> Path:
        return self.res.folder / "figures"

    @property
    def finished(self) -> list[dict]:
        return [r for r in self.res.latest.values() if r["status"] == "ok"]

    @cached_property
    def aucs(self) -> dict[str, dict]:
        return auc_replicates(self.res, {j["job"]: job_scores(self.res, j) for j in self.finished})

    @cached_property
    def robust(self) -> list[dict]:
        return robust_auc(self.res, self.aucs)


def header(report: Report) -> list[str]:
    res = report.res
    config = res.settings["config"]
    ok = report.finished
    started = res.settings.get(PROVENANCE, {})
    commits = sorted({r.get("commit", "unknown") for r in ok})
    fewer = res.settings.get("row_seeds", {})
    return [
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
        f"Design: each seed is one repetition of {res.settings['folds']}-fold cross-validation with its own "
        "partition of every site (the split is shuffled with the seed), so the seeds are repeated k-fold "
        "cross-validation, not replicates of fixed folds; every image of a site is tested once per repetition, "
        f"and within a fold's other part 1/{VAL_FOLDS} is the validation part (epoch choice only). The rows of one "
        "(fold, seed) share its partition.",
        "",
        f"Produced by `{started.get('command', '(not recorded)')}` (sweep started at commit "
        f"`{started.get('commit', 'unknown')}`"
        + "".join(f"; extended by `{e.get('command')}` at commit `{e.get('commit')}`" for e in res.settings.get(EXTENSIONS, []))
        + f"; finished jobs ran at commit(s) {', '.join(f'`{c}`' for c in commits)}), "
        f"then `crosssite report` on this folder. Nothing below is typed by hand.",
        "",
    ]


def preregistered(report: Report) -> list[str]:
    contrast = primary_contrast(report.res)
    if contrast is None:
        return []
    return ["## The pre-registered comparison (docs/preregistration.md)", "", *render.primary_lines(contrast)]


def table_i(report: Report) -> list[str]:
    res = report.res
    entries = table1(res)
    atomic_write_csv(report.tables / "table1.csv", entries)
    md = ["## Table I: test metrics per site", "",
          "Mean ± sample standard deviation (ddof=1) over folds x seeds, in %; best mean per column in bold; "
          "(n) = number of jobs behind the cell.", ""]
    tex = []
    for site in res.sites:
        md += [f"### Site {site}", "", render.markdown(render.TABLE1_HEADER, render.table1_grid(res, entries, site, tex=False))]
        tex.append(render.latex(render.TABLE1_HEADER, render.table1_grid(res, entries, site, tex=True),
                                f"Test metrics (%), site {site}"))
    atomic_write_text(report.tables / "table1.tex", "\n".join(tex))
    return md


def auc_intervals(report: Report) -> list[str]:
    res = report.res
    atomic_write_csv(report.tables / "auc_intervals.csv", report.robust)
    k = res.settings["config"].get("tail_epochs", 3)
    md = ["## Test AUC of the chosen, final and last epochs, with intervals", "",
          "The validation-chosen epoch is what Table I reports; the final epoch and the mean over the last "
          f"{k} epochs do not depend on a noisy choice of epoch (test predictions of those epochs were kept "
          "for this table only; nothing was selected on them). Cells: mean ± std over jobs "
          f"[95 % interval of the row's mean from a bootstrap of the site's test patients, {BOOTSTRAP_REPLICATES} "
          "replicates] (n jobs), in %. Each replicate draws the site's patients with replacement once and "
          "weighs every drawn patient as often as drawn in every job of the row, since each patient is tested "
          "once per repetition. Sites without patient ids (sars-cov-2-ct) are resampled by image, which "
          "understates the uncertainty where neighbouring slices are near-duplicates. The interval covers test "
          "sampling only, not the noise of training (initialisation, batch order, which patients were trained "
          "on): a re-run of the sweep can move a mean by more. n/a: fewer than 2 jobs.", ""]
    for site in res.sites:
        md += [f"### Site {site}", "",
               render.markdown(["Method", *EPOCH_CHOICES.values()], render.robust_grid(report.robust, site, res.table_rows()))]
    return md


def patient_auc(report: Report) -> list[str]:
    entries = patient_level(report.res)
    atomic_write_csv(report.tables / "patient_level.csv", entries)
    md = ["## Patient-level test AUC", "",
          f"Where a site has patient ids, each test patient's P(COVID) is the {describe()} of their "
          "images (`crosssite.scans`), and the AUC is taken over patients: mean ± std over jobs (n jobs; "
          "patients per test fold in brackets). n/a: fewer than 2 jobs.", ""]
    rows = {r.name for r in report.res.table_rows()}
    shown = [e for e in entries if e["row"] in rows]
    if not entries:
        return md + ["No site of this sweep has patient ids.", ""]
    return md + [render.markdown(["Method", "Site", "Patient-level AUC"], render.patient_grid(shown))]


def comparisons(report: Report) -> list[str]:
    res = report.res
    folds, ratio = res.settings["folds"], design_ratio(res)
    md = ["## Paired differences: how they are tested", "",
          f"Cells: mean paired difference (first row minus second) of per-job test {COMPARED_METRIC.upper()} in "
          "points, jobs paired by (fold, seed), [95 % interval], p (pairs, repetitions; naive ttest_rel p). "
          "The interval and p are the corrected repeated k-fold cross-validation t-test (Bouckaert & Frank, "
          "PAKDD 2004, after Nadeau & Bengio, Machine Learning 2003) over all k x r (fold, repetition) pairs: "
          "m = the mean of the differences, s^2 their sample variance (ddof 1), standard error "
          f"sqrt((1/(k r) + n_test/n_train) s^2) with n_test/n_train = {ratio:.4f} = (1/{folds}) / "
          f"((1 - 1/{folds})(1 - 1/{VAL_FOLDS})), the test fold over the part the weights were fitted on (the "
          "validation part only picks the epoch and is not counted), and k r - 1 degrees of freedom. The "
          "correction allows for the jobs' shared training data and for each repetition testing the same "
          "images again; no fold is matched to a fold of another repetition, so how the folds are numbered "
          "changes nothing. The naive p is SciPy's `ttest_rel` over the same pairs, the paper's test: it treats "
          "every pair as independent and is optimistic; it decides nothing here. n/a where fewer than 2 pairs.",
          ""]
    said, tested = [], 0
    for number, stem, pairs, title in COMPARISONS:
        tests = paired_tests(res, pairs, report.aucs)
        said += render.verdicts(tests)
        tested += sum(t["n_pairs"] > 1 for t in tests)
        atomic_write_csv(report.tables / f"{stem}.csv", tests)
        grid = render.tests_grid(res, tests)
        caption = f"Paired differences of test {COMPARED_METRIC.upper()}, {title}"
        atomic_write_text(report.tables / f"{stem}.tex", render.latex(render.tests_header(res), grid, caption))
        md += [f"## Table {number}: {caption}", "",
               render.markdown(render.tests_header(res), grid) if grid else "No comparison rows in this sweep.\n"]
    return md + ["## Which differences are resolved", "",
                 f"A difference is resolved when its 95 % interval above excludes 0. Of the {tested} differences "
                 f"tested here, about {tested / 20:.1f} would exclude 0 by chance alone if no method differed from "
                 "another (no correction for multiple comparisons is made), so a single resolved difference is weak "
                 "evidence; one that holds at the validation-chosen epoch and over the last epochs, on both sites, "
                 "is stronger.", "",
                 *(said or ["No comparisons in this sweep."]), ""]


def federated(report: Report) -> list[str]:
    return federated_section(report.res, report.against, report.tables)


def grouped_folds(report: Report) -> list[str]:
    changes = grouped_changes(report.res, report.robust, report.aucs)
    md = ["## Duplicate-grouped folds", ""]
    if not changes:
        return md + ["No duplicate-grouped rows in this sweep (run `crosssite sweep --methods grouped`).", ""]
    atomic_write_csv(report.tables / "grouped_folds.csv", [
        {k: v for k, v in c.items() if k not in ("ordinary", "grouped")}
        | {"ordinary_mean": c["ordinary"]["mean"], "grouped_mean": c["grouped"]["mean"]} for c in changes
    ])
    return md + ["Rows re-run on folds that keep near-duplicate images (thumbnail correlation >= 0.95) in one part "
                 "(`--group-duplicates 0.95`), against the same rows on ordinary folds. sars-cov-2-ct has no "
                 "patient ids, so on ordinary folds neighbouring slices of one patient can straddle train and "
                 "test. Change = grouped minus ordinary mean, in points, [95 % interval from the same patient "
                 "bootstrap draws for both rows: test sampling only; the folds differ, so no jobs are paired].", "",
                 render.markdown(["Method", "Site", "Epoch", "Ordinary folds", "Grouped folds", "Change"],
                                 render.grouped_grid(changes))]


def fig3(report: Report) -> list[str]:
    from ..gradcam import save_figure

    res = report.res
    md = ["## Fig. 3: ROC curves", "",
          "Each curve pools the test predictions of all finished jobs of a row (every image once per seed); "
          "the legend's AUC is that pooled curve's, so it can differ from Table I's mean of per-job AUCs.", ""]
    pooled = {r.name: pooled_predictions(res, r.name) for r in res.rows}
    for site in res.sites:
        name = f"fig3_roc_{site}.png"
        save_figure(roc_figure(pooled, site), report.figures / name)
        md += [f"![ROC curves, site {site}](figures/{name})", ""]
    return md


def figs4_5(report: Report) -> list[str]:
    from ..gradcam import save_figure

    cams, note = gradcam_figures(report.res, report.examples)
    md = ["## Figs. 4 and 5: Grad-CAM of the contrastive model", "", note, ""]
    for number, (site, fig) in enumerate(cams.items(), start=4):
        name = f"fig{number}_gradcam_{site}.png"
        save_figure(fig, report.figures / name)
        md += [f"Fig. {number}, site {site} (top: correctly classified, bottom: misclassified):", "",
               f"![Grad-CAM, site {site}](figures/{name})", ""]
    return md


def calibration(report: Report) -> list[str]:
    return sweep_section(report.res, report.tables, report.figures)


def missing_jobs(report: Report) -> list[str]:
    res = report.res
    failed = {r["job"]: r["error"] for r in res.latest.values() if r["status"] != "ok" and r["job"] in res.planned}
    missing = [j for j in res.planned if j not in res.latest]
    md = ["## Missing and failed jobs", ""]
    if not missing and not failed:
        md += ["None: every planned job finished.", ""]
    md += [f"- missing (never finished): `{j}`" for j in missing]
    return md + [f"- failed: `{j}`: {error}" for j, error in failed.items()]


SECTIONS = (header, preregistered, table_i, auc_intervals, patient_auc, comparisons, federated, grouped_folds,
            calibration, fig3, figs4_5, missing_jobs)


def write_report(folder: Path, examples: int = GRADCAM_EXAMPLES, against: Path | None = None) -> Path:
    """Write report.md, tables/ and figures/ into the sweep folder; return report.md's path. `against`: the
    sweep folder of the centralised rows that federated rows are paired with."""
    report = Report(load_results(Path(folder)), examples, load_results(Path(against)) if against else None)
    md = [line for section in SECTIONS for line in section(report)]
    path = report.res.folder / "report.md"
    atomic_write_text(path, "\n".join(md).rstrip() + "\n")
    return path
