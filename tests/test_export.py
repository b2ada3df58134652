"""`crosssite export`: files that compute what PyTorch computes, carry their metadata, or are not written."""

import json
import sys

import numpy as np
import pytest
import torch

from crosssite import export
from crosssite.export_formats import load_export, p_covid, preprocessing_of
from crosssite.checkpoint import load_trained
from crosssite.cli import main
from crosssite.data.images import DecodedCache
from crosssite.data.transforms import to_tensor
from crosssite.inference import predict_proba
from crosssite.preprocessing import Preprocessing


def _check_batch(run, site):
    paths, _ = export.check_images(run / "best.pt", site)
    trained = load_trained(run / "best.pt")
    images = DecodedCache(trained.config.image_size, trained.config.window).eval_batch(paths)
    return images, predict_proba(trained.method, images, trained.site_index(site)), trained.method, trained.site_names


def test_pooling_matrices_equal_adaptive_pooling():
    x = torch.randn(2, 3, 7, 5)
    pool = export._AveragePoolMatrices((7, 5), (2, 2))
    assert torch.allclose(pool(x), torch.nn.functional.adaptive_avg_pool2d(x, 2), atol=1e-6)


def test_statistics_outputs_are_the_batch_norm_outputs(tiny_run):
    method = load_trained(tiny_run / "best.pt").method
    model, statistics = export.export_network(method, 1)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        logits, mean, sq_mean = model(x)
        assert torch.allclose(logits, method.predict(x, 1), atol=1e-5)
    assert mean.shape == sq_mean.shape == (3, sum(len(s["running_mean"]) for s in statistics))
    assert (sq_mean >= mean ** 2 - 1e-5).all()
    assert "projection" not in " ".join(s["layer"] for s in statistics)  # not on the prediction path


def test_torchscript_export_agrees_and_carries_metadata(tiny_run, tmp_path, capsys):
    out = tmp_path / "covid-ct.pt"
    assert main(["export", str(tiny_run / "best.pt"), "--site", "covid-ct", "--format", "torchscript",
                 "--out", str(out)]) == 0
    assert "agrees with PyTorch on 40 images" in capsys.readouterr().out
    run, metadata = load_export(out)
    assert metadata["site"] == "covid-ct" and metadata["method"] == "contrastive"
    assert metadata["input"]["shape"] == ["batch", 3, 32, 32]
    assert preprocessing_of(metadata) == Preprocessing(32, (1500.0, -600.0), "all")  # how predict reads inputs for it
    assert (metadata["input"]["window"], metadata["input"]["slices"]) == ([1500.0, -600.0], "all")
    assert metadata["agreement"]["label_flips"] == 0
    assert metadata["agreement"]["max_abs_diff"] <= export.TOLERANCE
    images, reference, _, _ = _check_batch(tiny_run, "covid-ct")
    probs = p_covid(run(to_tensor(images).numpy())[0])
    assert np.abs(probs - reference).max() <= export.TOLERANCE


def test_preprocessing_of_files_written_before_the_input_named_the_window():
    old = {"input": {"image_size": 64}, "config": {"window": [400.0, 40.0], "slices": "::2"}}
    assert preprocessing_of(old) == Preprocessing(64, (400.0, 40.0), "::2")


def test_onnx_export_agrees_with_pytorch(tiny_run, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    out = tmp_path / "sars.onnx"
    metadata = export.export_checkpoint(tiny_run / "best.pt", "sars-cov-2-ct", "onnx", out)
    run, stored = load_export(out)
    assert stored == json.loads(json.dumps(metadata))
    images, reference, _, _ = _check_batch(tiny_run, "sars-cov-2-ct")
    outputs = run(to_tensor(images[:5]).numpy())  # batch size other than the example's
    assert len(outputs) == 3 and outputs[1].shape[0] == 5
    assert np.abs(p_covid(outputs[0]) - reference[:5]).max() <= export.TOLERANCE


def test_disagreeing_export_is_not_written(tiny_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(export, "TOLERANCE", -1.0)  # no file can agree within a negative tolerance
    out = tmp_path / "x.pt"
    assert main(["export", str(tiny_run / "best.pt"), "--site", "covid-ct", "--format", "torchscript",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "not written" in err and "disagrees with PyTorch" in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []  # neither the file nor its temporary file


def test_export_errors(tiny_run, tmp_path, capsys, monkeypatch):
    ckpt = str(tiny_run / "best.pt")
    cases = [
        (["--site", "hospital-z", "--format", "torchscript", "--out", str(tmp_path / "a.pt")], "unknown site 'hospital-z'"),
        (["--site", "covid-ct", "--format", "torchscript", "--out", str(tiny_run / "config.yaml" / "a.pt")],
         "cannot write"),
    ]
    for args, message in cases:
        assert main(["export", ckpt, *args]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
    assert main(["export", str(tiny_run / "split.json"), "--site", "covid-ct", "--format", "torchscript",
                 "--out", str(tmp_path / "b.pt")]) == 2  # torchscript: runs without the [onnx] extra
    assert "not a crosssite checkpoint" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if the [onnx] extra were not installed
    assert main(["export", ckpt, "--site", "covid-ct", "--out", str(tmp_path / "c.onnx")]) == 2
    assert "needs the [onnx] extra: pip install 'crosssite[onnx]'" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
