"""ipt_data: build the six IPT pretraining tasks' corrupted patch pairs as WebDataset shard sets.

This package never imports torch. Its public API is the names in ``__all__``, imported from the
package itself (``from ipt_data import read_shard``) and presented in docs/python-api.md; the
submodules and everything else in them may change without notice. The names load lazily (PEP
562): ``from ipt_data import UserError`` imports :mod:`ipt_data.errors` alone, not the OpenCV,
fsspec or Ray that other names need.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # for type checkers and editors; at run time __getattr__ imports each name
    from ipt_data.benchsets import (
        BenchImage,
        check_images,
        clean_images,
        image_files,
        rain_images,
        read_image,
        read_pair,
        sr_images,
    )
    from ipt_data.build import BuildResult, build_shards
    from ipt_data.clickgroup import UserErrorGroup
    from ipt_data.configs import BuildConfig, RayConfig
    from ipt_data.decode import decode_image
    from ipt_data.errors import UnreadableImage, UserError
    from ipt_data.fileio import (
        encode_image,
        file_in_the_way,
        file_sha256,
        read_bytes,
        write_bytes_atomic,
    )
    from ipt_data.imresize import downscale, mod_crop, upscale
    from ipt_data.machine import cpu_model
    from ipt_data.manifest import read_set_manifest
    from ipt_data.metrics import psnr, psnr_rgb, psnr_y, rgb_to_y, ssim, ssim_rgb, ssim_y
    from ipt_data.noise import GaussianNoise
    from ipt_data.patches import ImageTooSmall, PatchPair, cut_pairs
    from ipt_data.png import PngError, decode_png, encode_png
    from ipt_data.progress import progress_bar
    from ipt_data.rain import Rain
    from ipt_data.remote import (
        SetLocation,
        open_set_location,
        read_shard,
        retried,
        storage_errors,
        timeout_options,
    )
    from ipt_data.safety import refuse_foreign_members
    from ipt_data.sources import SourceList, open_sources, walk_sources
    from ipt_data.superres import BicubicDownscale
    from ipt_data.tasks import INPUT_SIZE, TASKS, Corruption, Task, get_task, parse_tasks
    from ipt_data.version import __version__

# The module that defines each public name: the same pairs as the imports above, which
# tests/test_imports.py checks, with __all__.
_PUBLIC_NAMES_BY_MODULE = {
    "ipt_data.benchsets": (
        "BenchImage",
        "check_images",
        "clean_images",
        "image_files",
        "rain_images",
        "read_image",
        "read_pair",
        "sr_images",
    ),
    "ipt_data.build": ("BuildResult", "build_shards"),
    "ipt_data.clickgroup": ("UserErrorGroup",),
    "ipt_data.configs": ("BuildConfig", "RayConfig"),
    "ipt_data.decode": ("decode_image",),
    "ipt_data.errors": ("UnreadableImage", "UserError"),
    "ipt_data.fileio": (
        "encode_image",
        "file_in_the_way",
        "file_sha256",
        "read_bytes",
        "write_bytes_atomic",
    ),
    "ipt_data.imresize": ("downscale", "mod_crop", "upscale"),
    "ipt_data.machine": ("cpu_model",),
    "ipt_data.manifest": ("read_set_manifest",),
    "ipt_data.metrics": ("psnr", "psnr_rgb", "psnr_y", "rgb_to_y", "ssim", "ssim_rgb", "ssim_y"),
    "ipt_data.noise": ("GaussianNoise",),
    "ipt_data.patches": ("ImageTooSmall", "PatchPair", "cut_pairs"),
    "ipt_data.png": ("PngError", "decode_png", "encode_png"),
    "ipt_data.progress": ("progress_bar",),
    "ipt_data.rain": ("Rain",),
    "ipt_data.remote": (
        "SetLocation",
        "open_set_location",
        "read_shard",
        "retried",
        "storage_errors",
        "timeout_options",
    ),
    "ipt_data.safety": ("refuse_foreign_members",),
    "ipt_data.sources": ("SourceList", "open_sources", "walk_sources"),
    "ipt_data.superres": ("BicubicDownscale",),
    "ipt_data.tasks": ("INPUT_SIZE", "TASKS", "Corruption", "Task", "get_task", "parse_tasks"),
    "ipt_data.version": ("__version__",),
}
_MODULE_OF = {name: module for module, names in _PUBLIC_NAMES_BY_MODULE.items() for name in names}

__all__ = [
    "INPUT_SIZE",
    "TASKS",
    "BenchImage",
    "BicubicDownscale",
    "BuildConfig",
    "BuildResult",
    "Corruption",
    "GaussianNoise",
    "ImageTooSmall",
    "PatchPair",
    "PngError",
    "Rain",
    "RayConfig",
    "SetLocation",
    "SourceList",
    "Task",
    "UnreadableImage",
    "UserError",
    "UserErrorGroup",
    "__version__",
    "build_shards",
    "check_images",
    "clean_images",
    "cpu_model",
    "cut_pairs",
    "decode_image",
    "decode_png",
    "downscale",
    "encode_image",
    "encode_png",
    "file_in_the_way",
    "file_sha256",
    "get_task",
    "image_files",
    "mod_crop",
    "open_set_location",
    "open_sources",
    "parse_tasks",
    "progress_bar",
    "psnr",
    "psnr_rgb",
    "psnr_y",
    "rain_images",
    "read_bytes",
    "read_image",
    "read_pair",
    "read_set_manifest",
    "read_shard",
    "refuse_foreign_members",
    "retried",
    "rgb_to_y",
    "sr_images",
    "ssim",
    "ssim_rgb",
    "ssim_y",
    "storage_errors",
    "timeout_options",
    "upscale",
    "walk_sources",
    "write_bytes_atomic",
]


def __getattr__(name: str) -> object:
    """The public ``name``, imported from its module on first use and kept here after (PEP 562);
    any other name is an AttributeError, as for a module without this function."""
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_MODULE_OF[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The module's own names and every public one, loaded or not."""
    return sorted({*globals(), *__all__})
