"""The built-in sample: the real colour photographs that scikit-image ships.

Used by the README's demo, the benchmarks and the tests, since nothing can be downloaded at run
time. scikit-image is an optional dependency (extra ``sample``); asking for the sample without it
is a clear error, not a silent empty list.
"""

from __future__ import annotations

import numpy as np

from ipt_data.errors import UserError

# name -> the scikit-image loader; stereo_motorcycle gives two views, both are used.
PHOTO_NAMES = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle_left", "motorcycle_right")


def sample_photographs() -> dict[str, np.ndarray]:
    """Return scikit-image's six colour photographs as ``name -> HxWx3 uint8 RGB``."""
    try:
        from skimage import data
    except ImportError as error:
        raise UserError(
            "the built-in sample needs scikit-image: pip install 'ipt-toolkit[sample]'"
        ) from error
    left, right, _disparity = data.stereo_motorcycle()
    photos = {
        "astronaut": data.astronaut(),
        "chelsea": data.chelsea(),
        "coffee": data.coffee(),
        "rocket": data.rocket(),
        "motorcycle_left": left,
        "motorcycle_right": right,
    }
    return {name: np.ascontiguousarray(photos[name][..., :3]) for name in PHOTO_NAMES}
