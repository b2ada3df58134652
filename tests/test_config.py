"""Settings: every field type-checked from its annotation, range rules, YAML errors in one line."""

import dataclasses

import pytest

from crosssite.config import TrainConfig, load_config
from crosssite.errors import CrossSiteError


@pytest.mark.parametrize(
    "yaml_line, field",
    [
        ("epochs: '10'", "epochs"),
        ("epochs: 10.5", "epochs"),
        ("width: a", "width"),
        ("pepx_relu: 'false'", "pepx_relu"),  # a string, which Python would take as true
        ("lr: .nan", "lr"),
        ("temperature: .nan", "temperature"),
        ("alpha: .inf", "alpha"),
        ("lr: 1e-4", "lr"),  # YAML 1.1 reads this as text
        ("weight_decay: -0.001", "weight_decay"),
        ("grad_clip: -2.0", "grad_clip"),  # would turn clipping into gradient ascent
        ("eval_batch_size: 0", "eval_batch_size"),
        ("batch_per_site: true", "batch_per_site"),
        ("sites: hospital=/data", "sites"),
        ("out: ''", "out"),
        ("group_duplicates: 'yes'", "group_duplicates"),
    ],
)
def test_bad_values_in_a_config_file_are_refused_by_name(tmp_path, yaml_line, field):
    path = tmp_path / "c.yaml"
    path.write_text(yaml_line + "\n")
    with pytest.raises(CrossSiteError, match=rf"invalid settings: .*\b{field}\b"):
        load_config(path).validate()


def test_every_field_is_type_checked():
    """A field added later gets the type check from its annotation, without a rule of its own."""
    for f in dataclasses.fields(TrainConfig):
        with pytest.raises(CrossSiteError, match=rf"\b{f.name} must be"):
            TrainConfig(**{f.name: object()}).validate()


def test_good_values_pass(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 3\nwidth: 1\nlr: 1.0e-3\npepx_relu: true\ngroup_duplicates: null\nsites: [a=/x]\n")
    config = load_config(path)
    config.validate()
    assert config.width == 1 and config.lr == 1e-3 and config.pepx_relu is True


def test_invalid_yaml_is_one_line_with_file_and_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 3\nwidth: [1\nlr: 0.1\n")
    with pytest.raises(CrossSiteError) as e:
        load_config(path)
    message = str(e.value)
    assert message.startswith(f"{path}:") and "not valid YAML" in message and "\n" not in message
    assert message.split(":")[1].isdigit()
