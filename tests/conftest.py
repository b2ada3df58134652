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
