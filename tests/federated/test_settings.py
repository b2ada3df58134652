"""Federation settings are declared as TrainConfig's are: one declaration gives the flag, the choices and
the type checks, and a federation.yaml with a wrong or unknown entry is refused in one line."""

import argparse

import pytest

from crosssite.errors import CrossSiteError
from crosssite.federated.settings import FedSettings, add_settings_flags, load_settings, settings_from_args


def test_no_flags_give_the_declared_defaults_and_flags_set_each_field():
    parser = argparse.ArgumentParser()
    add_settings_flags(parser)
    assert settings_from_args(parser.parse_args([])) == FedSettings()
    given = parser.parse_args(["--rounds", "3", "--steps-per-round", "7", "--weighting", "uniform",
                               "--no-keep-optimizer", "--min-sites", "1", "--transfer", "float16"])
    assert settings_from_args(given) == FedSettings(rounds=3, steps_per_round=7, weighting="uniform",
                                                    keep_optimizer=False, min_sites=1, transfer="float16")
    with pytest.raises(SystemExit):  # a value outside the declared choices is a usage error
        parser.parse_args(["--weighting", "median"])


@pytest.mark.parametrize("text, message", [
    ("rounds: '10'\n", r"rounds must be an integer, got '10'"),
    ("keep_optimizer: 'no'\n", r"keep_optimizer must be true or false, got 'no'"),
    ("weighting: median\n", r"weighting must be 'images' or 'uniform', got 'median'"),
    ("rounds: 0\n", r"rounds must be at least 1, got 0"),
])
def test_a_wrong_value_in_federation_yaml_is_one_line(tmp_path, text, message):
    (tmp_path / "federation.yaml").write_text(text)
    with pytest.raises(CrossSiteError, match=r"^invalid federation settings: " + message):
        load_settings(tmp_path / "federation.yaml").validate()


def test_an_unknown_entry_names_the_file_and_the_known_ones(tmp_path):
    (tmp_path / "federation.yaml").write_text("round: 5\n")
    with pytest.raises(CrossSiteError, match=r"federation\.yaml: unknown setting\(s\) round; known: .*rounds"):
        load_settings(tmp_path / "federation.yaml")
