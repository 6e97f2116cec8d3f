"""Benchmarks of ``ipt_data``, one module per subject: each corruption's cost
(:mod:`.corruptions`, ``ipt-data bench --corruptions``) and the build against its floor
(:mod:`.build`, ``ipt-data bench --build``). The records of what they measured are in
benchmarks/results/."""

from __future__ import annotations

from contextlib import contextmanager

import cv2
from threadpoolctl import threadpool_limits


@contextmanager
def one_core():
    """Limit OpenCV and the BLAS/OpenMP pools to one thread, so figures are per core."""
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        with threadpool_limits(1):
            yield
    finally:
        cv2.setNumThreads(threads)
