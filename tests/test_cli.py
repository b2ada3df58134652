"""The command line as a user meets it: train, evaluate, predict, and one-line errors."""

import dataclasses
import json

import pytest
import yaml

from conftest import TINY_TRAIN_FLAGS

from crosssite.cli import SAMPLE_DATA, main
from crosssite.config import TrainConfig, setting_type
from crosssite.errors import CrossSiteError



@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "c0"
    args = ["train", "--method", "contrastive", "--data", str(SAMPLE_DATA), "--fold", "1", "--epochs", "2"]
    assert main(args + TINY_TRAIN_FLAGS + ["--out", str(out)]) == 0
    return out


def sample_images(n=3):
    return sorted((SAMPLE_DATA / "covid-ct" / "CT_COVID").iterdir())[:n]


def test_train_prints_test_metrics_and_saves_config(run, capsys):
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["fold"] == 1 and config["image_size"] == 32 and config["method"] == "contrastive"
    assert json.loads((run / "metrics.json").read_text())["fold"] == 1


def test_evaluate_reproduces_metrics_json(run, capsys):
    assert main(["evaluate", str(run / "best.pt"), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    saved = json.loads((run / "metrics.json").read_text())
    for site, m in saved["sites"].items():
        assert printed["sites"][site] == pytest.approx(m)


def test_predict_prints_path_probability_and_label(run, capsys):
    images = sample_images()
    assert main(["predict", str(run / "best.pt"), "--site", "covid-ct", *map(str, images)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    for line, image in zip(lines, images):
        path, prob, label, *ood_flag = line.split("\t")  # a 4th column only for an out-of-distribution image
        assert path == str(image)
        assert 0.0 <= float(prob.removeprefix("P(COVID)=")) <= 1.0
        assert label in ("COVID", "NonCOVID")


def test_predict_and_evaluate_take_a_device(run, capsys):
    image = str(sample_images(1)[0])
    assert main(["predict", str(run / "best.pt"), "--site", "covid-ct", "--json", "--device", "cpu", image]) == 0
    on_cpu = json.loads(capsys.readouterr().out)
    assert main(["predict", str(run / "best.pt"), "--site", "covid-ct", "--json", image]) == 0  # auto
    (auto,) = json.loads(capsys.readouterr().out)
    assert auto["p_covid"] == pytest.approx(on_cpu[0]["p_covid"], abs=1e-4)  # auto may pick a GPU
    assert main(["evaluate", str(run / "best.pt"), "--json", "--device", "cpu"]) == 0
    for command in (["predict", str(run / "best.pt"), "--site", "covid-ct", image], ["evaluate", str(run / "best.pt")]):
        assert "device" in error_of(capsys, command + ["--device", "tpu:7"])


def test_predict_json(run, capsys):
    assert main(["predict", str(run / "best.pt"), "--site", "sars-cov-2-ct", "--json", str(sample_images(1)[0])]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert set(row) == {"path", "p_covid", "label", "p_uncalibrated", "ood", "site", "threshold", "operating_point",
                        "calibration"}
    assert row["label"] == ("COVID" if row["p_covid"] >= row["threshold"] else "NonCOVID")


def test_config_file_with_flag_override(run, tmp_path):
    out = tmp_path / "again"
    assert main(["train", "--config", str(run / "config.yaml"), "--epochs", "1", "--out", str(out), "--quiet"]) == 0
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["epochs"] == 1 and config["fold"] == 1 and config["width"] == 0.125


def error_of(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("crosssite: error: ") and "\n" not in err
    return err


def test_unknown_site_at_predict(run, capsys):
    err = error_of(capsys, ["predict", str(run / "best.pt"), "--site", "mars", str(sample_images(1)[0])])
    assert "unknown site 'mars'" in err and "sars-cov-2-ct" in err


def test_file_that_is_not_a_checkpoint(tmp_path, capsys):
    bogus = tmp_path / "model.pt"
    bogus.write_text("hello")
    err = error_of(capsys, ["predict", str(bogus), "--site", "covid-ct", str(sample_images(1)[0])])
    assert str(bogus) in err and "not a crosssite checkpoint" in err


def test_unreadable_image_at_predict(run, tmp_path, capsys):
    broken = tmp_path / "broken.png"
    broken.write_bytes(sample_images(1)[0].read_bytes()[:200])
    err = error_of(capsys, ["predict", str(run / "best.pt"), "--site", "covid-ct", str(broken)])
    assert str(broken) in err


def test_unknown_setting_in_config_file(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("epochs: 1\nlearning_rate: 0.1\n")
    err = error_of(capsys, ["train", "--config", str(config), "--data", str(SAMPLE_DATA)])
    assert str(config) in err and "learning_rate" in err


def test_missing_data_folder(tmp_path, capsys):
    err = error_of(capsys, ["train", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")])
    assert "nowhere" in err


def test_invalid_image_size(tmp_path, capsys):
    err = error_of(capsys, ["train", "--data", str(SAMPLE_DATA), "--image-size", "100", "--out", str(tmp_path / "o")])
    assert "image_size" in err


def test_unknown_or_missing_device_is_a_clear_error(tmp_path, capsys):
    args = ["train", "--data", str(SAMPLE_DATA), *TINY_TRAIN_FLAGS, "--epochs", "1", "--out", str(tmp_path / "o")]
    err = error_of(capsys, args + ["--device", "tpu:7"])
    assert "device" in err
    import torch

    if not torch.cuda.is_available():
        err = error_of(capsys, args + ["--device", "cuda"] + ["--out", str(tmp_path / "p")])
        assert "no CUDA GPU" in err


def test_os_errors_are_one_line_and_leave_files_alone(run, tmp_path, capsys):
    a_file = tmp_path / "a-file"
    a_file.write_text("mine")
    image = str(sample_images(1)[0])
    err = error_of(capsys, ["gradcam", str(run / "best.pt"), "--site", "covid-ct", image, "--out", str(a_file)])
    assert str(a_file) in err and "cannot write" in err
    err = error_of(capsys, ["adapt", str(run / "best.pt"), "--site", f"c={SAMPLE_DATA / 'covid-ct' / 'CT_COVID'}",
                            "--out", str(a_file / "new.pt")])
    assert str(a_file) in err
    err = error_of(capsys, ["train", "--data", str(SAMPLE_DATA), *TINY_TRAIN_FLAGS, "--out", str(a_file)])
    assert "names a file" in err
    assert a_file.read_text() == "mine"


def test_empty_out_is_refused_and_the_current_folder_untouched(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.yaml").write_text("someone else's\n")
    assert "out must name a run folder" in error_of(capsys, ["train", "--data", str(SAMPLE_DATA), *TINY_TRAIN_FLAGS, "--out", ""])
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]
    assert (tmp_path / "config.yaml").read_text() == "someone else's\n"
    with pytest.raises(SystemExit) as e:
        main(["sweep", "--data", str(SAMPLE_DATA), "--out", ""])
    assert e.value.code == 2 and "must name a file or folder" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["predict", "evaluate", "export", "adapt"])
@pytest.mark.parametrize("value, problem", [("0", "--batch-size 0: must be at least 1"),
                                            ("x", "--batch-size 'x': expected a whole number")])
def test_batch_size_errors_are_one_line(run, capsys, command, value, problem):
    extra = {"predict": ["--site", "covid-ct", str(sample_images(1)[0])], "evaluate": [],
             "export": ["--site", "covid-ct", "--out", "o.onnx"], "adapt": ["--site", "a=b", "--out", "o.pt"]}[command]
    assert main([command, str(run / "best.pt"), *extra, "--batch-size", value]) == 2
    assert capsys.readouterr().err == f"crosssite: error: {problem}" + (" of at least 1\n" if value == "x" else "\n")


def test_every_evaluation_batch_size_has_one_default():
    import inspect

    from crosssite import adapt, evaluate, export, exported, inference, inputs, predict
    from crosssite.cli import build_parser
    from crosssite.config import EVAL_BATCH_SIZE

    assert TrainConfig().eval_batch_size == EVAL_BATCH_SIZE
    commands = {"evaluate": [], "predict": ["--site", "s", "x.png"], "export": ["--site", "s", "--out", "o.onnx"],
                "adapt": ["--site", "a=b", "--out", "o.pt"]}
    for command, args in commands.items():
        assert build_parser().parse_args([command, "c.pt", *args]).batch_size == EVAL_BATCH_SIZE, command
    functions = (adapt.estimate_bn_statistics, adapt.adapt_checkpoint, evaluate.evaluate_checkpoint,
                 export.export_checkpoint, exported.predict_with_exports, inference.predict_proba,
                 inputs.bn_distances, predict.predict_images)
    for function in functions:
        assert inspect.signature(function).parameters["batch_size"].default == EVAL_BATCH_SIZE, function.__name__


def test_invalid_yaml_config_is_one_line(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("epochs: 1\nwidth: [0.5\n")
    err = error_of(capsys, ["train", "--config", str(config), "--data", str(SAMPLE_DATA)])
    assert f"{config}:" in err and "not valid YAML" in err


def test_checkpoint_carrying_code_is_refused_in_one_line(tmp_path, capsys):
    import torch

    evil = tmp_path / "evil.pt"
    torch.save({"payload": Exploit()}, evil)
    err = error_of(capsys, ["predict", str(evil), "--site", "covid-ct", str(sample_images(1)[0])])
    assert str(evil) in err and "refused" in err


class Exploit:
    def __reduce__(self):
        return (print, ("code ran",))


def test_gpu_flags_map_onto_the_config(tmp_path):
    from crosssite.cli import build_parser, config_from_args

    args = build_parser().parse_args(["train", "--no-cuda-graphs", "--save-every", "5", "--precision", "bf16"])
    config = config_from_args(args)
    assert (config.cuda_graphs, config.save_every, config.precision) == (False, 5, "bf16")
    assert config_from_args(build_parser().parse_args(["train"])).cuda_graphs  # on by default (used on CUDA only)


def test_bf16_on_a_cpu_and_bad_gpu_settings_are_clear_errors(tmp_path, capsys):
    args = ["train", "--data", str(SAMPLE_DATA), *TINY_TRAIN_FLAGS, "--epochs", "1", "--device", "cpu"]
    assert "bf16 needs a CUDA GPU" in error_of(capsys, args + ["--precision", "bf16", "--out", str(tmp_path / "a")])
    assert not (tmp_path / "a").exists()  # refused before anything was written
    assert "precision" in error_of(capsys, args + ["--precision", "fp8", "--out", str(tmp_path / "b")])
    assert "save_every" in error_of(capsys, args + ["--save-every", "-1", "--out", str(tmp_path / "c")])


def _other_value(f, default):
    """A value of setting `f` other than its default, of its annotated type (within its choices)."""
    kind = setting_type(f.name)
    if f.metadata["choices"]:
        return next(c for c in f.metadata["choices"] if c != default)
    if kind is bool:
        return not default
    if kind is int:
        return default + 1
    if kind is float:
        return 0.5 if default is None else default * 2 + 0.5
    if kind is list:
        return ["x=p", "y=q"] if f.metadata.get("action") == "append" else [v * 2 + 1 for v in default]
    return "other" if default is None else default + "-other"


def _flag_args(f, value) -> list[str]:
    """The command line that sets `f` to `value`."""
    flag = f.metadata.get("flag", "--" + f.name.replace("_", "-"))
    if isinstance(value, bool):
        return [flag if value else "--no-" + flag[2:]]
    if isinstance(value, list):
        if f.metadata.get("action") == "append":
            return [arg for item in value for arg in (flag, item)]
        return [flag, ",".join(map(str, value))]
    return [flag, str(value)]


def test_every_setting_has_one_flag_built_from_its_field(capsys):
    """A TrainConfig field is its flag: name, type and help come from the field (crosssite.config.setting).
    The values are made from each field's annotation and choices, so a new setting is covered without an edit."""
    from crosssite.cli import build_parser, config_from_args
    from crosssite.methods import METHODS
    from crosssite.models import MODELS

    fields = dataclasses.fields(TrainConfig)
    assert all(f.metadata["help"] for f in fields)
    defaults = TrainConfig()
    changed = {f.name: _other_value(f, getattr(defaults, f.name)) for f in fields}
    assert all(changed[f.name] != getattr(defaults, f.name) for f in fields)  # else the check below proves nothing
    argv = ["train", *(arg for f in fields for arg in _flag_args(f, changed[f.name]))]
    assert config_from_args(build_parser().parse_args(argv)) == TrainConfig(**changed)
    assert config_from_args(build_parser().parse_args(["train"])) == TrainConfig()
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    helps = " ".join(capsys.readouterr().out.split())
    assert all(name in helps for name in [*METHODS, *MODELS])  # --method and --backbone list the registries


def test_a_setting_outside_its_choices_is_refused():
    for f in dataclasses.fields(TrainConfig):
        if f.metadata["choices"]:
            with pytest.raises(CrossSiteError, match=f"{f.name} must be"):
                TrainConfig(**{f.name: "no-such-value"}).validate()


def test_demo_is_a_preset():
    from crosssite.cli import build_parser
    from crosssite.presets import PRESETS

    demo = build_parser().parse_args(["demo"])
    assert (demo.epochs, demo.out) == (PRESETS["demo"].config.epochs, PRESETS["demo"].config.out)
    assert PRESETS["demo"].config.data == str(SAMPLE_DATA) and PRESETS["paper"].config == TrainConfig()
