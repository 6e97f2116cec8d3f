"""``ipt-train launch``: torchrun's own launcher, run in-process, ending in one line when it fails.

``torchrun ipt-train pretrain ...`` works, but when a process fails (a missing shard set, a bad
checkpoint) torchrun follows that process's ``Error: ...`` line with its own traceback and a
40-line failure report. ``launch`` runs the same elastic agent through ``torch.distributed.run``
(same environment for the processes: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT; same static
rendezvous across nodes) and turns a failure into a :class:`UserError` that names the first rank
that failed and how.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from ipt_data import UserError

# Commands that run under torchrun; the others (eval, restore, bench, ...) are one process.
DISTRIBUTED_COMMANDS = ("pretrain", "finetune")


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
    (whose own ``Error:`` line comes before it) or the signal that stopped the launcher.

    Each process gets OMP_NUM_THREADS = cores / processes unless it is set (torchrun sets 1)."""
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    arguments = torchrun.get_args_parser().parse_args(torchrun_arguments(config, command))
    threads = max(1, (os.cpu_count() or 1) // config.nproc_per_node)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    try:
        with _quiet_elastic_agent():
            torchrun.run(arguments)
    except ChildFailedError as failed:
        raise UserError(_failure_line(failed, config, command[0])) from None
    except SignalException as stopped:
        raise UserError(f"launch stopped by {stopped.sigval.name}") from None


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
