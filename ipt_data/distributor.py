"""The distributor: run chunk jobs as Ray tasks, a bounded number at a time, with retries and a
live progress bar.

Without an address it starts a local Ray instance on this machine's cores (or ``workers`` of
them); with one it joins that cluster, whose nodes must all reach the output (a shared folder,
or an object store URL such as ``s3://…`` with credentials on every node). If Ray is
already initialised in this process (a notebook, the tests) that instance is used and left
running. A task that still fails after its retries is reported loudly at the end, after the
other chunks have finished; their work is kept, so rerunning the build retries only the failures.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from tqdm import tqdm

from ipt_data.configs import RayConfig
from ipt_data.errors import Stop, UserError, raise_stop
from ipt_data.layout import ChunkStats
from ipt_data.progress import progress_bar
from ipt_data.worker import ChunkJob, process_chunk

# The object store only carries small stats back; Ray's default (30% of RAM) would be wasted.
LOCAL_OBJECT_STORE_BYTES = 128 * 2**20
# Where Ray (2.60) logs "Token authentication is enabled for this Ray cluster".
RAY_TOKEN_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"
PROGRESS_SECONDS = 0.5  # how often the bar asks the running chunks how far they are


class BuildFailed(UserError):
    """Some chunks failed after all retries; the others are complete and kept."""


@contextmanager
def ray_session(config: RayConfig) -> Iterator[int]:
    """Connect to Ray for the duration of the block; yields how many tasks to run at once.

    A local instance started here ends with the block, or with this process however it ends
    (:func:`_guarded`)."""
    ray = _import_ray()
    if config.address:
        _check_reachable(config.address)
    started = not ray.is_initialized()
    guard = _guarded() if started and not config.address else None
    try:
        if started:
            _init(ray, config)
        with _sigterm_as_interrupt(started):
            yield config.workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
    finally:
        if started:
            ray.shutdown()
        if guard is not None:
            guard.dismiss()  # only once the instance is down: else the guard ends what is left


def _init(ray, config: RayConfig) -> None:
    """``ray.init`` for a new local instance, or to join the cluster at ``config.address``.
    ``ray.init`` installs a SIGTERM handler that exits with status 15 first thing: a SIGTERM
    while it starts the instance stops the build as one later would (:class:`Stop`)."""
    try:
        if config.address:
            try:
                ray.init(address=config.address, log_to_driver=False)
            except (ValueError, ConnectionError) as error:  # a malformed or dead --address
                raise UserError(f"--address {config.address}: {error}") from None
            return
        cores = config.workers or os.cpu_count() or 1
        # A new local instance gets token authentication by default, and Ray logs a warning
        # saying so into every build's output; the authentication stays, the warning goes.
        logging.getLogger(RAY_TOKEN_AUTH_LOGGER).setLevel(logging.ERROR)
        ray.init(
            address="local",  # a new instance, even where `ray start` left a cluster running
            num_cpus=cores,
            include_dashboard=False,
            object_store_memory=LOCAL_OBJECT_STORE_BYTES,
            log_to_driver=False,
        )
    except SystemExit as exiting:
        if exiting.code == signal.SIGTERM:  # ray.init's handler: sys.exit(signum)
            raise Stop(signal.SIGTERM) from None
        raise


class _Guard:
    """The process :func:`_guarded` starts; :meth:`dismiss` lets it go without ending anything."""

    def __init__(self, process: subprocess.Popen) -> None:
        self._process = process

    def dismiss(self) -> None:
        with contextlib.suppress(OSError):  # it may have been killed: nothing to dismiss then
            self._process.stdin.write(b"done")
            self._process.stdin.close()
        self._process.wait()


def _guarded() -> _Guard | None:
    """Start a guard that ends what the local Ray instance leaves if this process dies first.

    Ray ends its own processes with the driver (its core processes by the kernel's parent-death
    signal, its workers seconds after the raylet), but after a SIGKILL of the driver its
    dashboard and runtime-env agents each wait 60 s on the dead GCS, to report the raylet's
    death, before they exit (Ray 2.60). The guard (:data:`_GUARD_PROGRAM`, Linux only) is a
    small process of its own session, so that a group kill or a terminal's Ctrl-C does not reach
    it; it reads a pipe from this process and notes this process's descendants every second.
    When the pipe ends without :meth:`_Guard.dismiss` (this process died), it SIGKILLs those of
    them still running."""
    if not sys.platform.startswith("linux"):
        return None
    command = [sys.executable, "-I", "-S", "-c", _GUARD_PROGRAM, str(os.getpid())]
    streams = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    process = subprocess.Popen(command, stdin=subprocess.PIPE, start_new_session=True, **streams)
    return _Guard(process)


# Standard library only, and run with -I -S: it starts in ~20 ms and holds ~10 MB.
_GUARD_PROGRAM = r"""
import os, select, signal, sys

driver, me = int(sys.argv[1]), os.getpid()


def started(pid):
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return int(fields[1]), fields[19]  # the parent, the start time (a reused pid differs)


def descendants():
    parents = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                parents[int(name)] = started(name)
            except (OSError, IndexError, ValueError):  # gone meanwhile
                pass
    found, frontier = {}, {driver}
    while frontier:
        frontier = {pid for pid, (up, _) in parents.items() if up in frontier and pid != me}
        found.update((pid, parents[pid][1]) for pid in frontier)
    return found


seen = {}
while not select.select([0], [], [], 1.0)[0]:
    seen.update(descendants())
if not os.read(0, 4):  # the pipe ended without "done": the driver died
    for pid, start in seen.items():
        try:
            if started(pid)[1] == start:
                os.kill(pid, signal.SIGKILL)
        except (OSError, IndexError, ValueError):
            pass
"""


@contextmanager
def _sigterm_as_interrupt(enabled: bool) -> Iterator[None]:
    """While the block runs, SIGTERM (a scheduler's time limit, ``docker stop``) stops the
    build as Ctrl-C does (:class:`ipt_data.errors.Stop`: one ``Error: stopped by SIGTERM`` line,
    exit 143, finished chunks kept) instead of the handler ``ray.init`` installs, which dumps a
    stack report and exits with status 15. Only in the main thread (where Python handles
    signals), and only for a Ray instance started here."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, raise_stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class ProgressCounter:
    """Totals that running chunks report image by image (a Ray actor), per build run, so that
    the progress bar moves within chunks. A retried chunk reports its images again: the bar is
    a guide, the manifest holds the counts."""

    def __init__(self) -> None:
        self.totals: dict[str, list[int]] = {}  # run -> [images, pairs, skipped]

    def add(self, run: str, images: int, pairs: int, skipped: int) -> None:
        totals = self.totals.setdefault(run, [0, 0, 0])
        for slot, count in enumerate((images, pairs, skipped)):
            totals[slot] += count

    def read(self, run: str) -> list[int]:
        return self.totals.get(run, [0, 0, 0])


# One counter actor per Ray session of this driver, kept referenced (Ray ends an actor whose
# handles are all gone), so that later builds in the session do not each start an actor process.
_counters: dict[tuple[str, str], object] = {}


def _progress_counter(ray):
    context = ray.get_runtime_context()
    key = (context.get_job_id(), context.gcs_address)
    if key not in _counters:
        _counters[key] = ray.remote(num_cpus=0)(ProgressCounter).remote()
    return _counters[key]


class _ThrottledReport:
    """A chunk's progress counts, sent to the counter actor (fire and forget) at most every
    PROGRESS_SECONDS, when the driver's bar next looks, and at :meth:`flush`. An actor call per
    image cost its worker about 1 ms of CPU per image (20.5 -> 19.4 ms with the ISA-L encoder),
    besides the actor's own work for each call, on the same cores."""

    def __init__(self, counter, run: str) -> None:
        self._counter, self._run = counter, run
        self._unsent = [0, 0, 0]  # images, pairs, skipped
        self._sent_at = time.monotonic()

    def __call__(self, images: int, pairs: int, skipped: int) -> None:
        for slot, count in enumerate((images, pairs, skipped)):
            self._unsent[slot] += count
        if time.monotonic() - self._sent_at >= PROGRESS_SECONDS:
            self.flush()

    def flush(self) -> None:
        if any(self._unsent):
            self._counter.add.remote(self._run, *self._unsent)
            self._unsent = [0, 0, 0]
        self._sent_at = time.monotonic()


def run_chunk_reporting(job: ChunkJob, counter, run: str) -> tuple[int, ChunkStats]:
    """``process_chunk`` that reports its progress to the ``counter`` actor."""
    report = _ThrottledReport(counter, run)
    try:
        return process_chunk(job, report)
    finally:
        report.flush()  # a failed attempt's images count too, as they did one call at a time


def run_chunks(jobs: list[ChunkJob], config: RayConfig) -> list[ChunkStats]:
    """Run every job as a Ray task, at most ``workers`` at once; returns their stats by chunk."""
    ray = _import_ray()
    total_images = sum(len(job.image_ids) for job in jobs)
    done, failures = [], {}
    with ray_session(config) as in_flight_limit, _build_bar(total_images, config) as bar:
        counter, run = _progress_counter(ray), uuid.uuid4().hex
        remote = ray.remote(num_cpus=1)(run_chunk_reporting).options(
            max_retries=config.retries, retry_exceptions=True
        )
        pending, queue = {}, list(reversed(jobs))
        while pending or queue:
            while queue and len(pending) < in_flight_limit:
                job = queue.pop()
                pending[remote.remote(job, counter, run)] = job
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=PROGRESS_SECONDS)
            for ref in ready:
                job = pending.pop(ref)
                try:
                    done.append(ray.get(ref)[1])
                except ray.exceptions.RayError as error:
                    failures[job.index] = error
            _show(bar, ray.get(counter.read.remote(run)))
    if failures:
        raise BuildFailed(_failure_message(failures, len(jobs)))
    return sorted(done, key=lambda stats: stats.chunk)


def _build_bar(total_images: int, config: RayConfig) -> tqdm:
    return progress_bar(
        total=total_images, unit="img", desc="build", enabled=config.progress, smoothing=0.1
    )


def _show(bar: tqdm, totals: list[int]) -> None:
    images, pairs, skipped = totals
    bar.update(min(images, bar.total) - bar.n)
    bar.set_postfix(pairs=pairs, skipped=skipped)


def _failure_message(failures: dict[int, Exception], chunks_run: int) -> str:
    """One message for the failed chunks: the first failure's message alone where the worker
    raised a UserError (a full disk, say), else its whole remote traceback (a bug)."""
    chunks = ", ".join(str(index) for index in sorted(failures))
    first = failures[min(failures)]
    cause = getattr(first, "cause", None)
    others = "The other chunks are complete" if len(failures) < chunks_run else "None completed"
    return (
        f"{len(failures)} of {chunks_run} chunk(s) failed after all retries: {chunks}. {others}; "
        "rerun the same command to retry only these. First failure:\n"
        f"{cause if isinstance(cause, UserError) else first}"
    )


def _check_reachable(address: str) -> None:
    """Fail fast on a ``host:port`` nobody listens on: Ray itself retries for minutes."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or "://" in address:
        return  # "auto", "ray://...": left to Ray
    try:
        socket.create_connection((host, int(port)), timeout=10).close()
    except OSError as error:
        raise UserError(f"cannot reach the Ray cluster at {address}: {error}") from None


def _import_ray():
    try:
        import ray
    except ImportError as error:  # a declared dependency: missing means a broken install
        raise UserError("ipt-data build needs Ray: pip install 'ray[default]'") from error
    return ray
