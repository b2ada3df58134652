"""The report's numbers as text: table cells and grids, Markdown and LaTeX tables, sentences."""

from __future__ import annotations

import math

from ..paper import TABLE1_METRICS, Row
from . import preregistered as prereg
from .results import SweepResults
from .tables import EPOCH_CHOICES, TESTED_CHOICES


def markdown(header: list[str], grid: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in grid]) + "\n"


def latex(header: list[str], grid: list[list[str]], caption: str) -> str:
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


# ---- Table I ------------------------------------------------------------------------------------

TABLE1_HEADER = ["Method"] + [m.capitalize() if m != "auc" else "AUC" for m in TABLE1_METRICS]


def _table1_cell(e: dict, tex: bool) -> str:
    if e["n"] == 0:
        return "--" if tex else "–"
    std = "--" if math.isnan(e["std"]) else f"{e['std']:.2f}"
    if tex:
        value = f"{e['mean']:.2f} \\pm {std}"
        return (f"$\\mathbf{{{value}}}$" if e["best"] else f"${value}$") + f" ({e['n']})"
    value = f"{e['mean']:.2f} ± {std}"
    return (f"**{value}**" if e["best"] else value) + f" ({e['n']})"


def table1_grid(res: SweepResults, entries: list[dict], site: str, tex: bool) -> list[list[str]]:
    cells = {(e["row"], e["metric"]): _table1_cell(e, tex) for e in entries if e["site"] == site}
    return [[r.display] + [cells[r.name, m] for m in TABLE1_METRICS] for r in res.table_rows()]


# ---- AUC with intervals -------------------------------------------------------------------------


def interval_cell(e: dict) -> str:
    if e["n"] == 0:
        return "–"
    if e["n"] < 2:
        return f"{e['mean']:.1f}, n/a (1)"
    return f"{e['mean']:.1f} ± {e['std']:.1f} [{e['ci_low']:.1f}, {e['ci_high']:.1f}] ({e['n']})"


def robust_grid(entries: list[dict], site: str, rows: list[Row]) -> list[list[str]]:
    cells = {(e["row"], e["epoch"]): interval_cell(e) for e in entries if e["site"] == site}
    return [[r.display] + [cells[r.name, c] for c in EPOCH_CHOICES] for r in rows]


def patient_grid(entries: list[dict]) -> list[list[str]]:
    return [[e["method"], e["site"], (f"{e['mean']:.1f} ± {e['std']:.1f} ({e['n']})" if e["n"] > 1
                                      else f"{e['mean']:.1f}, n/a (1)") + f" [{e['patients']} patients]"]
            for e in entries]


# ---- paired differences ------------------------------------------------------------------------


def _pairs(test: dict) -> str:
    return f"{test['n_pairs']} pairs, {test['repetitions']} repetition{'s' if test['repetitions'] != 1 else ''}"


def difference_cell(test: dict) -> str:
    if test["n_pairs"] < 2:
        return f"n/a ({test['n_pairs']} pairs)"
    return (f"{test['mean_diff']:+.1f} [{test['ci_low']:+.1f}, {test['ci_high']:+.1f}], p {test['p']:.2g} "
            f"({_pairs(test)}; naive ttest_rel p {test['p_naive_ttest_rel']:.2g})")


def tests_header(res: SweepResults) -> list[str]:
    return ["Comparison"] + [f"{s}, {EPOCH_CHOICES[c]}" for s in res.sites for c in TESTED_CHOICES]


def tests_grid(res: SweepResults, tests: list[dict]) -> list[list[str]]:
    by_row = {}
    for t in tests:
        by_row.setdefault(t["comparison"], {})[t["site"], t["epoch"]] = difference_cell(t)
    columns = [(s, c) for s in res.sites for c in TESTED_CHOICES]
    return [[comparison] + [cells.get(c, "–") for c in columns] for comparison, cells in by_row.items()]


def verdicts(tests: list[dict]) -> list[str]:
    """One sentence per comparison, site and epoch choice: resolved (the interval excludes 0) or not."""
    lines = []
    for t in tests:
        where = f"{t['comparison']}, {t['site']}, {EPOCH_CHOICES[t['epoch']]}"
        if t["n_pairs"] < 2:
            lines.append(f"- {where}: not tested ({_pairs(t)}).")
        elif t["ci_low"] > 0 or t["ci_high"] < 0:
            side = "higher" if t["mean_diff"] > 0 else "lower"
            lines.append(f"- {where}: **resolved**, {side} by {abs(t['mean_diff']):.1f} AUC points "
                         f"(95 % CI [{t['ci_low']:+.1f}, {t['ci_high']:+.1f}], p {t['p']:.2g}, {_pairs(t)}).")
        else:
            lines.append(f"- {where}: not resolved ({t['mean_diff']:+.1f} points, 95 % CI "
                         f"[{t['ci_low']:+.1f}, {t['ci_high']:+.1f}] includes 0, p {t['p']:.2g}, {_pairs(t)}).")
    return lines


def grouped_grid(changes: list[dict]) -> list[list[str]]:
    grid = []
    for c in changes:
        change = "n/a" if math.isnan(c["ci_low"]) else f"{c['change']:+.1f} [{c['ci_low']:+.1f}, {c['ci_high']:+.1f}]"
        grid.append([c["display"], c["site"], EPOCH_CHOICES[c["epoch"]], interval_cell(c["ordinary"]),
                     interval_cell(c["grouped"]), change])
    return grid


# ---- the pre-registered comparison ---------------------------------------------------------------

PRIMARY_HEADER = ["Site", "Pairs", "d (points)", "95 % interval", "p (corrected)", "naive ttest_rel p",
                  "sd of d", f"power at ±{prereg.MARGIN}", f"detectable with {prereg.TARGET_POWER:.0%} power"]


def primary_lines(contrast: dict) -> list[str]:
    """The pre-registered contrast as Markdown: state of the sweep, the table per site, the verdict."""
    folds, repetitions = contrast["design"]
    done = f"{contrast['finished']} of {contrast['planned']} planned jobs of the two rows finished"
    state = {
        "complete": f"Complete: {done}; the verdict below is the pre-registered analysis.",
        "interim": f"**Interim**: {done}. No verdict is drawn from an interim report (docs/preregistration.md, "
                   "Stopping and analysis); the numbers below are a progress record.",
        "other design": f"This sweep is not the pre-registered design ({folds} folds x {repetitions} repetition(s); "
                        f"pre-registered: {prereg.FOLDS} x {prereg.REPETITIONS}); {done}. The contrast is shown, "
                        "no verdict is drawn.",
    }[contrast["status"]]
    grid = []
    for site, s in contrast["sites"].items():
        if s["n_pairs"] < 2:
            grid.append([site, _pairs(s)] + ["n/a"] * (len(PRIMARY_HEADER) - 2))
            continue
        grid.append([site, _pairs(s), f"{s['mean_diff']:+.2f}", f"[{s['ci_low']:+.2f}, {s['ci_high']:+.2f}]",
                     f"{s['p']:.2g}", f"{s['p_naive_ttest_rel']:.2g}", f"{s['sd']:.2f}", f"{s['power_at_margin']:.2f}",
                     f"{s['detectable']:.2f}"])
    lines = [
        f"d = AUC({prereg.OURS}) - AUC({prereg.THEIRS}) in points, each job's test AUC averaged over its last "
        f"epochs (results.jsonl `tail_auc`), jobs paired by (fold, seed). Test: corrected repeated k-fold "
        f"t-test (Bouckaert & Frank 2004) over all pairs, variance (1/(k r) + n_test/n_train) s^2 with "
        f"n_test/n_train = {contrast['test_train_ratio']:.4f} (test fold over the part the weights were fitted "
        "on), k r - 1 degrees of freedom; the naive ttest_rel p (every pair independent) is shown beside it and "
        f"decides nothing. Power: probability of resolving a true d of ±{prereg.MARGIN} points at the observed sd "
        f"of d (noncentral t); detectable: the true d resolved with {prereg.TARGET_POWER:.0%} power. Primary "
        f"site: {prereg.PRIMARY_SITE}; the others are secondary.",
        "",
        state,
        "",
        markdown(PRIMARY_HEADER, grid),
    ]
    if contrast["verdict"]:
        lines += [f"**Verdict ({prereg.PRIMARY_SITE}): {contrast['verdict']}.**", ""]
    return lines
