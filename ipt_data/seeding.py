"""Per-image random streams: seeded from the build seed and the image's identity, never from
global state, so that a shard's bytes do not depend on worker count, order or interruptions."""

from __future__ import annotations

import hashlib

import numpy as np


def image_rng(seed: int, image_id: str, task_name: str) -> tuple[np.random.Generator, int]:
    """Return the generator for one (image, task) and its 64-bit seed (recorded in each
    sample's JSON so that the corruption can be replayed). ``image_id`` is the image's path
    relative to the source root; a file name that is not UTF-8 holds surrogate escapes, which
    encode back to its own bytes (as in the source fingerprint)."""
    text = f"{seed}\0{image_id}\0{task_name}"
    digest = hashlib.sha256(text.encode("utf-8", "surrogateescape")).digest()
    seed64 = int.from_bytes(digest[:8], "little")
    return np.random.default_rng(seed64), seed64
