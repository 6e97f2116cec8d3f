"""Shard sets at a location: a local folder, ``http(s)://…`` or any fsspec URL (``s3://…``,
``hf://datasets/OWNER/NAME[@REVISION]`` on the Hugging Face Hub).

A :class:`SetLocation` is the root of one shard set and the fsspec filesystem that reaches it.
Everything below the root is named by a manifest-relative path (``sr_x2/sr_x2-000000.tar``),
which passes one gate, :func:`ipt_data.safety.safe_relative_path`, before it is joined to the
root: a manifest from someone else must not make us read or write outside the set (``..``,
absolute paths, other hosts). Object stores get credentials and endpoints the usual way for
their fsspec backend (for S3: ``AWS_*`` variables such as ``AWS_ENDPOINT_URL``), or
``storage_options``.

Shards are read as samples through one function, :func:`read_shard`, which checks each shard's
size and sha256 against its manifest entry as it streams (docs/sharing.md).

Writes are atomic per file (:mod:`ipt_data.fileio`'s one mechanism): a file appears under its
final name complete or not at all. Locally that is a temporary name and a rename; elsewhere a
temporary key and a move (object stores make an upload visible only once it is complete, and a
move of a complete object is a copy of it). A set on the Hub is read here through
``huggingface_hub``'s fsspec filesystem (the ``hf`` extra) and written only by
:mod:`ipt_data.hub`, in a few commits: every fsspec write there would be a commit of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import random
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TypeVar

import fsspec
from fsspec.implementations.local import LocalFileSystem

from ipt_data.errors import UserError
from ipt_data.fileio import (
    discard_partial,
    file_in_the_way,
    open_partial,
    publish_partial,
    read_whole,
    write_whole,
)
from ipt_data.layout import MANIFEST_NAME, PARTIAL_SUFFIX
from ipt_data.safety import read_samples, safe_relative_path

_BLOCK = 1 << 20
READS_AT_ONCE = 16  # small files read together by read_many: requests, not bandwidth, bound them
RETRIES = 3  # attempts at a shard whose storage fails (see retried)
Result = TypeVar("Result")


@dataclass(frozen=True)
class SetLocation:
    """The root of a shard set: ``fs`` reaches it, ``root`` is its path there (no trailing /)."""

    url: str  # as the user gave it, for messages
    fs: fsspec.AbstractFileSystem
    root: str

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    def path(self, relative: str) -> str:
        """The full path of a set-relative name, which must stay inside the set."""
        return f"{self.root}/{safe_relative_path(relative)}"

    def describe(self, relative: str) -> str:
        return f"{self.url.rstrip('/')}/{relative}"


def open_location(location: str | Path, storage_options: dict | None = None) -> SetLocation:
    """The :class:`SetLocation` of a folder or URL; unknown schemes are one clear error."""
    text = str(location)
    if not text.strip():
        raise UserError("an empty path or URL was given for a shard set")
    if is_hub(text):
        check_hub_url(text)
    options = {**_http_options(text), **(storage_options or {})}
    try:
        fs, root = fsspec.core.url_to_fs(text, **options)
    except ImportError as error:
        extra = " (pip install 'ipt-toolkit[hf]')" if is_hub(text) else ""
        raise UserError(f"{text}: cannot open this location ({error}){extra}") from None
    except ValueError as error:
        raise UserError(f"{text}: cannot open this location ({error})") from None
    return SetLocation(text, fs, root.rstrip("/") or root)


def is_hub(url: str) -> bool:
    """True for a location on the Hugging Face Hub (``hf://…``)."""
    return url.startswith("hf://")


def check_hub_url(url: str) -> None:
    """Refuse an ``hf://`` URL that is not a dataset repository's root (optionally at a
    revision): a set's card must be the repository's README.md for the Hub to read it."""
    repository, at, revision = url.removeprefix("hf://").rstrip("/").partition("@")
    parts = repository.split("/")
    whole = not at or re.fullmatch(r"[^/]+|refs/(pr|convert)/[^/]+", revision)
    if len(parts) != 3 or parts[0] != "datasets" or not all(parts) or not whole:
        raise UserError(
            f"{url}: a shard set on the Hugging Face Hub is a whole dataset repository, "
            "hf://datasets/OWNER/NAME or hf://datasets/OWNER/NAME@REVISION"
        )


def _check_hub_repository(location: SetLocation) -> None:
    """Resolve the repository and revision once, so that a missing, private or gated one is one
    clear error here rather than "no manifest" later."""
    try:
        location.fs.resolve_path(location.root)
    except FileNotFoundError as error:
        cause = type(error.__cause__).__name__
        if cause == "RevisionNotFoundError":
            raise UserError(f"{location.url}: no such revision in the repository") from None
        raise UserError(f"{location.url}: {HUB_NO_ACCESS}") from None
    except Exception as error:  # an HTTP error (403), a connection refused
        if _is_hub_error(error):
            raise UserError(f"{location.url}: {describe(error)}") from None
        raise


# The Hub answers 401 alike for a repository that does not exist and for one the caller may not
# see (private or gated, or no token).
HUB_NO_ACCESS = (
    "repository not found, or not readable with your token (a private or gated dataset needs a "
    "token that may read it: `hf auth login` or HF_TOKEN)"
)
_HUB_PACKAGES = ("huggingface_hub", "httpx2", "httpcore2", "httpx", "httpcore")


def _is_hub_error(error: BaseException) -> bool:
    return type(error).__module__.partition(".")[0] in _HUB_PACKAGES


def _status(error: BaseException) -> int | None:
    """The HTTP status of a Hub client's error (an HfHubHTTPError's response), else None."""
    return getattr(getattr(error, "response", None), "status_code", None)


def open_set_location(location: str | Path, storage_options: dict | None = None) -> SetLocation:
    """:func:`open_location` of a shard set given by its folder or URL, or by its manifest
    (``…/manifest.json``, as users copy it from a browser or a listing)."""
    text = str(location).rstrip("/") or str(location)
    folder, slash, name = text.rpartition("/")
    if name == MANIFEST_NAME:
        text = (folder or "/") if slash else "."
    found = open_location(text, storage_options)
    if is_hub(text):
        _check_hub_repository(found)
    return found


# Packages whose exceptions mean "the storage could not be used" (missing credentials, a
# refused connection), whatever their class; one of them escaping is a UserError.
_STORAGE_PACKAGES = {
    "aiobotocore",
    "aiohttp",
    "azure",
    "botocore",
    "fsspec",
    "gcsfs",
    "google",
    "s3fs",
    *_HUB_PACKAGES,
}


@contextlib.contextmanager
def storage_errors(where: str) -> Iterator[None]:
    """Report an error of the storage backends under this block as one UserError naming
    ``where``, with the backend's own class name and message."""
    try:
        yield
    except UserError:
        raise
    except Exception as error:
        if type(error).__module__.partition(".")[0] not in _STORAGE_PACKAGES:
            raise
        if _is_hub_error(error):  # its own messages run over several lines
            raise UserError(f"{where}: {describe(error)}") from None
        raise UserError(f"{where}: {type(error).__name__}: {error}") from None


def read_bytes(
    location: SetLocation, relative: str, missing: str = "not found", limit: int | None = None
) -> bytes:
    """The whole file ``relative`` of the set (:func:`ipt_data.fileio.read_whole`); a missing
    (``<url>/<relative>: <missing>``) or unreachable one is a UserError, and so is, with
    ``limit``, one of more than ``limit`` bytes (only the first ``limit + 1`` are asked for)."""
    path, shown = location.path(relative), location.describe(relative)
    return read_whole(location.fs, path, shown, missing, describe, limit)


def read_many(location: SetLocation, relatives: list[str]) -> list[bytes]:
    """The whole files ``relatives`` of the set, in order, :data:`READS_AT_ONCE` at a time (on a
    remote store each is a request, so N files take about N / READS_AT_ONCE round trips rather
    than N); errors as :func:`read_bytes`, the first in order raised."""
    with ThreadPoolExecutor(READS_AT_ONCE, thread_name_prefix="ipt-read") as pool:
        return list(pool.map(lambda relative: read_bytes(location, relative), relatives))


def open_read(location: SetLocation, relative: str) -> IO[bytes]:
    """A binary stream of ``relative``, read front to back without fetching it whole first."""
    return location.fs.open(location.path(relative), "rb", **_streaming(location.url))


def _streaming(url: str) -> dict:
    # http(s): one streamed GET (block_size 0); the default would issue range requests, which
    # plain servers (python -m http.server) do not support. The Hub: one streamed GET too,
    # rather than a request per block.
    return {"block_size": 0} if _is_http(url) or is_hub(url) else {}


def _is_http(url: str) -> bool:
    return url.startswith(("http://", "https://"))


# http(s) time limits. aiohttp's default ends any request after 5 minutes in all: that cuts off
# every 500 MB shard on a link slower than 1.7 MB/s (retried, and cut off again), and leaves a
# server that never answers to 5 minutes of silence. No limit on a whole transfer, then, but
# one on connecting and one on silence (no byte received for that long).
HTTP_CONNECT_SECONDS = 30.0
HTTP_SILENCE_SECONDS = 60.0


def describe(error: Exception) -> str:
    """A short account of a storage or network error: ``HTTP 500 Internal Server Error``
    rather than aiohttp's whole repr, a time-out as what timed out, else its message."""
    import aiohttp

    if isinstance(error, aiohttp.ClientResponseError):
        return f"HTTP {error.status} {error.message}"
    if _is_hub_error(error):
        return _describe_hub(error)
    if isinstance(error, TimeoutError):  # asyncio's too, since Python 3.11
        silence, connect = HTTP_SILENCE_SECONDS, HTTP_CONNECT_SECONDS
        return f"timed out: nothing received for {silence:g} s, or no connection in {connect:g} s"
    return str(error) or type(error).__name__


def _describe_hub(error: BaseException) -> str:
    """One line for an HTTP error of the Hub: the status, the server's own message where it
    gave one, and for 401/403 what to do about it."""
    status = _status(error)
    if status is None:  # not an HTTP answer: a refused connection, a malformed repository id
        lines = str(error).strip().splitlines()
        return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
    response = getattr(error, "response", None)
    reason = getattr(response, "reason_phrase", "") or ""
    server = (getattr(error, "server_message", None) or "").strip().splitlines()
    text = f"HTTP {status} {reason}".strip() + (f": {server[0]}" if server else "")
    if status == 401:
        text += " (no valid token: `hf auth login`, or set HF_TOKEN)"
    elif status == 403:
        text += " (the token may not do this here: reading needs read access, push write access)"
    return text


def _http_options(url: str) -> dict:
    """fsspec filesystem options for ``url``: the time limits above for http(s), else none."""
    return timeout_options(url) if _is_http(url) else {}


def timeout_options(url: str, silence: float | None = None, connect: float | None = None) -> dict:
    """fsspec storage options that give up on a connection not made in ``connect`` seconds or
    silent for ``silence`` seconds (no limit on a whole transfer; None: HTTP_CONNECT_SECONDS
    and HTTP_SILENCE_SECONDS): aiohttp's time-outs for http(s), botocore's for s3; {}
    elsewhere (a folder has none). For :func:`open_set_location`."""
    silence = HTTP_SILENCE_SECONDS if silence is None else silence
    connect = HTTP_CONNECT_SECONDS if connect is None else connect
    if _is_http(url):
        import aiohttp

        timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect, sock_read=silence)
        return {"client_kwargs": {"timeout": timeout}}
    if url.startswith("s3://"):
        return {"config_kwargs": {"read_timeout": silence, "connect_timeout": connect}}
    return {}


class CopyStopped(Exception):
    """A shard read whose ``stop`` event was set (the user interrupted the copy)."""


class CheckedStream:
    """A read-only stream over ``incoming`` that hashes what passes through it, copies it to
    ``copy_to`` if given, and refuses (UserError) more or fewer bytes than ``expected``.

    A set ``stop`` event makes the next read raise :class:`CopyStopped`, so that a copy under
    way in another thread ends within a block when the user interrupts the transfer.

    It reads ``incoming`` in 1 MiB blocks whatever the reader asks for: tarfile asks for 10 kB
    at a time, and each read of an fsspec network file is a trip through its event loop
    (measured: pulling 112 MB over loopback took 4-7x a bare copy with 10 kB reads).
    """

    def __init__(
        self,
        incoming: IO[bytes],
        name: str,
        expected: int,
        copy_to: IO[bytes] | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self._incoming, self._name = incoming, name
        self._expected, self._copy_to = expected, copy_to
        self._stop = stop  # once set, the next read raises CopyStopped
        self._buffer = bytearray()
        self._ended = False
        self.sha256 = hashlib.sha256()
        self.size = 0

    def read(self, size: int) -> bytes:
        while len(self._buffer) < size and not self._ended:
            self._fill()
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def _fill(self) -> None:
        if self._stop is not None and self._stop.is_set():
            raise CopyStopped(f"{self._name}: stopped part-way")
        block = self._incoming.read(_BLOCK)
        self.size += len(block)
        self._ended = not block
        short = self._ended and self.size < self._expected
        if short or self.size > self._expected:
            raise UserError(
                f"{self._name}: {'only' if short else 'more than'} {self.size} bytes, "
                f"manifest says {self._expected}; refused"
            )
        self.sha256.update(block)
        if self._copy_to is not None:
            self._copy_to.write(block)
        self._buffer += block

    def drain(self) -> None:
        """Read what a tar reader left unread (end-of-archive padding)."""
        while self.read(_BLOCK):
            pass

    def check_sha256(self, expected: str) -> None:
        if self.sha256.hexdigest() != expected:
            raise UserError(f"{self._name}: sha256 differs from the manifest; refused")


def read_shard(
    location: SetLocation,
    shard: dict,
    copy_to: IO[bytes] | None = None,
    stop: threading.Event | None = None,
    offsets: bool = False,
) -> Iterator[dict]:
    """The raw samples of one shard of the set at ``location``, ``shard`` being its manifest
    entry (``path``, ``bytes``, ``sha256``, ``samples``): the one way shards are read as
    samples (the training loader, ``verify``, ``push`` and ``pull``). Each sample is
    ``{"__key__", "__url__", "input.png", "target.png", "json"}`` with undecoded bytes, as
    webdataset stages expect; ``__url__`` is the shard's URL or path.

    The shard is streamed once, front to back (never fetched whole first), through the member
    and PNG-header gates of :func:`ipt_data.safety.read_samples`, and checked against its entry
    as it streams: reading stops as soon as more bytes arrive than ``bytes``, and a shard that
    ends short, hashes other than ``sha256`` or holds another number of samples is refused at
    its end. Every refusal is a :class:`UserError` naming the shard. The sha256 is known only
    at the end, after the shard's samples were yielded: a consumer must not keep anything of a
    shard for good before the stream has ended (a copy publishes the shard only then).

    ``copy_to`` receives every byte read; ``offsets`` adds each sample's member offsets
    (:func:`ipt_data.safety.read_samples`); once ``stop`` is set the next block raises
    :class:`CopyStopped`. Errors of the storage (a missing file: FileNotFoundError; a dropped
    connection, a time-out) are raised as they come, for the caller to retry (:func:`retried`)
    or report.
    """
    name = location.describe(shard["path"])
    samples = 0
    with open_read(location, shard["path"]) as incoming:
        stream = CheckedStream(incoming, name, shard["bytes"], copy_to, stop)
        for sample in read_samples(stream, name, offsets):
            samples += 1
            yield sample
        stream.drain()
    stream.check_sha256(shard["sha256"])
    if samples != shard["samples"]:
        raise UserError(f"{name}: {samples} samples, manifest says {shard['samples']}; refused")


def retried(name: str, attempt: Callable[[], Result], attempts: int = RETRIES) -> Result:
    """``attempt()``, started over while the storage fails (a dropped connection, an HTTP error,
    a time-out): ``attempts`` in all, :func:`backoff` apart (0.5 s, 1 s, 2 s, ...). A missing
    file (``<name>: not found (listed in the manifest)``) and the last failure are a UserError
    naming ``name``; an attempt's UserError (a shard that disagrees with its manifest) is raised
    as it is, without another attempt."""
    import aiohttp

    for number in range(1, attempts + 1):
        try:
            return attempt()
        except FileNotFoundError:
            raise UserError(f"{name}: not found (listed in the manifest)") from None
        except (OSError, aiohttp.ClientError, asyncio.TimeoutError, *_hub_transient()) as error:
            if _is_hub_error(error) and _status(error) in (401, 403, 404):  # not worth retrying
                if _status(error) == 404:
                    raise UserError(f"{name}: not found (listed in the manifest)") from None
                raise UserError(f"{name}: {describe(error)}") from None
            if number == attempts:
                raise UserError(
                    f"{name}: transfer failed after {attempts} attempts ({describe(error)})"
                ) from None
            time.sleep(backoff(number))
    raise AssertionError("unreachable")


def _hub_transient() -> tuple[type[BaseException], ...]:
    """The Hub client's network errors (a dropped or refused connection, a time-out), worth
    another attempt; none where that client was never imported."""
    httpx2 = sys.modules.get("httpx2")
    return (httpx2.TransportError,) if httpx2 is not None else ()


def backoff(failures: int) -> float:
    """Seconds to wait after the ``failures``-th failed attempt: 0.5 s doubling per failure, at
    most 30 s, each within ±25% at random so that the many readers of one store that a network
    fault stopped together do not all come back at the same instant."""
    return min(30.0, 0.5 * 2 ** (failures - 1)) * random.uniform(0.75, 1.25)


# What a write that cannot happen raises (a read-only place, a file where a folder should be);
# anything else (a network error, say) is left to the caller.
_CANNOT_WRITE = (FileNotFoundError, PermissionError, NotADirectoryError, FileExistsError)


def open_write_partial(location: SetLocation, relative: str) -> tuple[IO[bytes], str]:
    """A writable stream to a fresh temporary name beside ``relative``, and that name.

    Publish it with :func:`publish` or drop it with :func:`discard`.
    """
    try:
        return open_partial(location.fs, location.path(relative))
    except _CANNOT_WRITE as error:
        raise UserError(f"{location.describe(relative)}: cannot write ({error})") from None


def publish(location: SetLocation, partial: str, relative: str) -> None:
    """Move a complete temporary file to its final name ``relative``."""
    publish_partial(location.fs, partial, location.path(relative))


def discard(location: SetLocation, partial: str) -> None:
    """Remove a temporary file; it may never have been created."""
    discard_partial(location.fs, partial)


def write_bytes(location: SetLocation, relative: str, data: bytes) -> None:
    """Write a whole file atomically (:func:`ipt_data.fileio.write_whole`)."""
    try:
        write_whole(location.fs, location.path(relative), data)
    except _CANNOT_WRITE as error:
        raise UserError(f"{location.describe(relative)}: cannot write ({error})") from None


def file_size(location: SetLocation, relative: str) -> int | None:
    """The size of ``relative`` in bytes, or None where it does not exist."""
    try:
        return location.fs.size(location.path(relative))
    except (FileNotFoundError, NotADirectoryError):  # the latter: a file where a folder is
        return None


def list_names(location: SetLocation, folder: str) -> list[str]:
    """The names (last path component) of what the set-relative ``folder`` ("" for the set's
    root) holds now; none where it does not exist."""
    base = _folder_path(location, folder)
    with _uncached(location, base):
        try:
            names = location.fs.ls(base, detail=False)
        except (FileNotFoundError, NotADirectoryError):
            return []
    return [name.rstrip("/").rsplit("/", 1)[-1] for name in names]


@contextlib.contextmanager
def _uncached(location: SetLocation, path: str) -> Iterator[None]:
    """Drop fsspec's listing cache of ``path`` before and after: other processes write there,
    and s3fs answers later reads of files missing from a cached listing with "not found"."""
    location.fs.invalidate_cache(path)
    try:
        yield
    finally:
        location.fs.invalidate_cache(path)


def _folder_path(location: SetLocation, folder: str) -> str:
    """The full path of a set-relative folder, "" being the set's root."""
    return location.path(folder) if folder else location.root


def remove_partials(location: SetLocation, folder: str) -> int:
    """Delete temporary files left in ``folder`` (set-relative; "" for the root) by interrupted
    writes."""
    stale = [name for name in list_names(location, folder) if name.endswith(PARTIAL_SUFFIX)]
    for name in stale:
        discard(location, f"{_folder_path(location, folder)}/{name}")
    return len(stale)


def has_files(location: SetLocation) -> bool:
    """True when anything exists at the root (a file, or a folder/prefix holding anything)."""
    with _uncached(location, location.root):
        try:
            return bool(location.fs.ls(location.root, detail=False))
        except (FileNotFoundError, NotADirectoryError):
            return location.fs.isfile(location.root)


@contextlib.contextmanager
def sole_writer(location: SetLocation) -> Iterator[None]:
    """Hold a local set's folder (created if need be) for this process alone while the block
    runs: a second build or transfer into the same folder is refused with a UserError instead
    of the two sweeping up each other's temporary files.

    The lock is ``flock`` on the folder itself, so it adds no file to the set and the kernel
    releases it however the process ends (a killed build leaves nothing to clean up). Object
    stores have no such lock: there, keeping writers apart is the user's job. A filesystem
    that does not support the lock (some network mounts) runs unlocked, as before.
    """
    if not location.is_local:
        yield
        return
    try:
        Path(location.root).mkdir(parents=True, exist_ok=True)
        folder = os.open(location.root, os.O_RDONLY)
    except OSError as error:
        raise UserError(f"{location.url}: cannot make or open the folder ({error})") from None
    try:
        try:
            fcntl.flock(folder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(
                f"{location.url} is in use by another ipt-data build or transfer; wait for it "
                "to finish (then rerun to resume), or choose another place"
            ) from None
        except OSError:
            pass  # no flock here: unlocked, as documented
        yield
    finally:
        os.close(folder)  # releases the lock


def check_writable(location: SetLocation) -> None:
    """Refuse a location that cannot be written to: an http(s) URL (read-only in fsspec), the
    Hub (where each file written would be a commit of its own: ``push`` publishes a set there),
    or a local path that is a file (or lies under one) rather than a folder."""
    if is_hub(location.url):
        raise UserError(
            f"{location.url}: the Hub is written only by push: build or pull into a folder, then "
            f"`ipt-data push FOLDER {location.url}`"
        )
    if _is_http(location.url):
        raise UserError(
            f"{location.url}: cannot write to an http(s) URL; use a folder or s3://… (any "
            "writable fsspec URL)"
        )
    if location.is_local:
        blocking = file_in_the_way(Path(location.root))
        if blocking is not None:
            where = "it" if blocking == Path(location.root) else str(blocking)
            raise UserError(f"{location.url}: {where} is a file; a shard set is a folder")
