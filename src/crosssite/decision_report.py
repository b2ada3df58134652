"""How a model's decisions (crosssite.decisions) fare on test data: the text `evaluate` prints and the model
card's section (the sweep report's is crosssite.report.calibration_section)."""

from __future__ import annotations


import numpy as np

from . import decisions, ood, run_folder
from .checkpoint import load_checkpoint
from .operating_point import rates_with_intervals


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
    best = run / run_folder.BEST
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

