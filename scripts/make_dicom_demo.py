"""Wrap the shipped sample's PNG slices as small DICOM CT series, for a pipeline check of crosssite's
DICOM path (reading, sorting, HU, lung window, per-scan decisions).

These are NOT hospital series: each "series" is a stack of unrelated 2D PNG slices of one class from
the SARS-CoV-2 CT-scan sample, resized to one size and mapped to Hounsfield units by the inverse of the
lung window (gray 0 -> -1350 HU, 255 -> +150 HU), so that crosssite's default window gives the PNG's
gray values back exactly. Stored as uint16 with RescaleSlope 1 and RescaleIntercept -2048 (so that the
window's lower end, below air's -1000 HU, fits), files named in shuffled order.

    python scripts/make_dicom_demo.py --out demo/hospital     # writes demo/hospital/series.csv
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from crosssite.data.dicom import write_series
from crosssite.data.images import load_grayscale
from crosssite.data.sites import COVID, LABEL_NAMES, NON_COVID, SAMPLE_DATA, read_sars_cov_2_ct
from crosssite.data.transforms import resize_square
from crosssite.data.volumes import LUNG_WINDOW


def gray_to_hu(gray: np.ndarray) -> np.ndarray:
    """Integer HU whose lung-window gray value is `gray` (the inverse of volumes.apply_window)."""
    width, level = LUNG_WINDOW
    return np.rint(gray.astype(np.float64) * width / 255.0 + level - width / 2)


def write_demo_series(out: Path, series_per_class: int = 10, slices: int = 8, size: int = 128) -> Path:
    """Write series_per_class series of `slices` slices per class under `out` and `out/series.csv`."""
    site = read_sars_cov_2_ct(SAMPLE_DATA / "sars-cov-2-ct")
    rows = []
    for label in (COVID, NON_COVID):
        paths = [s.path for s in site.samples if s.label == label]
        if series_per_class * slices > len(paths):
            raise SystemExit(f"the sample has {len(paths)} {LABEL_NAMES[label]} slices, fewer than "
                             f"{series_per_class} x {slices}")
        for k in range(series_per_class):
            stack = [resize_square(load_grayscale(p), size) for p in paths[k * slices:(k + 1) * slices]]
            name = f"{LABEL_NAMES[label].lower()}-{k:02d}"
            write_series(out / name, gray_to_hu(np.stack(stack)), patient_id=f"demo-{name}",
                         intercept=-2048.0, seed=k)
            rows.append({"path": name, "label": LABEL_NAMES[label], "patient_id": f"demo-{name}"})
    with open(out / "series.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "label", "patient_id"])
        writer.writeheader()
        writer.writerows(rows)
    return out / "series.csv"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for the series and series.csv")
    parser.add_argument("--series-per-class", type=int, default=10)
    parser.add_argument("--slices", type=int, default=8, help="slices per series")
    parser.add_argument("--size", type=int, default=128, help="slice side in pixels")
    args = parser.parse_args()
    print(write_demo_series(args.out, args.series_per_class, args.slices, args.size))


if __name__ == "__main__":
    main()
