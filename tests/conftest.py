"""Shared fixtures: the shipped sample (always present) and the full data (optional)."""

import sys
from pathlib import Path

import pytest

from crosssite.data.sites import SAMPLE_DATA

SHARED_DATA = (Path(__file__).parents[1] / "../shared/data").resolve()


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    return SAMPLE_DATA


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The full prepared datasets; tests that need them skip where the folder is absent."""
    if not (SHARED_DATA / "sars-cov-2-ct").is_dir():
        pytest.skip(f"full data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def metaimage_writer():
    """write_metaimage(path, volume, ...): a MetaImage written as ITK writes one."""
    return write_metaimage


def write_metaimage(path: Path, volume, element_type: str = "MET_SHORT", compressed: bool = False,
                    detached: bool = False, matrix: str = "1 0 0 0 1 0 0 0 1") -> Path:
    """A MetaImage of (slices, rows, columns) `volume`, as ITK writes one (x fastest)."""
    import zlib

    import numpy as np

    dtype = {"MET_SHORT": "<i2", "MET_UCHAR": "u1", "MET_FLOAT": "<f4"}[element_type]
    data = np.ascontiguousarray(volume, dtype=dtype).tobytes()
    data = zlib.compress(data) if compressed else data
    z, y, x = np.shape(volume)
    raw = path.with_suffix(".zraw" if compressed else ".raw")
    header = (f"ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
              f"CompressedData = {compressed}\nTransformMatrix = {matrix}\nElementSpacing = 0.7 0.7 2.5\n"
              f"DimSize = {x} {y} {z}\nElementType = {element_type}\n"
              f"ElementDataFile = {raw.name if detached else 'LOCAL'}\n")
    if detached:
        raw.write_bytes(data)
        path.write_text(header)
    else:
        path.write_bytes(header.encode() + data)
    return path


@pytest.fixture(scope="session")
def window_twins_site(tmp_path_factory) -> Path:
    """A folder site of 32 one-slice MetaImage scans, 8 pairs of twins per class (`pKa.mha`, `pKb.mha`):
    twins share their lung pattern and differ only in a block of bone (random HU from 200 to 2000 each).
    The lung window clips the block to one white, so twins are exact duplicates through it; a bone window
    (2000, 1000) tells them apart (correlation about 0.75), and no two other scans are near duplicates."""
    import numpy as np

    root = tmp_path_factory.mktemp("window_twins")
    rng = np.random.default_rng(0)
    for label in ("COVID", "NonCOVID"):
        (root / label).mkdir()
        for k in range(8):
            lung = rng.uniform(-1000, 100, (1, 32, 32))
            for twin in "ab":
                hu = lung.copy()
                hu[0, :8] = rng.uniform(200, 2000, (8, 32))
                write_metaimage(root / label / f"p{k}{twin}.mha", hu.round())
    return root


@pytest.fixture(scope="session")
def ct_series_site(tmp_path_factory) -> Path:
    """A site CSV naming 8 small DICOM series (4 COVID, 4 NonCOVID, 6 slices each, one patient each),
    made from the shipped sample's PNG slices wrapped as HU (see scripts/make_dicom_demo.py)."""
    pytest.importorskip("pydicom", reason="DICOM tests need the dicom extra: pip install -e '.[dicom]'")
    sys.path.insert(0, str(Path(__file__).parents[1] / "scripts"))
    from make_dicom_demo import write_demo_series

    return write_demo_series(tmp_path_factory.mktemp("hospital"), series_per_class=4, slices=6, size=64)


@pytest.fixture(scope="session")
def ct_volume(tmp_path_factory) -> Path:
    """A NIfTI CT volume in HU: 6 COVID slices of the shipped sample at 64 px, wrapped as HU as
    scripts/make_dicom_demo.py wraps them (the lung window gives the PNG's gray values back)."""
    nibabel = pytest.importorskip("nibabel", reason="NIfTI tests need the dicom extra: pip install -e '.[dicom]'")
    import numpy as np

    from crosssite.data.images import load_grayscale
    from crosssite.data.transforms import resize_square

    sys.path.insert(0, str(Path(__file__).parents[1] / "scripts"))
    from make_dicom_demo import gray_to_hu

    paths = sorted((SAMPLE_DATA / "sars-cov-2-ct" / "COVID").iterdir())[:6]
    hu = gray_to_hu(np.stack([resize_square(load_grayscale(p), 64) for p in paths]))  # (slices, rows, columns)
    path = tmp_path_factory.mktemp("volume") / "covid.nii.gz"
    # NIfTI x, y, z = columns, rows, slices; an LPS affine (diag(-1, -1, 1) in RAS) keeps DICOM's view
    nibabel.save(nibabel.Nifti1Image(hu.transpose(2, 1, 0).astype(np.int16), np.diag([-0.7, -0.7, 2.5, 1.0])), path)
    return path


def site_minibatches(seed: int = 0, n: int = 4, size: int = 64, shift: float = 1.0, scale: float = 0.0,
                     sites=(0, 1)) -> list:
    """What Method.loss / update take for two sites: per site an (x, y) of `n` random size x size images
    (site s: N(0, 1) * (1 + scale * s) + shift * s, so the sites look different) and labels 0, 1, 0, 1...;
    None for a site not in `sites` (no batch this step). Drawn site by site from a generator seeded with
    `seed`: the same arguments give the same tensors. Import it: `from conftest import site_minibatches`."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, 3, size, size, generator=g) * (1 + scale * site) + shift * site,
             torch.tensor([0, 1] * (n // 2))) if site in sites else None for site in range(2)]


#: toy training settings on the shipped sample (a run takes seconds), as TrainConfig fields and as CLI flags;
#: tests add epochs, folds and the like. Import them: `from conftest import TINY_SETTINGS, TINY_TRAIN_FLAGS`.
TINY_SETTINGS = dict(data=str(SAMPLE_DATA), image_size=32, width=0.125, batch_per_site=8, lr=1e-3)
TINY_TRAIN_FLAGS = ["--image-size", "32", "--width", "0.125", "--batch-per-site", "8", "--lr", "1e-3", "--quiet"]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A finished contrastive run folder on the shipped sample at toy settings (2 epochs, 32 px)."""
    from crosssite.cli import main

    out = tmp_path_factory.mktemp("tiny_run") / "run"
    assert main(["train", "--method", "contrastive", "--data", str(SAMPLE_DATA), "--epochs", "2",
                 *TINY_TRAIN_FLAGS, "--out", str(out)]) == 0
    return out


@pytest.fixture
def fed_config(tmp_path):
    """make(method, **changes): a federation's training settings at TINY_SETTINGS, out in tmp_path/fed."""
    from crosssite.config import TrainConfig

    def make(method="sepnorm", **changes):
        return TrainConfig(method=method, **{**TINY_SETTINGS, "out": str(tmp_path / "fed"), **changes})
    return make


@pytest.fixture(scope="session")
def fed_and_central_sweeps(tmp_path_factory) -> tuple[Path, Path]:
    """(federated, centralised) sweep folders on the shipped sample at TINY_SETTINGS, 2 folds x 1 seed x 1
    epoch: the row fedbn, and its centralised row sepnorm, each in its own folder as results/federated and
    results/cpu are."""
    from crosssite.config import TrainConfig
    from crosssite.paper import ROW_BY_NAME
    from crosssite.sweep import run_sweep

    base = TrainConfig(**{**TINY_SETTINGS, "epochs": 1, "folds": 2})
    folders = tmp_path_factory.mktemp("fed_sweep") / "federated", tmp_path_factory.mktemp("cpu_sweep") / "cpu"
    for folder, row in zip(folders, ("fedbn", "sepnorm")):
        records = run_sweep(base, [ROW_BY_NAME[row]], seeds=1, out=folder, progress=False)
        assert [r["status"] for r in records] == ["ok", "ok"], [r.get("error") for r in records]
    return folders


def tiny_fed(**changes):
    """Federation settings for tests: two rounds of two local steps (seconds on a CPU), plus `changes`."""
    from crosssite.federated.settings import FedSettings

    return FedSettings(**{"rounds": 2, "steps_per_round": 2, **changes})


def sr_content(ds) -> dict:
    """A crosssite SR's content as {concept meaning: value} (NUM as float, CODE as its meaning, TEXT and
    repeated items as lists), walked through every level. Import it: `from conftest import sr_content`."""
    found: dict = {}

    def walk(items):
        for item in items:
            name = item.ConceptNameCodeSequence[0].CodeMeaning
            if item.ValueType == "NUM":
                value = float(item.MeasuredValueSequence[0].NumericValue)
            elif item.ValueType == "CODE":
                value = (item.ConceptCodeSequence[0].CodeValue, item.ConceptCodeSequence[0].CodingSchemeDesignator,
                         item.ConceptCodeSequence[0].CodeMeaning)
            elif item.ValueType == "TEXT":
                value = item.TextValue
            else:
                value = None
            if value is not None:
                found.setdefault(name, []).append(value)
            walk(item.get("ContentSequence", []))

    walk(ds.ContentSequence)
    return found


@pytest.fixture(scope="session")
def dicom_series(ct_series_site) -> Path:
    """One DICOM CT series folder (6 slices) of ct_series_site."""
    return next(p for p in sorted(ct_series_site.parent.iterdir()) if p.is_dir())


@pytest.fixture(scope="session")
def edit_dicom():
    """`edit(path, change=None, **tags)` rewrites one DICOM file: sets each tag (None deletes it), then calls
    `change(ds)` for what a tag assignment cannot say (a wrong value representation, compression)."""
    pydicom = pytest.importorskip("pydicom", reason="DICOM tests need the dicom extra: pip install -e '.[dicom]'")

    def edit(path, change=None, **tags):
        ds = pydicom.dcmread(path)
        for key, value in tags.items():
            if value is None:
                delattr(ds, key)
            else:
                setattr(ds, key, value)
        if change is not None:
            change(ds)
        ds.save_as(path)

    return edit
