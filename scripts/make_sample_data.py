"""Build src/crosssite/sample_data/: a small real sample of both sites in their original layouts.

Usage: python scripts/make_sample_data.py [--source ../shared/data] [--seed 0]
Deterministic for a seed. Images are shrunk to a 96 px shorter side so the repository stays small.
"""

from __future__ import annotations

import argparse
import csv
import re
import shutil
import zipfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import openpyxl
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "src" / "crosssite" / "sample_data"
PER_CLASS = 80
SHORT_SIDE = 96
# Site B's official-split parts get this many images per class in the sample.
PART_QUOTA = {"train": 40, "val": 20, "test": 20}
# Near-identical figures present in both classes of Site B (see the data README): never sample them.
EXCLUDED = {"kjr-21-e24-p5-29", "kjr-21-e24-p5-31", "71%0", "71%1"}


def shrink_copy(src: Path, dst: Path) -> None:
    img = Image.open(src)
    img.load()
    w, h = img.size
    if min(w, h) > SHORT_SIDE:
        scale = SHORT_SIDE / min(w, h)
        img = img.resize((max(SHORT_SIDE, round(w * scale)), max(SHORT_SIDE, round(h * scale))),
                         Image.Resampling.LANCZOS)
    dst.parent.mkdir(parents=True, exist_ok=True)
    img.convert("L").save(dst, optimize=True)


def sample_sars(src: Path, dst: Path, rng: np.random.Generator) -> None:
    """One image from each of PER_CLASS equal ranges of the numbering, so the sample spans the release."""
    for folder in ("COVID", "non-COVID"):
        files = sorted((src / folder).glob("*.png"), key=lambda p: int(re.search(r"\((\d+)\)", p.name).group(1)))
        for chunk in np.array_split(np.arange(len(files)), PER_CLASS):
            f = files[int(rng.choice(chunk))]
            shrink_copy(f, dst / folder / f.name)


def pick_patients(by_patient: dict[str, list[str]], part_of: dict[str, str],
                  rng: np.random.Generator) -> list[str]:
    """Whole patients, filling each official part's quota exactly (smaller patients fill the remainder)."""
    chosen = []
    for part, quota in PART_QUOTA.items():
        pids = sorted(p for p in by_patient if part_of[p] == part)
        for pid in rng.permutation(pids):
            n = len(by_patient[pid])
            if n <= quota and not EXCLUDED & {Path(x).stem for x in by_patient[pid]}:
                chosen.append(str(pid))
                quota -= n
            if quota == 0:
                break
        if quota:
            raise SystemExit(f"cannot fill the {part} quota with whole patients")
    return chosen


def save_reproducible(wb: openpyxl.Workbook, path: Path) -> None:
    """openpyxl stamps the save time into the file; pin it so reruns give identical bytes."""
    wb.save(path)
    with zipfile.ZipFile(path) as z:
        entries = [(i.filename, z.read(i)) for i in z.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in entries:
            if name == "docProps/core.xml":
                data = re.sub(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", b"2020-01-01T00:00:00Z", data)
            z.writestr(zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0)), data, zipfile.ZIP_DEFLATED)


def read_split(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def sample_covid_ct(src: Path, dst: Path, rng: np.random.Generator) -> None:
    wb = openpyxl.load_workbook(src / "COVID-CT-MetaInfo.xlsx")
    ws = wb.active
    rows = [list(r) for r in ws.iter_rows(values_only=True)]
    header, xlsx_rows = rows[0], [r for r in rows[1:] if r[0]]
    with (src / "NonCOVID-CT-MetaInfo.csv").open(newline="") as f:
        csv_rows = list(csv.reader(f))
    csv_header, csv_body = csv_rows[0], csv_rows[1:]

    def stem(name: str) -> str:
        return name[:-4] if name.lower().endswith((".png", ".jpg")) else name

    classes = {
        "COVID": ({stem(r[0]): r[1] for r in xlsx_rows}, "CT_COVID"),
        "NonCOVID": ({stem(r[1]): r[2] for r in csv_body}, "CT_NonCOVID"),
    }
    kept_stems: dict[str, set[str]] = {}
    for cls, (pid_of, folder) in classes.items():
        splits = {part: read_split(src / "Data-split" / cls / f"{part}CT_{cls}.txt") for part in PART_QUOTA}
        part_of_stem = {stem(n): part for part, names in splits.items() for n in names}
        by_patient: dict[str, list[str]] = defaultdict(list)
        part_of: dict[str, str] = {}
        for s, pid in pid_of.items():
            by_patient[pid].append(s)
            part_of[pid] = part_of_stem[s]
        kept = {s for pid in pick_patients(by_patient, part_of, rng) for s in by_patient[pid]}
        kept_stems[cls] = kept
        for s in sorted(kept):
            shrink_copy(src / folder / f"{s}.png", dst / folder / f"{s}.png")
        for part, names in splits.items():
            out = dst / "Data-split" / cls / f"{part}CT_{cls}.txt"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text("".join(f"{n}\n" for n in names if stem(n) in kept))
        if cls == "NonCOVID":  # per-part patient lists, reindexed as upstream (pandas index column)
            pids = {pid_of[s] for s in kept}
            for part in PART_QUOTA:
                with (src / "Data-split" / cls / f"CT_NonCOVID_{part}_id.csv").open(newline="") as f:
                    id_rows = list(csv.reader(f))
                body = [r for r in id_rows[1:] if r[1] in pids]
                with (dst / "Data-split" / cls / f"CT_NonCOVID_{part}_id.csv").open("w", newline="") as f:
                    csv.writer(f, lineterminator="\n").writerows([id_rows[0]] + [[i, r[1]] for i, r in enumerate(body)])

    out_wb = openpyxl.Workbook()
    out_ws = out_wb.active
    out_ws.title = ws.title
    out_ws.append(header)
    for r in xlsx_rows:
        if stem(r[0]) in kept_stems["COVID"]:
            out_ws.append(r)
    save_reproducible(out_wb, dst / "COVID-CT-MetaInfo.xlsx")
    with (dst / "NonCOVID-CT-MetaInfo.csv").open("w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(
            [csv_header] + [r for r in csv_body if stem(r[1]) in kept_stems["NonCOVID"]])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    for site in ("sars-cov-2-ct", "covid-ct"):
        shutil.rmtree(OUT / site, ignore_errors=True)
    sample_sars(args.source / "sars-cov-2-ct", OUT / "sars-cov-2-ct", rng)
    sample_covid_ct(args.source / "covid-ct", OUT / "covid-ct", rng)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
