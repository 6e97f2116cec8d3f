"""Fixtures of the whole suite: the repository's reference data, scikit-image's photographs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
REFDATA = REPO / "refdata"  # Set5 and the MATLAB imresize vectors, shipped in the repository


@pytest.fixture(scope="session")
def refdata() -> Path:
    """The repository's reference data folder (see refdata/README.md)."""
    return REFDATA


@pytest.fixture(scope="session")
def sample_photos() -> dict[str, np.ndarray]:
    """scikit-image's colour photographs as RGB uint8 arrays, keyed by name."""
    from ipt_data.sample import sample_photographs

    return sample_photographs()
