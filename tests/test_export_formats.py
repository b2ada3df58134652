"""The table of export formats: DEVELOPERS.md's "Adding an export format" followed with a made-up format
registered only here, and export checked for every registered method and format without training."""

import io
import json
import warnings

import pytest
import torch

from crosssite.checkpoint import save_checkpoint
from crosssite.cli import SAMPLE_DATA, build_parser, main
from crosssite.config import TrainConfig
from crosssite.export import export_checkpoint
from crosssite.export_formats import EXPORT_FORMATS, ExportFormat, read_metadata, register_export_format
from crosssite.methods import METHODS, create_method

SITES = ["sars-cov-2-ct", "covid-ct"]
SMALL = dict(image_size=32, width=0.125)


def _save_traced(model, example, path):
    """A made-up container: one line of metadata (empty at first), then a TorchScript archive."""
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(model, (example,), check_trace=False), buffer)
    path.write_bytes(b"\n" + buffer.getvalue())


def _set_line(path, text):
    path.write_bytes(text.encode() + b"\n" + path.read_bytes().split(b"\n", 1)[1])


def _load_lined(path, threads=None):
    head, body = path.read_bytes().split(b"\n", 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        module = torch.jit.load(io.BytesIO(body), map_location="cpu")

    def run(x):
        with torch.no_grad():
            out = module(torch.from_numpy(x))
        return [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]

    return run, head.decode() or None


@pytest.fixture()
def lined():
    fmt = register_export_format(ExportFormat(
        name="lined", backend="lined-runtime", files="lined exports (.lined)", suffix=".lined",
        recognizes=lambda path: path.suffix == ".lined", write=_save_traced, set_metadata=_set_line,
        load=_load_lined))
    yield fmt
    del EXPORT_FORMATS["lined"]


def _predict(capsys, *args):
    assert main(["predict", *map(str, args)]) == 0
    return capsys.readouterr().out


def test_a_registered_format_exports_predicts_and_is_offered(lined, tiny_run, tmp_path, capsys):
    for site in SITES:
        assert main(["export", str(tiny_run / "best.pt"), "--site", site, "--format", "lined",
                     "--out", str(tmp_path / f"{site}.lined")]) == 0
        assert "agrees with PyTorch" in capsys.readouterr().out
    assert read_metadata(tmp_path / "covid-ct.lined")["site"] == "covid-ct"
    images = sorted((SAMPLE_DATA / "covid-ct" / "CT_COVID").iterdir())[:4]
    by_torch = _predict(capsys, tiny_run / "best.pt", "--site", "auto", *images)
    by_lined = _predict(capsys, tmp_path, "--backend", "lined-runtime", "--site", "auto", *images)
    assert by_lined == by_torch
    assert main(["predict", str(tmp_path / "covid-ct.lined"), "--site", "covid-ct", str(images[0])]) == 2
    assert "run it with --backend lined-runtime" in capsys.readouterr().err  # the torch backend names its runner
    for command in ("export", "predict"):
        with pytest.raises(SystemExit):
            build_parser().parse_args([command, "--help"])
        assert "lined" in capsys.readouterr().out


def _randomize_batch_norms(method):
    """Running statistics far from their initial 0 / 1, so folding them into the layers is tested."""
    generator = torch.Generator().manual_seed(0)
    for module in method.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)


def _installed(fmt):
    try:
        EXPORT_FORMATS[fmt].check_installed()
    except Exception:
        return False
    return True


@pytest.mark.parametrize("fmt", list(EXPORT_FORMATS))
@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_exports_in_every_format(name, fmt, tmp_path):
    if not _installed(fmt):
        pytest.skip(f"{fmt} needs its optional extra")
    torch.manual_seed(0)
    config = TrainConfig(method=name, **SMALL)
    method = create_method(name, len(SITES), config)
    _randomize_batch_norms(method)
    save_checkpoint(tmp_path / "best.pt", method, config, SITES)
    test_images = sorted(str(p) for p in (SAMPLE_DATA / "covid-ct").rglob("*.png"))[::10]  # checked on these
    (tmp_path / "split.json").write_text(json.dumps({"sites": {"covid-ct": {"test": test_images}}}))
    metadata = export_checkpoint(tmp_path / "best.pt", "covid-ct", fmt, tmp_path / f"covid-ct{EXPORT_FORMATS[fmt].suffix}")
    assert metadata["method"] == name and metadata["agreement"]["label_flips"] == 0
    assert bool(metadata["bn_statistics"]) == bool(method.site_batch_norms(0))
