"""`crosssite predict --backend onnxruntime | torchscript`: the torch backend's output from exports, for images
and CT scans, `--site auto` too."""

import json
import shutil
import sys

import numpy as np
import pytest

from crosssite import export_formats
from crosssite.checkpoint import load_trained
from crosssite.cli import SAMPLE_DATA, main
from crosssite.data.images import DecodedCache
from crosssite.inference import predict_proba

SITES = ("sars-cov-2-ct", "covid-ct")
SUFFIX = {"onnxruntime": ".onnx", "torchscript": ".pt"}
ONNX_REASON = "ONNX tests need the onnx extra: pip install -e '.[onnx]'"


def _export_sites(run, folder, backend):
    fmt = {"onnxruntime": "onnx", "torchscript": "torchscript"}[backend]
    for site in SITES:
        assert main(["export", str(run / "best.pt"), "--site", site, "--format", fmt,
                     "--out", str(folder / f"{site}{SUFFIX[backend]}")]) == 0
    return folder


@pytest.fixture(scope="module")
def exports(tiny_run, tmp_path_factory):
    pytest.importorskip("onnxruntime", reason=ONNX_REASON)
    pytest.importorskip("onnx", reason=ONNX_REASON)
    return _export_sites(tiny_run, tmp_path_factory.mktemp("exports"), "onnxruntime")


@pytest.fixture(scope="module")
def torchscript_exports(tiny_run, tmp_path_factory):
    return _export_sites(tiny_run, tmp_path_factory.mktemp("torchscript"), "torchscript")


@pytest.fixture(params=["onnxruntime", "torchscript"])
def backend(request):
    """(backend, the folder of its exports of tiny_run, one per site)."""
    folder = request.getfixturevalue("exports" if request.param == "onnxruntime" else "torchscript_exports")
    return request.param, folder


def _images(folder, n=6):
    return [str(p) for p in sorted((SAMPLE_DATA / folder).iterdir())[:n]]


def _predict(capsys, *args):
    assert main(["predict", *map(str, args)]) == 0
    return capsys.readouterr().out


def _without_probabilities(printed: str) -> list[list[str]]:
    return [[f for f in line.split("\t") if not f.startswith("P(COVID)=")] for line in printed.splitlines()]


def test_same_output_as_the_torch_backend(tiny_run, backend, capsys):
    name, folder = backend
    images = _images("covid-ct/CT_NonCOVID")
    torch_out = _predict(capsys, tiny_run / "best.pt", "--site", "covid-ct", *images)
    export_out = _predict(capsys, folder / f"covid-ct{SUFFIX[name]}", "--backend", name, "--site", "covid-ct", *images)
    # path, P(COVID), label; one export alone has no OOD flag (that needs every site's export: the next test)
    assert [line.split("\t")[:3] for line in export_out.splitlines()] == [
        line.split("\t")[:3] for line in torch_out.splitlines()]
    assert len(export_out.splitlines()) == len(images)


def test_decisions_as_the_torch_backend(tiny_run, backend, capsys, tmp_path):
    """Calibrated P(COVID), operating point and OOD flag (every site's export given) as the torch backend."""
    from PIL import Image

    name, folder = backend
    blank = tmp_path / "blank.png"
    Image.new("L", (64, 64), 0).save(blank)
    images = [*_images("covid-ct/CT_COVID", 4), blank]
    by_torch = json.loads(_predict(capsys, tiny_run / "best.pt", "--site", "covid-ct", "--json", *images))
    by_export = json.loads(_predict(capsys, folder, "--backend", name, "--site", "covid-ct", "--json", *images))
    assert [r["p_covid"] for r in by_export] == pytest.approx([r["p_covid"] for r in by_torch], abs=1e-5)
    for key in ("label", "threshold", "ood", "calibration", "operating_point"):
        assert [r[key] for r in by_export] == [r[key] for r in by_torch]
    assert by_export[-1]["ood"] is True


@pytest.mark.parametrize("folder", ["sars-cov-2-ct/COVID", "covid-ct/CT_COVID"])
def test_auto_chooses_as_the_torch_backend(tiny_run, backend, capsys, folder):
    name, exported = backend
    images = _images(folder, 20)
    by_torch = json.loads(_predict(capsys, tiny_run / "best.pt", "--site", "auto", "--json", *images))
    by_export = json.loads(_predict(capsys, exported, "--backend", name, "--site", "auto", "--json", *images))
    assert by_export[0]["site"] == by_torch[0]["site"]
    for site, distance in by_torch[0]["bn_distance"].items():
        assert by_export[0]["bn_distance"][site] == pytest.approx(distance, rel=1e-3)
    assert [r["p_covid"] for r in by_export] == pytest.approx([r["p_covid"] for r in by_torch], abs=1e-5)


def test_scan_as_the_torch_backend(tiny_run, backend, ct_volume, capsys):
    """A NIfTI volume: the same slices, per-slice and scan P(COVID) (within 1e-4) and the same lines."""
    name, folder = backend
    args = ["--site", "covid-ct", "--aggregate", "topk", "--top-k", "3", ct_volume]
    torch_out = _predict(capsys, tiny_run / "best.pt", *args)
    export_out = _predict(capsys, folder / f"covid-ct{SUFFIX[name]}", "--backend", name, *args)
    assert _without_probabilities(export_out) == _without_probabilities(torch_out)
    assert export_out.splitlines()[-1].endswith("scan: mean of the top 3 slices of 6")
    (by_torch,) = json.loads(_predict(capsys, tiny_run / "best.pt", "--json", *args))
    (by_export,) = json.loads(_predict(capsys, folder / f"covid-ct{SUFFIX[name]}", "--backend", name, "--json", *args))
    assert by_export["path"] == str(ct_volume) and by_export["aggregate"] == by_torch["aggregate"]
    assert by_export["p_covid"] == pytest.approx(by_torch["p_covid"], abs=1e-4)
    assert [s["path"] for s in by_export["slices"]] == [s["path"] for s in by_torch["slices"]]
    assert [s["p_covid"] for s in by_export["slices"]] == pytest.approx([s["p_covid"] for s in by_torch["slices"]],
                                                                         abs=1e-4)


def test_scan_read_with_the_window_and_slices_of_the_metadata(tiny_run, backend, ct_volume, tmp_path, capsys):
    name, folder = backend
    model = tmp_path / f"covid-ct{SUFFIX[name]}"
    shutil.copy(folder / model.name, model)
    metadata = export_formats.read_metadata(model)
    assert (metadata["input"]["window"], metadata["input"]["slices"]) == ([1500.0, -600.0], "all")
    metadata["input"].update(window=[400.0, 40.0], slices="::2")  # as if exported from such a run
    export_formats.set_metadata(model, metadata)
    (row,) = json.loads(_predict(capsys, model, "--backend", name, "--site", "covid-ct", "--json", ct_volume))
    assert [s["path"] for s in row["slices"]] == [f"{ct_volume}#slice={i}" for i in (0, 2, 4)]
    trained = load_trained(tiny_run / "best.pt")
    paths = [s["path"] for s in row["slices"]]

    def torch_probs(window):
        return predict_proba(trained.method, DecodedCache(32, window).eval_batch(paths), trained.site_index("covid-ct"))

    got = np.array([s["p_uncalibrated"] for s in row["slices"]])  # the network's output, before calibration
    assert np.abs(got - torch_probs((400.0, 40.0))).max() < 1e-4
    assert np.abs(got - torch_probs((1500.0, -600.0))).max() > 1e-3  # the window mattered


def test_predict_errors(tiny_run, exports, capsys, monkeypatch):
    image = _images("covid-ct/CT_COVID", 1)[0]
    cases = [
        ([tiny_run / "best.pt", "--backend", "onnxruntime", "--site", "covid-ct"], "reads ONNX exports"),
        ([exports / "covid-ct.onnx", "--site", "covid-ct"], "--backend onnxruntime"),
        ([exports / "covid-ct.onnx", "--backend", "onnxruntime", "--site", "sars-cov-2-ct"], "no export of site"),
        ([tiny_run / "split.json", "--backend", "onnxruntime", "--site", "covid-ct"], "reads ONNX exports"),
        ([exports / "covid-ct.onnx", "--backend", "torchscript", "--site", "covid-ct"], "reads TorchScript exports"),
    ]
    for args, message in cases:
        assert main(["predict", *map(str, args), image]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if the [onnx] extra were not installed
    assert main(["predict", str(exports), "--backend", "onnxruntime", "--site", "auto", image]) == 2
    assert "needs the [onnx] extra: pip install 'crosssite[onnx]'" in capsys.readouterr().err


def test_torchscript_errors(tiny_run, torchscript_exports, capsys):
    image = _images("covid-ct/CT_COVID", 1)[0]
    cases = [
        ([torchscript_exports / "covid-ct.pt", "--site", "covid-ct"], "run it with --backend torchscript"),
        ([tiny_run / "best.pt", "--backend", "torchscript", "--site", "covid-ct"], "reads TorchScript exports"),
        ([tiny_run, "--backend", "torchscript", "--site", "auto"], "no TorchScript exports in this folder"),
        ([torchscript_exports, "--site", "covid-ct"], "--backend torchscript"),
    ]
    for args, message in cases:
        assert main(["predict", *map(str, args), image]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("flags", [["--device", "cpu"], ["--compile"], ["--device", "cuda:0", "--compile"]])
def test_torch_only_flags_are_refused_not_ignored(torchscript_exports, flags, capsys):
    image = _images("covid-ct/CT_COVID", 1)[0]
    args = [str(torchscript_exports), "--backend", "torchscript", "--site", "covid-ct", image]
    assert main(["predict", *args, *flags]) == 2
    err = capsys.readouterr().err
    assert "only for --backend torch" in err and flags[-1] in err and len(err.strip().splitlines()) == 1
    assert _predict(capsys, *args, "--device", "auto")  # the default, given explicitly, is fine


def test_auto_refused_without_site_batch_norm(tmp_path, capsys):
    pytest.importorskip("onnxruntime", reason=ONNX_REASON)
    from conftest import TINY_TRAIN_FLAGS

    run = tmp_path / "joint"
    assert main(["train", "--method", "joint", "--data", str(SAMPLE_DATA), "--epochs", "1", *TINY_TRAIN_FLAGS,
                 "--out", str(run)]) == 0
    assert main(["export", str(run / "best.pt"), "--site", "covid-ct", "--out", str(tmp_path / "j.onnx")]) == 0
    image = _images("covid-ct/CT_COVID", 1)[0]
    assert main(["predict", str(tmp_path / "j.onnx"), "--backend", "onnxruntime", "--site", "covid-ct", image]) == 0
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "j.onnx"), "--backend", "onnxruntime", "--site", "auto", image]) == 2
    assert "site-specific batch norm" in capsys.readouterr().err
