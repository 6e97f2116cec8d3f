"""Fixtures of the whole suite: the repository's reference data, scikit-image's photographs."""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import tempfile
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
# Training runs started by the tests (in this process or as commands) keep their shard cache in
# a fresh folder, not in the user's ~/.cache: a test never sees another run's checked shards.
# The tests interrupt commands with SIGINT (a terminal's Ctrl-C). A process started with SIGINT
# ignored (a background job of a non-interactive shell, as a CI runner may start the suite)
# passes the ignoring on to its children, whose Python then installs no KeyboardInterrupt
# handler: give this process Python's own handler, so that the commands it starts get SIGINT's
# default disposition whatever the suite was started from.
signal.signal(signal.SIGINT, signal.default_int_handler)
os.environ["IPT_CACHE"] = tempfile.mkdtemp(prefix="ipt-test-cache-")
atexit.register(shutil.rmtree, os.environ["IPT_CACHE"], ignore_errors=True)
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
