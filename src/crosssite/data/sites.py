"""Sites (hospitals / datasets) as lists of labelled image paths.

Readers only list and validate files; images are decoded later (see images.py), so
opening a site of thousands of images is instant and a bad layout fails early.
A CT scan (DICOM series, NIfTI or MetaImage volume, see volumes.py) enters a site as one sample
per selected slice, all with the scan's label.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from crosssite.data.volumes import find_scans, formats, is_scan_path, scan_of, scan_slices
from crosssite.errors import CrossSiteError, DataError

COVID, NON_COVID = 1, 0
LABEL_NAMES = {COVID: "COVID", NON_COVID: "NonCOVID"}
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
SAMPLE_DATA = Path(__file__).resolve().parents[1] / "sample_data"

SARS_COV_2_CT = "sars-cov-2-ct"
COVID_CT = "covid-ct"
_SARS_FOLDERS = {COVID: "COVID", NON_COVID: "non-COVID"}
_COVID_CT_FOLDERS = {COVID: "CT_COVID", NON_COVID: "CT_NonCOVID"}
_GENERIC_FOLDERS = {
    "covid": COVID, "ct_covid": COVID, "positive": COVID,
    "noncovid": NON_COVID, "non-covid": NON_COVID, "non_covid": NON_COVID,
    "ct_noncovid": NON_COVID, "negative": NON_COVID, "normal": NON_COVID,
}
_CSV_LABELS = {"covid": COVID, "1": COVID, "noncovid": NON_COVID, "0": NON_COVID}
SPLIT_PARTS = ("train", "val", "test")


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int
    patient: str | None  # None where the site has no patient ids

    @property
    def scan(self) -> str | None:
        """The scan this sample is a slice of (None for an image file)."""
        return scan_of(self.path)


@dataclass
class Site:
    name: str
    samples: list[Sample]
    # "train"/"val"/"test" -> indices into samples; only sites that ship one (COVID-CT).
    official_split: dict[str, list[int]] | None = None
    #: the folder or CSV it was read from (read_site); crosssite.federated gives each site only its own
    root: Path | None = None

    def labels(self) -> np.ndarray:
        return np.array([s.label for s in self.samples], dtype=np.int64)

    def groups(self) -> np.ndarray | None:
        """Patient ids for group-aware splits; without an id, a slice's group is its scan and an image is
        its own group, so the slices of one scan never straddle parts."""
        if all(s.patient is None and s.scan is None for s in self.samples):
            return None
        return np.array([s.patient if s.patient is not None else
                         f"scan:{s.scan}" if s.scan is not None else f"image:{s.path}"
                         for s in self.samples], dtype=object)

    def __len__(self) -> int:
        return len(self.samples)


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _require_dir(path: Path, what: str) -> None:
    if not path.exists():
        raise DataError(f"{path}: {what} does not exist")
    if not path.is_dir():
        raise DataError(f"{path}: {what} is not a folder")


def _child_dir(root: Path, name: str) -> Path | None:
    """The subfolder called `name`, matched case-insensitively (exact match preferred)."""
    exact = root / name
    if exact.is_dir():
        return exact
    matches = [p for p in root.iterdir() if p.is_dir() and p.name.lower() == name.lower()]
    return matches[0] if len(matches) == 1 else None


def _class_images(root: Path, folder: str, label: int) -> list[Path]:
    """Image files of one class folder; missing or empty folder -> DataError."""
    found = _child_dir(root, folder) if root.is_dir() else None
    images = sorted(p for p in found.iterdir() if p.is_file() and is_image(p)) if found else []
    if not images:
        exts = " ".join(sorted(IMAGE_EXTENSIONS))
        raise DataError(f"{root}: no {LABEL_NAMES[label]} images (expected folder {root / folder} "
                        f"with {exts} files)")
    return images


def _scan_samples(scans: list[str], label: int, patient: str | None, slices: str) -> list[Sample]:
    """One sample per selected slice; patient: the given id, else the scan's DICOM PatientID."""
    samples = []
    for scan in scans:
        paths, scan_patient = scan_slices(scan, slices)
        samples += [Sample(p, label, patient or scan_patient) for p in paths]
    return samples


def _class_samples(root: Path, folder: str, label: int, slices: str) -> list[Sample]:
    """Image files and scans (series folders, volumes, DICOMDIRs) of one class folder of a generic site."""
    found = _child_dir(root, folder)
    if found is None or not (scans := find_scans(found)):
        return [Sample(p, label, None) for p in _class_images(root, folder, label)]
    images = [p for p in found.iterdir() if p.is_file() and is_image(p)]
    return [Sample(p, label, None) for p in images] + _scan_samples(scans, label, None, slices)


def _sorted_site(name: str, samples: list[Sample]) -> Site:
    """A file name that is not UTF-8 is kept as Python holds it (surrogates); crosssite.io writes it back
    as its own bytes."""
    return Site(name, sorted(samples, key=lambda s: str(s.path)))


def read_sars_cov_2_ct(root: Path, name: str = SARS_COV_2_CT) -> Site:
    """SARS-CoV-2 CT-scan dataset (Soares et al.): COVID/ and non-COVID/, no patient ids."""
    root = Path(root)
    _require_dir(root, "site folder")
    samples = [Sample(p, label, None) for label, folder in _SARS_FOLDERS.items()
               for p in _class_images(root, folder, label)]
    return _sorted_site(name, samples)


def _image_name(name: str) -> str:
    """Metadata names sometimes lack the extension (86 COVID rows upstream): assume .png."""
    return name if Path(name).suffix.lower() in IMAGE_EXTENSIONS else name + ".png"


def _read_covid_meta(path: Path) -> dict[str, str]:
    """File name -> patient id from COVID-CT-MetaInfo.xlsx."""
    import openpyxl

    if not path.is_file():
        raise DataError(f"{path}: metadata file not found (needed for patient ids)")
    try:
        wb = openpyxl.load_workbook(path, read_only=True, data_only=True)
        rows = list(wb.active.iter_rows(values_only=True))
        wb.close()
    except Exception as exc:  # openpyxl raises many types for a corrupt workbook
        raise DataError(f"{path}: cannot read metadata workbook ({exc})") from None
    header = [str(c).strip().lower() if c is not None else "" for c in rows[0]] if rows else []
    name_col = next((i for i, h in enumerate(header) if h in ("file name", "filename", "image name")), None)
    if name_col is None or "patient id" not in header:
        raise DataError(f"{path}: expected columns 'File name' and 'Patient ID' in the first row")
    pid_col = header.index("patient id")
    meta = {}
    for row in rows[1:]:
        fname, pid = row[name_col], row[pid_col]
        if fname is None or str(fname).strip() == "":
            continue
        if pid is None or str(pid).strip() == "":
            raise DataError(f"{path}: no patient id for {fname}")
        meta[_image_name(str(fname).strip())] = str(pid).strip()
    return meta


def _read_noncovid_meta(path: Path) -> dict[str, str]:
    """File name -> patient id from NonCOVID-CT-MetaInfo.csv."""
    if not path.is_file():
        raise DataError(f"{path}: metadata file not found (needed for patient ids)")
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read metadata CSV ({exc})") from None
    if not rows or not {"image name", "patient id"} <= {(k or "").strip().lower() for k in rows[0]}:
        raise DataError(f"{path}: expected columns 'image name' and 'patient id'")
    meta = {}
    for row in rows:
        row = {(k or "").strip().lower(): (v or "").strip() for k, v in row.items()}
        if row["image name"]:
            meta[_image_name(row["image name"])] = row["patient id"]
    return meta


def _by_stem(meta: dict[str, str]) -> dict[str, str]:
    """Upstream split/metadata names say x.jpg where the prepared copy stores x.png: match by stem too."""
    return {Path(k).stem: v for k, v in meta.items()}


def _read_official_split(root: Path, images: dict[int, list[Path]],
                         index: dict[Path, int]) -> dict[str, list[int]] | None:
    split_dir = root / "Data-split"
    if not split_dir.is_dir():
        return None
    split: dict[str, list[int]] = {part: [] for part in SPLIT_PARTS}
    seen: dict[int, Path] = {}
    for label, cls in ((COVID, "COVID"), (NON_COVID, "NonCOVID")):
        by_name = {p.name: p for p in images[label]}
        by_stem = {p.stem: p for p in images[label]}
        for part in SPLIT_PARTS:
            txt = split_dir / cls / f"{part}CT_{cls}.txt"
            if not txt.is_file():
                raise DataError(f"{txt}: official split file not found")
            for line in txt.read_text(encoding="utf-8-sig").splitlines():
                entry = line.strip()
                if not entry:
                    continue
                image = by_name.get(entry) or by_stem.get(Path(entry).stem)
                if image is None:
                    raise DataError(f"{txt}: names {entry}, which is not in {root / _COVID_CT_FOLDERS[label]}")
                i = index[image]
                if i in seen:
                    raise DataError(f"{txt}: {entry} is also listed in {seen[i]}")
                seen[i] = txt
                split[part].append(i)
    return {part: sorted(ids) for part, ids in split.items()}


def read_covid_ct(root: Path, name: str = COVID_CT) -> Site:
    """COVID-CT (Zhao et al.): patient ids from the metadata, official split from Data-split/."""
    root = Path(root)
    _require_dir(root, "site folder")
    images = {label: _class_images(root, folder, label) for label, folder in _COVID_CT_FOLDERS.items()}
    metas = {COVID: (root / "COVID-CT-MetaInfo.xlsx", _read_covid_meta),
             NON_COVID: (root / "NonCOVID-CT-MetaInfo.csv", _read_noncovid_meta)}
    samples = []
    for label, (meta_path, reader) in metas.items():
        meta = reader(meta_path)
        meta_stems = _by_stem(meta)
        for p in images[label]:
            pid = meta.get(p.name) or meta_stems.get(p.stem)
            if pid is None:
                raise DataError(f"{p}: image has no row in {meta_path}")
            samples.append(Sample(p, label, str(pid)))
    site = _sorted_site(name, samples)
    index = {s.path: i for i, s in enumerate(site.samples)}
    site.official_split = _read_official_split(root, images, index)
    return site


def _read_generic_csv(path: Path, name: str, slices: str) -> Site:
    try:
        with path.open(newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
            reader = csv.reader(f)
            header = [h.strip().lower() for h in next(reader, [])]
            rows = list(enumerate(reader, start=2))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read site CSV ({exc})") from None
    if header[:2] != ["path", "label"] or header[2:] not in ([], ["patient_id"]):
        raise DataError(f"{path}: expected header 'path,label' or 'path,label,patient_id', got {','.join(header)!r}")
    samples = []
    listed: dict[Path, tuple[int, int]] = {}  # resolved image path -> (CSV line, label) where first listed
    for line, row in rows:
        if not any(c.strip() for c in row):
            continue
        if len(row) != len(header):
            raise DataError(f"{path}:{line}: expected {len(header)} columns, got {len(row)}")
        rel, label_text = row[0].strip(), row[1].strip()
        label = _CSV_LABELS.get(label_text.lower().replace("-", "").replace("_", ""))
        if label is None:
            raise DataError(f"{path}:{line}: unknown label {label_text!r} (use COVID/NonCOVID or 1/0)")
        image = Path(rel) if Path(rel).is_absolute() else path.parent / rel
        patient = (row[2].strip() or None) if len(row) > 2 else None
        if is_image(image) and not image.is_file():
            raise DataError(f"{path}:{line}: image {image} not found")
        if not is_image(image) and not image.exists():
            raise DataError(f"{path}:{line}: {image} not found")
        if not is_image(image) and not is_scan_path(image):
            raise DataError(f"{path}:{line}: {rel} is neither an image ({' '.join(sorted(IMAGE_EXTENSIONS))}) nor a "
                            f"CT scan: {formats()}")
        first_line, first_label = listed.setdefault(image.resolve(), (line, label))
        if first_line != line:  # a copy in train and one in test would leak
            labels = "" if first_label == label else f" with label {LABEL_NAMES[first_label]}, here {LABEL_NAMES[label]}"
            raise DataError(f"{path}:{line}: {rel} is already listed on line {first_line}{labels}; list each image once")
        if is_image(image):
            samples.append(Sample(image, label, patient))
        else:
            samples += _scan_samples(find_scans(image), label, patient, slices)
    for label in (COVID, NON_COVID):
        if not any(s.label == label for s in samples):
            raise DataError(f"{path}: no {LABEL_NAMES[label]} images listed")
    return _sorted_site(name, samples)


def read_generic(path: Path, name: str, slices: str = "all") -> Site:
    """A folder with one subfolder per class, or a CSV `path,label[,patient_id]`; rows and class folders
    may name images or CT scans, of which `slices` (see volumes.parse_slices) are taken."""
    path = Path(path)
    if path.is_file():
        return _read_generic_csv(path, name, slices)
    _require_dir(path, "site folder")
    folders: dict[int, Path] = {}
    for sub in sorted(p for p in path.iterdir() if p.is_dir()):
        label = _GENERIC_FOLDERS.get(sub.name.lower())
        if label is None:
            continue
        if label in folders:
            raise DataError(f"{path}: both {folders[label].name}/ and {sub.name}/ hold "
                            f"{LABEL_NAMES[label]} images; keep one")
        folders[label] = sub
    samples = []
    for label, expected in ((COVID, "COVID"), (NON_COVID, "NonCOVID")):
        folder = folders.get(label, path / expected).name
        samples += _class_samples(path, folder, label, slices)
    return _sorted_site(name, samples)


def _has_dirs(path: Path, names: dict[int, str]) -> bool:
    return path.is_dir() and all(_child_dir(path, n) is not None for n in names.values())


def layout_of(path: Path) -> str | None:
    """"sars-cov-2-ct" or "covid-ct" when `path` has that dataset's folder layout."""
    if _has_dirs(path, _SARS_FOLDERS):
        return SARS_COV_2_CT
    if _has_dirs(path, _COVID_CT_FOLDERS):
        return COVID_CT
    return None


def read_site(path: Path, name: str, slices: str = "all") -> Site:
    """Read a site by its layout: SARS-CoV-2 CT, COVID-CT, else a generic folder/CSV (`slices` of its scans)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: site path does not exist")
    layout = layout_of(path)
    reader = {SARS_COV_2_CT: read_sars_cov_2_ct, COVID_CT: read_covid_ct}.get(layout)
    site = reader(path, name) if reader else read_generic(path, name, slices)
    site.root = path
    return site


def discover_sites(data_dir: Path) -> dict[str, Site]:
    """Known dataset layouts in data_dir (or data_dir itself), SARS-CoV-2 CT first.

    A site is named after its layout; a second folder with the same layout keeps its folder name.
    """
    data_dir = Path(data_dir)
    _require_dir(data_dir, "data folder")
    own = layout_of(data_dir)
    if own:
        found = [(own, data_dir)]
    else:
        found = [(lay, p) for p in sorted(data_dir.iterdir()) if (lay := layout_of(p))]
    if not found:
        raise DataError(f"{data_dir}: no known site found; expected {SARS_COV_2_CT} layout (COVID/, non-COVID/) "
                        f"or {COVID_CT} layout (CT_COVID/, CT_NonCOVID/) in it or in its subfolders")
    sites: dict[str, Site] = {}
    for layout in (SARS_COV_2_CT, COVID_CT):
        for lay, path in found:
            if lay == layout:
                name = layout if layout not in sites else path.name
                sites[name] = read_site(path, name)
    return sites


def parse_site_arg(arg: str) -> tuple[str, Path]:
    """NAME and PATH of a --site NAME=PATH argument."""
    name, sep, path = arg.partition("=")
    name, path = name.strip(), path.strip()
    if not sep or not name or not path:
        raise CrossSiteError(f"--site {arg!r}: expected NAME=PATH, e.g. --site hospital-c=/data/hospital_c")
    return name, Path(path)


def refuse_shared_images(sites: dict[str, Site]) -> None:
    """Training refuses sites that share a file: one image could train in one site and test in the other."""
    owner: dict[str, str] = {}
    for site in sites.values():
        for sample in site.samples:
            key = str(sample.path.resolve())
            other = owner.setdefault(key, site.name)
            if other != site.name:
                raise CrossSiteError(f"{sample.path}: belongs to both site {other!r} and site {site.name!r}; "
                                     "each image may belong to one site only (two --site entries for the same files?)")


def load_sites(data_dir: Path | None, site_args: list[str], slices: str = "all") -> dict[str, Site]:
    """Sites from --data DIR plus repeatable --site NAME=PATH (which add or override); `slices` of each CT scan."""
    sites = discover_sites(data_dir) if data_dir is not None else {}
    for arg in site_args:
        name, path = parse_site_arg(arg)
        sites[name] = read_site(path, name, slices)
    if not sites:
        raise CrossSiteError("no data: give --data DIR and/or --site NAME=PATH")
    return sites
