"""Shared fixtures: the reference data in ../shared/refdata and scikit-image's photographs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

REFDATA = Path(__file__).resolve().parents[2] / "shared" / "refdata"


@pytest.fixture(scope="session")
def refdata() -> Path:
    """The reference data folder; tests that need it skip, saying so, where it is absent."""
    if not REFDATA.is_dir():
        pytest.skip(f"reference data not found at {REFDATA} (expected ../shared/refdata)")
    return REFDATA


@pytest.fixture(scope="session")
def sample_photos() -> dict[str, np.ndarray]:
    """scikit-image's colour photographs as RGB uint8 arrays, keyed by name."""
    from ipt_data.sample import sample_photographs

    return sample_photographs()
