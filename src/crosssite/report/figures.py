"""The report's figures: Fig. 3's ROC curves from pooled test predictions, Figs. 4/5's Grad-CAM maps."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import roc_auc_score, roc_curve

from ..metrics import is_covid
from ..paper import FIG3_PANELS, OURS, ROW_BY_NAME
from ..run_folder import BEST, PREDICTIONS
from .results import SweepResults, read_csv


def pooled_predictions(res: SweepResults, row: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per site, (labels, P(COVID)) of the test images of all the row's finished jobs together."""
    pooled = defaultdict(lambda: ([], []))
    for job in res.ok(row):
        for r in read_csv(res.folder / job["folder"] / PREDICTIONS):
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
    from ..checkpoint import load_trained
    from ..gradcam import draw_overlay
    from ..saliency import explain

    jobs = [j for j in res.ok(OURS) if (res.folder / j["folder"] / BEST).is_file()]
    if not jobs:
        return {}, f"No Grad-CAM figures: no finished `{OURS}` job with its best.pt in {res.folder / 'jobs'}."
    job = jobs[0]
    checkpoint = res.folder / job["folder"] / BEST
    trained = load_trained(checkpoint)
    trained.method.double()  # float64: the figures do not depend on the thread count's summation order
    rows = read_csv(res.folder / job["folder"] / PREDICTIONS)
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
