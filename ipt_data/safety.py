"""Checks that a shard set from someone else cannot make us do more than read patch pairs.

Three gates, each one clear :class:`UserError` naming the bad entry:

* **paths** (:func:`safe_relative_path`, :func:`check_manifest_entries`): every shard path in a
  manifest stays inside the set (no ``..``, absolute path, URL or other host, backslash, empty
  component), is listed once, and comes with a 64-hex-digit sha256 and non-negative counts;
* **tar members** (:func:`check_member`, :func:`read_samples`): a shard holds only regular files
  named ``<key>.input.png``, ``<key>.target.png``, ``<key>.json``, each sample's three together.
  Anything else (a ``.pyd``/``.pickle``/``.pth`` member, which webdataset's default decoders
  would unpickle; a symlink, device or folder; a name with ``/`` or ``..``) is refused from its
  tar header, before any member is read or decoded;
* **PNG size** (:func:`check_png_header`): a member PNG's width and height are read from its
  IHDR header and refused above :data:`MAX_PNG_SIDE` before anything decodes it, so a
  decompression bomb never allocates its pixels.

:func:`read_samples` reads a shard stream into webdataset's raw sample dicts through all
the member and PNG gates; :func:`refuse_foreign_members` applies the sample-level ones to
samples that webdataset's own tar reader produced. Either goes before ``.decode()``.
"""

from __future__ import annotations

import re
import struct
import tarfile
from collections.abc import Iterable, Iterator
from typing import IO

from ipt_data.errors import UserError

# Patches are 48 px inputs and 48·s px targets (s <= 4), so 192 px is the largest legitimate
# side; 1024 leaves room for larger future patches while keeping a decode under 4 MB.
MAX_PNG_SIDE = 1024
# Largest member accepted from a tar header: a 192x192 RGB PNG is at most ~111 kB even stored
# uncompressed, a sample's JSON a few hundred bytes.
MAX_MEMBER_BYTES = 4 << 20
# Largest manifest.json read: ImageNet-1k's six tasks at 1000 images per shard list 7,692
# shards in about 1.3 MB; 64 MiB holds fifty times that. A URL that serves something larger is
# refused, after reading only that many bytes where the store honours byte ranges.
MAX_MANIFEST_BYTES = 64 << 20
EXTENSIONS = ("input.png", "target.png", "json")
_MEMBER_NAME = re.compile(r"^([^./\\\x00-\x1f\x7f]{1,200})\.(input\.png|target\.png|json)$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")  # a URL scheme (s3:) or a drive (c:)
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def safe_relative_path(relative: object) -> str:
    """``relative`` if it names a file inside a shard set, else a :class:`UserError` naming it.

    Allowed: non-empty ``/``-separated names, none of them empty, ``.`` or ``..``; no leading
    ``/``, no backslash, no URL scheme or drive, no control characters.
    """
    problem = _path_problem(relative)
    if problem:
        raise UserError(f"shard path {relative!r} is refused: {problem}")
    return relative  # type: ignore[return-value]


def _path_problem(relative: object) -> str | None:
    if not isinstance(relative, str) or not relative:
        return "not a non-empty string"
    if "\\" in relative:
        return "it contains a backslash"
    if any(ord(char) < 32 or ord(char) == 127 for char in relative):
        return "it contains a control character"
    if relative.startswith("/"):
        return "it is absolute"
    if _SCHEME.match(relative) or "://" in relative:
        return "it is a URL or names a drive, not a path inside the set"
    parts = relative.split("/")
    if ".." in parts:
        return "it leaves the set (..)"
    if any(part in ("", ".") for part in parts):
        return "it has an empty or '.' component"
    return None


def check_manifest_entries(manifest: dict, where: str) -> None:
    """Refuse shard entries a structurally valid manifest may still hold (see module doc)."""
    seen: set[str] = set()
    for task in manifest["tasks"].values():
        for shard in task["shards"]:
            try:
                path = safe_relative_path(shard["path"])
            except UserError as refused:
                raise UserError(f"{where}: bad manifest: {refused}") from None
            if path in seen:
                raise UserError(f"{where}: bad manifest: shard {path!r} is listed twice")
            seen.add(path)
            if not _SHA256.match(shard["sha256"]):
                raise UserError(f"{where}: bad manifest: shard {path!r} has no valid sha256")
            if shard["bytes"] < 0 or shard["samples"] < 0:
                raise UserError(f"{where}: bad manifest: shard {path!r} has a negative count")


def check_member(member: tarfile.TarInfo, shard: str) -> tuple[str, str]:
    """``(key, extension)`` of an acceptable tar member, from its header alone."""
    if not member.isreg():
        raise UserError(f"{shard}: member {member.name!r} is not a regular file; refused")
    match = _MEMBER_NAME.match(member.name)
    if not match:
        raise UserError(
            f"{shard}: member {member.name!r} is not <key>.input.png, <key>.target.png or "
            "<key>.json; refused without reading it"
        )
    if member.size > MAX_MEMBER_BYTES:
        raise UserError(f"{shard}: member {member.name!r} is {member.size} bytes; refused")
    return match.group(1), match.group(2)


def check_png_header(data: bytes, name: str) -> tuple[int, int]:
    """``(width, height)`` from a PNG's IHDR; refuses non-PNGs and sides over MAX_PNG_SIDE."""
    if len(data) < 24 or data[:8] != _PNG_SIGNATURE or data[12:16] != b"IHDR":
        raise UserError(f"{name}: not a PNG; refused")
    width, height = struct.unpack(">II", data[16:24])
    if width > MAX_PNG_SIDE or height > MAX_PNG_SIDE:
        raise UserError(
            f"{name}: PNG header says {width}x{height} pixels, over the {MAX_PNG_SIDE}x"
            f"{MAX_PNG_SIDE} limit for patches; refused before decoding"
        )
    return width, height


def read_samples(stream: IO[bytes], shard: str, offsets: bool = False) -> Iterator[dict]:
    """The raw samples of a tar shard, as webdataset stages expect them:
    ``{"__key__", "__url__", "input.png", "target.png", "json"}`` with undecoded bytes; with
    ``offsets``, also ``"__offsets__"``: member extension -> (byte offset of its data in the
    shard, its size), from which a reader of a local copy can read the sample again directly.

    ``stream`` is read front to back once (it may be a network stream). Every member passes
    :func:`check_member` before it is read; every sample passes :func:`check_sample` (its
    three members, together; PNG headers within the limit) before it is yielded. A stream that
    is not an uncompressed tar is refused.
    """
    sample: dict = {}
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                key, extension = check_member(member, shard)
                if sample and (sample["__key__"] != key or extension in sample):
                    yield check_sample(sample)
                    sample = {}
                data = tar.extractfile(member).read()
                sample.update({"__key__": key, "__url__": shard, extension: data})
                if offsets:
                    sample.setdefault("__offsets__", {})[extension] = (
                        member.offset_data,
                        member.size,
                    )
    except tarfile.TarError as error:
        raise UserError(f"{shard}: not a readable tar ({error}); refused") from None
    if sample:
        yield check_sample(sample)


def check_sample(sample: dict) -> dict:
    """``sample`` (raw, undecoded) if it holds exactly ``input.png``, ``target.png`` and
    ``json`` and its PNG headers are within :data:`MAX_PNG_SIDE`; else a UserError."""
    where = f"{sample.get('__url__', '?')}: sample {sample.get('__key__', '?')}"
    members = sorted(name for name in sample if not name.startswith("__"))
    if members != sorted(EXTENSIONS):
        raise UserError(f"{where} has members {members}, expected {sorted(EXTENSIONS)}")
    for extension in ("input.png", "target.png"):
        check_png_header(sample[extension], f"{where}: {extension}")
    return sample


def refuse_foreign_members(samples: Iterable[dict]) -> Iterator[dict]:
    """A webdataset stage for samples read by webdataset's own tar reader: :func:`check_sample`
    on each, so that, put before ``.decode()``, no other member reaches a decoder. (Its reader
    skips links and reads any member whole; :func:`read_samples` refuses those first.)"""
    for sample in samples:
        yield check_sample(sample)
