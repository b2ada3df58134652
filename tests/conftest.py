"""Shared fixtures: the shipped sample (always present) and the full data (optional)."""

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


TINY_TRAIN_FLAGS = ["--image-size", "32", "--width", "0.125", "--batch-per-site", "8", "--lr", "1e-3", "--quiet"]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A finished contrastive run folder on the shipped sample at toy settings (2 epochs, 32 px)."""
    from crosssite.cli import main

    out = tmp_path_factory.mktemp("tiny_run") / "run"
    assert main(["train", "--method", "contrastive", "--data", str(SAMPLE_DATA), "--epochs", "2",
                 *TINY_TRAIN_FLAGS, "--out", str(out)]) == 0
    return out
