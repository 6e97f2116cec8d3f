"""The source stage: which images a build reads, in a fixed order, cut into chunks.

A source is named by its *image id*, its path relative to the source root written with ``/``.
The id seeds the image's random streams and appears in every sample, so the selection and the
order must not depend on the file system's listing order: folders are walked recursively and
the ids sorted, and ``--limit`` keeps the first ones of that (or of a list's own order). The
build then takes the selected ids in the seeded hash order of :meth:`SourceList.in_build_order`
(docs/format.md#build-order), so that a shard holds images from all over the source rather than
one class folder. Files whose extension is not an image's are counted, not read; a file that
has an image extension but is not an image is the decoder's business (it is skipped with a
reason).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, replace
from pathlib import Path

from ipt_data.errors import UserError

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pnm"}
)


@dataclass(frozen=True)
class SourceList:
    """The images of one build, each read from ``root / id``: ``ids`` as selected (a walk's
    sorted by name, a list's in its own order, ``--limit`` applied), or in build order once
    :meth:`in_build_order` has ordered them (:func:`ipt_data.build.build_shards` does)."""

    root: Path
    ids: tuple[str, ...]
    non_image_files: int  # files under the root skipped for their extension
    walked: bool = False  # the ids are what the root holds (a walk), not a list's

    @property
    def fingerprint(self) -> str:
        """sha256 of the ids in their order (docs/format.md#fields, note 3): of a list in build
        order, the manifest's ``source.fingerprint``."""
        digest = hashlib.sha256()
        for image_id in self.ids:
            digest.update(image_id.encode("utf-8", "surrogateescape") + b"\n")
        return digest.hexdigest()

    def in_build_order(self, seed: int) -> SourceList:
        """The same images in the build order of format 2 (docs/format.md#build-order): sorted
        by the sha256 of ``f"{seed}\\0{id}"``, ties (never seen) by id. The order depends on
        which ids there are and on the seed, not on the order they came in, so ordering twice
        changes nothing."""
        return replace(self, ids=tuple(sorted(self.ids, key=lambda i: (order_key(seed, i), i))))

    def chunks(self, images_per_chunk: int) -> list[tuple[str, ...]]:
        """Consecutive runs of ``images_per_chunk`` ids; chunk i becomes shard i of each task."""
        step = images_per_chunk
        return [self.ids[start : start + step] for start in range(0, len(self.ids), step)]


def order_key(seed: int, image_id: str) -> bytes:
    """An image's place in the build order: the sha256 digest of ``f"{seed}\\0{image_id}"``,
    encoded as UTF-8 with undecodable file-name bytes kept as they are (as the image's seeds,
    :func:`ipt_data.seeding.image_rng`); digests compare as bytes."""
    text = f"{seed}\0{image_id}"
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).digest()


def is_image_name(name: str) -> bool:
    """True for a file name with a common image extension, in any case (``.JPEG``, ``.png``)."""
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def walk_sources(root: str | Path, limit: int | None = None) -> SourceList:
    """All image files under ``root`` (recursively), sorted by id; the first ``limit`` of them
    (by name) if given.

    Symlinked folders are followed (a tree of class folders linked from elsewhere is common on
    clusters; they were silently left out), each real folder once: a link back up the tree, or
    a second link to a folder already walked, is not entered again."""
    root = _folder(root)
    ids, skipped, walked = [], 0, set()
    for folder, subfolders, files in os.walk(root, onerror=_raise_walk_error, followlinks=True):
        real = os.path.realpath(folder)
        if real in walked:
            subfolders.clear()
            continue
        walked.add(real)
        subfolders.sort()  # the first name of a folder reached twice is the one kept
        relative = Path(folder).relative_to(root).as_posix()
        prefix = "" if relative == "." else relative + "/"
        for name in files:
            if is_image_name(name):
                ids.append(prefix + name)
            else:
                skipped += 1
    ids.sort()
    return _limited(root, ids, skipped, limit, walked=True)


def read_file_list(list_path: str | Path, root: str | Path | None = None, limit: int | None = None):
    """The images named in a text file, one path per line, in the file's order (blank lines and
    ``#`` comments ignored). Relative paths are relative to ``root``, by default the list's
    folder; each line as written is the image id."""
    list_path = Path(list_path)
    try:
        lines = list_path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise UserError(f"{list_path}: cannot read the file list ({error.strerror})") from None
    except UnicodeDecodeError as error:
        raise UserError(f"{list_path}: the file list is not UTF-8 text ({error.reason})") from None
    ids = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if len(set(ids)) != len(ids):
        raise UserError(f"{list_path}: names some images more than once")
    images = [image_id for image_id in ids if is_image_name(image_id)]
    root = _folder(root) if root is not None else list_path.parent
    return _limited(root, images, len(ids) - len(images), limit)


def _folder(path: str | Path) -> Path:
    """``path`` as a Path, if it is a folder; else a :class:`UserError` saying what it is."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(
            f"{path}: {'is a file, not a folder' if path.exists() else 'no such folder'}"
        )
    return path


def _limited(
    root: Path, ids: list[str], skipped: int, limit: int | None, walked: bool = False
) -> SourceList:
    if limit is not None:
        if limit < 1:
            raise UserError(f"--limit must be at least 1, got {limit}")
        ids = ids[:limit]
    if not ids:
        raise UserError(f"{root}: no image files found")
    return SourceList(root=root, ids=tuple(ids), non_image_files=skipped, walked=walked)


def _raise_walk_error(error: OSError) -> None:
    raise UserError(f"{error.filename}: cannot list folder ({error.strerror})")


def open_sources(
    src: str | Path | None, file_list: str | Path | None = None, limit: int | None = None
) -> SourceList:
    """The command line's choice: ``file_list`` (paths relative to ``src`` if given) or the
    folder ``src`` walked recursively."""
    if file_list is not None:
        return read_file_list(file_list, src, limit)
    if src is None:
        raise UserError("give the images: --src FOLDER, or --files LIST")
    return walk_sources(src, limit)
