"""`crosssite card RUN`: a model card (MODEL_CARD.md) and its facts as metadata.json, from a run folder.

Everything comes from what the run wrote (config.yaml, split.json, metrics.json, predictions.csv,
train_log.jsonl) plus fixed facts about the known datasets; nothing is re-trained or re-evaluated.
The AUC intervals are percentile intervals of a bootstrap over patients (crosssite.stats) where the
patient ids are known (a `patient` column of predictions.csv, else the site readers), else over images.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import numpy as np

from . import decision_report, run_folder
from .config import load_config
from .data.sites import COVID_CT, SARS_COV_2_CT, load_sites
from .errors import CrossSiteError
from .io import atomic_write_json, atomic_write_text, read_jsonl
from .preprocessing import Preprocessing
from .stats import BOOTSTRAP_REPLICATES, CONFIDENCE, bootstrap_auc, percentile_interval

PAPER = ('Z. Wang, Q. Liu, Q. Dou, "Contrastive Cross-Site Learning With Redesigned Net for COVID-19 CT '
         'Classification", IEEE JBHI 24(10):2806-2813, 2020, doi:10.1109/JBHI.2020.3023246')
REFERENCE_CODE = "https://github.com/med-air/Contrastive-COVIDNet"
INTENDED_USE = ("Research use only, not for diagnosis: the model has not been validated clinically, and its "
                "training data are small public collections with the flaws listed under Limitations.")
DATASETS = {
    SARS_COV_2_CT: {
        "source": "E. Soares et al., SARS-CoV-2 CT-scan dataset, medRxiv 2020, doi:10.1101/2020.04.24.20078584; "
                  "https://www.kaggle.com/plameneduardo/sarscov2-ctscan-dataset",
        "licence": "CC BY-NC-SA 4.0 (non-commercial, share alike)",
        "limitations": ["no patient ids: folds are per image, so slices of one patient can sit in both training "
                        "and test parts, and its intervals are image-level (too narrow)",
                        "two byte-identical COVID pairs and many near-duplicate neighbouring slices"],
    },
    COVID_CT: {
        "source": "J. Zhao et al., COVID-CT-Dataset, arXiv:2003.13865, 2020; https://github.com/UCSD-AI4H/COVID-CT",
        "licence": "no licence file; images taken from published papers, whose copyrights stay with their "
                   "authors and publishers: research use only, cite the dataset",
        "limitations": ["two COVID test figures are near-copies of two NonCOVID training figures "
                        "(kjr-21-e24-p5-29/31 vs 71%0/71%1)",
                        "images are figures taken from papers (some with coloured annotations), not scanner output"],
    },
}
FILES = (run_folder.CONFIG, run_folder.SPLIT, run_folder.METRICS, run_folder.PREDICTIONS, run_folder.TRAIN_LOG)


def _read_predictions(path: Path) -> list[dict]:
    rows = run_folder.read_predictions(path)
    if not rows or not {"site", "path", "label", "p_covid"} <= set(rows[0]):
        raise CrossSiteError(f"{path}: expected columns site, path, label, p_covid")
    return rows


def _patients(config, rows: list[dict]) -> tuple[dict[str, str | None], str]:
    """Patient id per image path, and where the ids came from."""
    if "patient" in rows[0]:
        return {r["path"]: r["patient"] or None for r in rows}, "the patient column of predictions.csv"
    try:
        sites = load_sites(Path(config.data) if config.data else None, config.sites)
    except CrossSiteError:
        return {}, "none found (the run's data folder cannot be read): image-level"
    ids = {}
    for site in sites.values():
        for s in site.samples:
            ids[str(s.path)] = ids[str(s.path.resolve())] = s.patient
    return ids, "the site readers (the run's data folder)"


def card_facts(run: Path) -> dict:
    """What the model card says, as one JSON-ready dict."""
    run = Path(run)
    missing = [name for name in FILES if not (run / name).is_file()]
    if missing:
        raise CrossSiteError(f"{run}: not a finished run folder (missing {', '.join(missing)})")
    config = load_config(run / run_folder.CONFIG)
    metrics = run_folder.read_metrics(run)
    split = run_folder.read_split_paths(run)
    log = read_jsonl(run / run_folder.TRAIN_LOG)
    rows = _read_predictions(run / run_folder.PREDICTIONS)
    patients, patient_source = _patients(config, rows)
    sites = {}
    for name, site_metrics in metrics["sites"].items():
        mine = [r for r in rows if r["site"] == name]
        labels = np.array([int(r["label"]) for r in mine])
        scores = np.array([float(r["p_covid"]) for r in mine])
        groups = [patients.get(r["path"], patients.get(str(Path(r["path"]).resolve()))) for r in mine]
        n_patients = len({g for g in groups if g is not None})
        low, high = percentile_interval(bootstrap_auc(labels, scores, groups))
        sites[name] = {
            **site_metrics,
            "auc_interval": [low, high],
            "interval_level": f"patient ({n_patients} patients)" if n_patients else "image (no patient ids)",
            "split_sizes": {part: len(paths) for part, paths in split.get(name, {}).items()},
            **DATASETS.get(name, {"source": "a site of the user's own (not recorded)",
                                  "licence": "not recorded", "limitations": []}),
        }
    devices = {r["device"] for r in log if "device" in r}
    return {
        "model": {"method": config.method, "backbone": config.backbone, "width": config.width,
                  "checkpoint": str(run / run_folder.BEST), "best_epoch": metrics.get("best_epoch"),
                  "val_mean_auc": metrics.get("val_mean_auc")},
        "paper": PAPER, "reference_code": REFERENCE_CODE, "intended_use": INTENDED_USE,
        "split": {"kind": config.split, "fold": config.fold, "folds": config.folds, "seed": config.seed,
                  "group_duplicates": config.group_duplicates},
        "preprocessing": Preprocessing.of(config).to_dict(),
        "training": {"epochs": len(log), "seconds": round(sum(r.get("seconds", 0) for r in log), 1),
                     "hardware": ", ".join(sorted(devices)) or "not recorded by the run"},
        "intervals": {"method": f"percentile bootstrap of AUC, {BOOTSTRAP_REPLICATES} replicates, "
                                f"{round(100 * CONFIDENCE)} %", "patient_ids": patient_source},
        "sites": sites,
        "decisions": decision_report.card_facts(run, rows, patients),
        "config": config.to_dict(),
        "written": date.today().isoformat(),
    }


def _pct(x: float) -> str:
    return "n/a" if x is None or np.isnan(x) else f"{100 * x:.1f}"


def card_markdown(facts: dict) -> str:
    m, s, p, t = facts["model"], facts["split"], facts["preprocessing"], facts["training"]
    lines = [
        f"# Model card: {m['method']} ({m['backbone']}, width {m['width']})", "",
        f"Checkpoint `{m['checkpoint']}` (epoch {m['best_epoch']}, chosen on mean validation AUC "
        f"{_pct(m['val_mean_auc'])} %). Written by `crosssite card` on {facts['written']}.", "",
        "## Method", "", f"A reimplementation (crosssite) of {facts['paper']}; reference code: {facts['reference_code']}.",
        "", "## Intended use", "", facts["intended_use"], "",
        "## Data", "",
    ]
    for name, site in facts["sites"].items():
        sizes = ", ".join(f"{k} {v}" for k, v in site["split_sizes"].items())
        lines += [f"- **{name}**: {site['source']}. Licence: {site['licence']}. Images in this run: {sizes}."]
    split = (f"{s['kind']} split" + (f", test fold {s['fold']} of {s['folds']} (stratified, patient-grouped where ids "
                                     f"exist; a patient-grouped fifth of the rest for validation)"
                                     if s["kind"] == "fold" else " (COVID-CT's official lists)")
             + f", seed {s['seed']}" + (f", near-duplicates grouped at {s['group_duplicates']}"
                                        if s["group_duplicates"] else ""))
    window = (f"; CT scans (DICOM, NIfTI, MetaImage) mapped from HU by the window width, level {p['window']}, "
              f"slices {p['slices']} (8-bit images are used as they are)")
    lines += ["", "## Split and preprocessing", "", f"{split}. Images resized to {p['image_size']} x "
              f"{p['image_size']} px (bilinear), gray scaled to [0, 1], replicated to 3 channels, ImageNet "
              f"mean/std normalised{window}.", "",
              "## Test metrics", "",
              f"Per site on the test part, in %; AUC with its {facts['intervals']['method']} interval "
              f"(patient ids from {facts['intervals']['patient_ids']}).", "",
              "| site | n | AUC | 95 % interval | resampled by | accuracy | sensitivity | specificity | F1 |",
              "|---|---|---|---|---|---|---|---|---|"]
    for name, x in facts["sites"].items():
        low, high = x["auc_interval"]
        lines.append(f"| {name} | {x['n']} | {_pct(x['auc'])} | {_pct(low)}-{_pct(high)} | {x['interval_level']} | "
                     f"{_pct(x['accuracy'])} | {_pct(x['recall'])} | {_pct(x['specificity'])} | {_pct(x['f1'])} |")
    lines += ["", *decision_report.card_markdown(facts["decisions"]), "## Training", "", f"{t['epochs']} epochs in {t['seconds']} s (train_log.jsonl, training and "
              f"validation); hardware: {t['hardware']}.", "", "## Limitations", ""]
    for name, site in facts["sites"].items():
        lines += [f"- {name}: {text}." for text in site["limitations"]]
    lines += ["- One fold and one seed: the test sets are small; compare models by the intervals, not the points.",
              "- Two public sites only: performance on another hospital's scanner is unknown "
              "(`crosssite adapt` re-estimates batch-norm statistics, it does not validate).", ""]
    return "\n".join(lines)


def write_card(run: Path) -> list[Path]:
    """Write MODEL_CARD.md and metadata.json into the run folder; return their paths."""
    facts = card_facts(Path(run))
    card, meta = Path(run) / "MODEL_CARD.md", Path(run) / "metadata.json"
    atomic_write_text(card, card_markdown(facts))
    atomic_write_json(meta, facts)
    return [card, meta]
