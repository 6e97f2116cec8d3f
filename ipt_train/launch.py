"""``ipt-train launch``: torchrun's own launcher, run in-process, ending in one line when it fails.

``torchrun ipt-train pretrain ...`` works, but when a process fails (a missing shard set, a bad
checkpoint) torchrun follows that process's ``Error: ...`` line with its own traceback and a
40-line failure report. ``launch`` runs the same elastic agent through ``torch.distributed.run``
(same environment for the processes: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT; same static
rendezvous across nodes) and turns a failure into a :class:`UserError` that names the first rank
that failed and how.

SIGTERM, SIGINT and SIGUSR1 to the launcher are passed on to the training processes, which stop
after their step with the steps saved (:mod:`ipt_train.train`), and the launcher waits for
them as long as they take, then exits with their status (128 + the signal's number). The agent
would instead send its own SIGTERM and SIGKILL the processes 30 s later, whatever their
checkpoint's size; it keeps SIGHUP and SIGQUIT.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from ipt_data import UserError

# Commands that run under torchrun; the others (eval, restore, bench, ...) are one process.
DISTRIBUTED_COMMANDS = ("pretrain", "finetune")
# Passed on to the processes by the launcher itself (ipt_train.train.STOP_SIGNALS), the others by
# the agent.
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
AGENT_SIGNALS = "SIGHUP,SIGQUIT"


@dataclass(frozen=True)
class LaunchConfig:
    """Where the processes run: torchrun's --nproc-per-node, --nnodes, --node-rank,
    --master-addr and --master-port, with torchrun's defaults."""

    nproc_per_node: int
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "localhost"
    master_port: int = 29500

    def __post_init__(self) -> None:
        if self.nproc_per_node < 1 or self.nnodes < 1:
            raise UserError("launch: --nproc-per-node and --nnodes must be at least 1")
        if not 0 <= self.node_rank < self.nnodes:
            raise UserError(f"launch: --node-rank {self.node_rank} is not in 0..{self.nnodes - 1}")


def torchrun_arguments(config: LaunchConfig, command: Sequence[str]) -> list[str]:
    """torchrun's command line for ``python -m ipt_train COMMAND`` (the launcher's interpreter)."""
    if not command or command[0] not in DISTRIBUTED_COMMANDS:
        given = command[0] if command else "nothing"
        raise UserError(f"launch runs {' or '.join(DISTRIBUTED_COMMANDS)}, not {given}")
    return [
        *("--nnodes", str(config.nnodes), "--nproc-per-node", str(config.nproc_per_node)),
        *("--node-rank", str(config.node_rank), "--master-addr", config.master_addr),
        *("--master-port", str(config.master_port), "--module", "ipt_train", *command),
    ]


def launch(config: LaunchConfig, command: Sequence[str]) -> None:
    """Run ``ipt-train COMMAND`` in ``config.nproc_per_node`` processes on this node, as torchrun
    would, and return once they all exit 0. Raises UserError naming the first failed process
    (whose own ``Error:`` line comes before it) or the signal that stopped the launcher; after
    a stop signal (see the module doc), an error without a message whose exit code is the
    processes' (rank 0 has said where the steps are saved).

    Each process gets OMP_NUM_THREADS = cores / processes unless it is set (torchrun sets 1)."""
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    arguments = torchrun.get_args_parser().parse_args(torchrun_arguments(config, command))
    arguments.signals_to_handle = AGENT_SIGNALS
    threads = max(1, (os.cpu_count() or 1) // config.nproc_per_node)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    try:
        with _quiet_elastic_agent(), _passed_on() as received:
            torchrun.run(arguments)
    except ChildFailedError as failed:
        stopped = _stop_status(failed, received)
        if stopped is not None:
            raise _Stopped(stopped) from None
        raise UserError(_failure_line(failed, config, command[0])) from None
    except SignalException as stopped:
        raise _Stopped(128 + stopped.sigval, f"launch stopped by {stopped.sigval.name}") from None


class _Stopped(UserError):
    """The launcher's end after a stop: exit status ``code``, and no message unless given."""

    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(message)
        self.exit_code = code


@contextmanager
def _passed_on():
    """While the block runs, :data:`FORWARDED_SIGNALS` are sent on to this process's children
    (the agent's training processes; only them, not their loader processes or process groups);
    yields the list of those received. One that comes before the processes exist stops the
    agent, as the agent's own handler would."""
    from torch.distributed.elastic.multiprocessing.api import SignalException

    received: list[int] = []

    def pass_on(signum: int, frame: object) -> None:
        received.append(signum)
        children = _children()
        if not children:
            raise SignalException(f"launcher got {signum}", sigval=signal.Signals(signum))
        for pid in children:
            with suppress(ProcessLookupError):  # it ended meanwhile
                os.kill(pid, signum)

    previous = {signum: signal.signal(signum, pass_on) for signum in FORWARDED_SIGNALS}
    try:
        yield received
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _children() -> list[int]:
    """The ids of this process's child processes, from /proc."""
    me, found = os.getpid(), []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):  # gone meanwhile
            continue
        if parent == me:
            found.append(int(stat.parent.name))
    return found


def _stop_status(failed, received: list[int]) -> int | None:
    """The exit status for a launch whose processes ended because of a stop signal, else None.

    They did when every failure reported is a stop's exit status (128 + a stop signal's number:
    rank 0 has said what was saved) or, after a signal to this launcher, death by a stop signal
    (a process it reached before it could handle it, or torchrun's agent's SIGTERM to the
    processes still running once one had exited). The status is 128 + the launcher's first
    signal, else the processes'."""
    statuses = {128 + signum for signum in FORWARDED_SIGNALS}
    codes = [failure.exitcode for failure in failed.failures.values()]
    by_stop = [code for code in codes if code in statuses]
    killed = [code for code in codes if -code in FORWARDED_SIGNALS]
    if not codes or len(by_stop) + (len(killed) if received else 0) != len(codes):
        return None
    if received:
        return 128 + received[0]
    return by_stop[0] if by_stop else None


def _failure_line(failed, config: LaunchConfig, name: str) -> str:
    rank, failure = failed.get_first_failure()
    how = f"exit code {failure.exitcode}"
    if failure.exitcode < 0:
        how = f"signal {failure.signal_name()}"
    world = config.nnodes * config.nproc_per_node
    return f"ipt-train {name}: the process of rank {rank} (of {world}) failed first, with {how}"


@contextmanager
def _quiet_elastic_agent():
    """The agent logs each failure and each SIGTERM it sends to the survivors; the UserError says
    what matters, so only its critical messages pass."""
    agent = logging.getLogger("torch.distributed.elastic")
    level = agent.level
    agent.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        agent.setLevel(level)
