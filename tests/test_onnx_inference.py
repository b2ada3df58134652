"""`crosssite predict --backend onnxruntime`: the torch backend's output from ONNX exports, `--site auto` too."""

import json
import sys

import pytest

from crosssite.cli import SAMPLE_DATA, main


@pytest.fixture(scope="module")
def exports(tiny_run, tmp_path_factory):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    folder = tmp_path_factory.mktemp("exports")
    for site in ("sars-cov-2-ct", "covid-ct"):
        assert main(["export", str(tiny_run / "best.pt"), "--site", site, "--out", str(folder / f"{site}.onnx")]) == 0
    return folder


def _images(folder, n=6):
    return [str(p) for p in sorted((SAMPLE_DATA / folder).iterdir())[:n]]


def _predict(capsys, *args):
    assert main(["predict", *map(str, args)]) == 0
    return capsys.readouterr().out


def test_same_output_as_the_torch_backend(tiny_run, exports, capsys):
    images = _images("covid-ct/CT_NonCOVID")
    torch_out = _predict(capsys, tiny_run / "best.pt", "--site", "covid-ct", *images)
    onnx_out = _predict(capsys, exports / "covid-ct.onnx", "--backend", "onnxruntime", "--site", "covid-ct", *images)
    assert onnx_out == torch_out and len(onnx_out.splitlines()) == len(images)


@pytest.mark.parametrize("folder", ["sars-cov-2-ct/COVID", "covid-ct/CT_COVID"])
def test_auto_chooses_as_the_torch_backend(tiny_run, exports, capsys, folder):
    images = _images(folder, 20)
    by_torch = json.loads(_predict(capsys, tiny_run / "best.pt", "--site", "auto", "--json", *images))
    by_onnx = json.loads(_predict(capsys, exports, "--backend", "onnxruntime", "--site", "auto", "--json", *images))
    assert by_onnx[0]["site"] == by_torch[0]["site"]
    for site, distance in by_torch[0]["bn_distance"].items():
        assert by_onnx[0]["bn_distance"][site] == pytest.approx(distance, rel=1e-3)
    assert [r["p_covid"] for r in by_onnx] == pytest.approx([r["p_covid"] for r in by_torch], abs=1e-5)


def test_predict_errors(tiny_run, exports, capsys, monkeypatch):
    image = _images("covid-ct/CT_COVID", 1)[0]
    cases = [
        ([tiny_run / "best.pt", "--backend", "onnxruntime", "--site", "covid-ct"], "reads ONNX exports"),
        ([exports / "covid-ct.onnx", "--site", "covid-ct"], "--backend onnxruntime"),
        ([exports / "covid-ct.onnx", "--backend", "onnxruntime", "--site", "sars-cov-2-ct"], "no export of site"),
        ([tiny_run / "split.json", "--backend", "onnxruntime", "--site", "covid-ct"], "reads ONNX exports"),
    ]
    for args, message in cases:
        assert main(["predict", *map(str, args), image]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if the [onnx] extra were not installed
    assert main(["predict", str(exports), "--backend", "onnxruntime", "--site", "auto", image]) == 2
    assert "pip install -e '.[onnx]'" in capsys.readouterr().err


def test_auto_refused_without_site_batch_norm(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
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
