"""``ipt-data show``: a labelled contact sheet of what a shard set holds.

One row per task: a label (the task, its corruption, the display scales) and N of its samples,
each the corrupted input next to the clean target at the same display scale (the input's pixels
repeated s times, so that its true resolution stays visible), the pair magnified together by a
whole factor where it is small, with the sample's key and source image under it. The samples are
spread evenly over the task's first shards that hold samples (``k·i // N`` of a shard of k), and
are read as training reads them: each shard whole through the checked shard stream
(:func:`ipt_data.remote.read_shard`: size, sha256, sample count, member and PNG-header gates),
each PNG decoded and held to the task's sizes. A shard that fails a check is one error naming
it, and nothing is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ipt_data.card import task_params
from ipt_data.errors import UserError
from ipt_data.fileio import encode_image, write_bytes_atomic
from ipt_data.manifest import read_set_manifest
from ipt_data.png import PngError, decode_png
from ipt_data.remote import SetLocation, open_set_location, read_shard, retried, storage_errors

DISPLAY = 192  # a tile's side on the sheet at least: sr_x4's target, at its own size
MAX_SAMPLES = 16
_LABEL_WIDTH = 230
_GAP = 6
_CELL_GAP = 14
_HEADING = 18  # "input" / "target" above the tiles
_CAPTION = 36  # key and source under them
_TITLE = 34
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_INK = (20, 20, 20)
_GREY = (90, 90, 90)


@dataclass(frozen=True)
class Shown:
    """One sample on the sheet: decoded RGB input and target, its key and source image."""

    key: str
    source: str
    input: np.ndarray  # 48x48x3
    target: np.ndarray  # 48s x 48s x 3


def show_set(
    shard_set: str | Path, out: str | Path, tasks: str | None = None, samples: int = 4
) -> tuple[int, int]:
    """Write the contact sheet of ``samples`` samples of each task (comma-separated names;
    default all of the set's) of the set at ``shard_set`` (a folder or URL) to the PNG ``out``,
    atomically; its width and height."""
    if not str(out).lower().endswith(".png"):
        raise UserError(f"--out {out}: the sheet is a PNG; name a .png file")
    if not 1 <= samples <= MAX_SAMPLES:
        raise UserError(f"--samples must be from 1 to {MAX_SAMPLES}, got {samples}")
    location = open_set_location(shard_set)
    with storage_errors(location.url):
        manifest, _ = read_set_manifest(location)
    names = _task_names(manifest, tasks)
    rows = [(name, pick_samples(location, manifest, name, samples)) for name in names]
    sheet = render_sheet(location.url, manifest, rows, samples)
    # the best zlib level: a sheet is written once and often shared, so its size matters more
    write_bytes_atomic(out, encode_image(sheet, ".png", (cv2.IMWRITE_PNG_COMPRESSION, 9)))
    return sheet.shape[1], sheet.shape[0]


def _task_names(manifest: dict, tasks: str | None) -> list[str]:
    names = [name.strip() for name in (tasks or "").split(",") if name.strip()]
    names = list(dict.fromkeys(names)) or list(manifest["tasks"])
    unknown = [name for name in names if name not in manifest["tasks"]]
    if unknown:
        raise UserError(f"--tasks: the set has no task {unknown}; it has {list(manifest['tasks'])}")
    empty = [name for name in names if manifest["tasks"][name]["samples"] == 0]
    if empty:
        raise UserError(f"the set holds no {', '.join(empty)} samples to show")
    return names


def pick_samples(location: SetLocation, manifest: dict, name: str, count: int) -> list[Shown]:
    """``count`` samples of the task (fewer where it has fewer), spread over its first shards
    with samples, each shard read whole through the checked stream."""
    task = manifest["tasks"][name]
    picked: list[Shown] = []
    for shard in task["shards"]:
        wanted = min(count - len(picked), shard["samples"])
        if wanted <= 0:
            continue
        places = {shard["samples"] * i // wanted for i in range(wanted)}
        where = location.describe(shard["path"])
        with storage_errors(where):
            raw = retried(where, lambda shard=shard, places=places: _read(location, shard, places))
        picked += [_decoded(sample, task, where) for sample in raw]
        if len(picked) == count:
            break
    return picked


def _read(location: SetLocation, shard: dict, places: set[int]) -> list[dict]:
    """The samples at ``places`` of a shard, read to its end (where its sha256 and count are
    checked)."""
    return [sample for number, sample in enumerate(read_shard(location, shard)) if number in places]


def _decoded(sample: dict, task: dict, where: str) -> Shown:
    """A raw sample decoded and held to the task's sizes, as the training loader holds it."""
    import json

    key = sample["__key__"]
    images = []
    for member, side in (("input.png", task["input_size"]), ("target.png", task["target_size"])):
        try:
            image = decode_png(sample[member])
        except PngError as error:
            raise UserError(f"{where}: sample {key}: {member} does not decode ({error})") from None
        if image.shape != (side, side, 3):
            raise UserError(
                f"{where}: sample {key}: {member} is {image.shape[1]}x{image.shape[0]}, the "
                f"task's is {side}x{side}"
            )
        images.append(image)
    try:
        metadata = json.loads(sample["json"])
    except ValueError:
        metadata = {}
    source = metadata.get("source") if isinstance(metadata, dict) else None
    return Shown(key, source if isinstance(source, str) else "?", images[0], images[1])


def render_sheet(
    title: str, manifest: dict, rows: list[tuple[str, list[Shown]]], columns: int
) -> np.ndarray:
    """The sheet (RGB uint8): a title line, then one labelled row per task."""
    sides = {name: _tile_side(manifest["tasks"][name]) for name, _ in rows}
    cell = max(sides.values()) * 2 + _GAP
    width = _LABEL_WIDTH + columns * (cell + _CELL_GAP)
    parts = [_title(title, manifest, width)]
    for name, shown in rows:
        parts.append(_task_row(name, manifest, shown, sides[name], cell, width))
    return np.concatenate(parts, axis=0)


def _tile_side(task: dict) -> int:
    """The side at which a task's tiles are shown: its target's, magnified by the largest whole
    factor that keeps it within DISPLAY (at least 1)."""
    return task["target_size"] * max(1, DISPLAY // task["target_size"])


def _title(title: str, manifest: dict, width: int) -> np.ndarray:
    band = np.full((_TITLE, width, 3), 255, np.uint8)
    params = manifest["params"]
    text = (
        f"{title}  (format {manifest['format_version']}, seed {params['seed']}, "
        f"{params['patches_per_image']} pairs per image and task)"
    )
    _text(band, _fit(text, width - 16, 0.55, 1), (8, 23), 0.55, 1, _INK)
    return band


def _task_row(
    name: str, manifest: dict, shown: list[Shown], side: int, cell: int, width: int
) -> np.ndarray:
    task = manifest["tasks"][name]
    height = _HEADING + side + _CAPTION + _GAP
    row = np.full((height, width, 3), 255, np.uint8)
    target_scale = side // task["target_size"]
    input_scale = side // task["input_size"]
    corruption = task_params(manifest, name).get("corruption")
    label = [
        (name, 0.7, 2),
        *((line, 0.45, 1) for line in _corruption_words(corruption)),
        (f"input {task['input_size']} px, shown x{input_scale}", 0.45, 1),
        (f"target {task['target_size']} px, shown x{target_scale}", 0.45, 1),
        (f"{task['samples']:,} samples in the set", 0.45, 1),
    ]
    for number, (text, scale, thickness) in enumerate(label):
        fitted = _fit(text, _LABEL_WIDTH - 16, scale, thickness)
        _text(row, fitted, (8, _HEADING + 22 + 22 * number), scale, thickness, _INK)
    for column, sample in enumerate(shown):
        left = _LABEL_WIDTH + column * (cell + _CELL_GAP)
        tiles = (
            (0, _magnified(sample.input, input_scale), "input"),
            (side + _GAP, _magnified(sample.target, target_scale), "target"),
        )
        for offset, tile, heading in tiles:
            row[_HEADING : _HEADING + side, left + offset : left + offset + side] = tile
            _text(row, heading, (left + offset, _HEADING - 5), 0.4, 1, _GREY)
        top = _HEADING + side + 14
        for number, text in enumerate((sample.key, sample.source)):
            fitted = _fit(text, 2 * side + _GAP, 0.4, 1)
            _text(row, fitted, (left, top + 15 * number), 0.4, 1, _INK if number == 0 else _GREY)
    return row


def _magnified(image: np.ndarray, factor: int) -> np.ndarray:
    """Each pixel repeated ``factor`` times each way (no interpolation)."""
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


def _corruption_words(corruption: object) -> list[str]:
    """What a task's input is, in a few words, from its recorded parameters."""
    if not isinstance(corruption, dict):
        return []
    kind = corruption.get("kind")
    if kind == "matlab_bicubic_downscale":
        return [f"MATLAB bicubic, 1/{corruption.get('factor')} size"]
    if kind == "gaussian_noise":
        sigma = corruption.get("sigma")
        return [f"Gaussian noise, sigma {sigma:g}" if isinstance(sigma, float) else "noise"]
    if kind == "rain":
        return [f"{'heavy' if corruption.get('heavy') else 'light'} rain streaks"]
    return [str(kind).replace("_", " ")] if kind else []


def _ascii(text: str) -> str:
    """Hershey fonts draw printable ASCII only; anything else becomes '?'."""
    return "".join(char if " " <= char <= "~" else "?" for char in text)


def _fit(text: str, width: int, scale: float, thickness: int) -> str:
    """``text`` (as ASCII) cut to fit ``width`` pixels, ending in '...' where it was cut."""
    text = _ascii(text)
    if cv2.getTextSize(text, _FONT, scale, thickness)[0][0] <= width:
        return text
    while text and cv2.getTextSize(text + "...", _FONT, scale, thickness)[0][0] > width:
        text = text[:-1]
    return text + "..."


def _text(image, text, origin, scale, thickness, colour) -> None:
    cv2.putText(image, text, origin, _FONT, scale, colour, thickness, cv2.LINE_AA)
