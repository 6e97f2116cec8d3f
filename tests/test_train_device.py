"""Which device a training process takes, and how many CPU threads (--device, --threads)."""

from __future__ import annotations

import os

import pytest
import torch

from ipt_data.errors import UserError
from ipt_train.distributed import distributed, process_device, thread_budget


def test_cuda_means_the_gpu_of_the_local_rank():
    # torch.cuda.set_device refuses a bare "cuda"; under torchrun each process takes its own GPU
    assert [process_device("cuda", rank) for rank in (0, 3)] == ["cuda:0", "cuda:3"]
    assert process_device("cuda:2", 0) == "cuda:2" and process_device("cpu", 1) == "cpu"
    auto = process_device("auto", 1)
    assert auto == ("cuda:1" if torch.cuda.is_available() else "cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine where torch sees no GPU")
def test_cuda_without_a_gpu_is_a_user_error(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(UserError, match="no CUDA GPU"), distributed("cuda"):
        pass
    with distributed("auto") as env:  # auto falls back to the CPU, by design
        assert env.device == torch.device("cpu") and env.world == 1


def test_thread_budget_leaves_a_core_per_loader_worker(monkeypatch):
    cores = len(os.sched_getaffinity(0))
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert thread_budget(0, 0) == cores
    assert thread_budget(0, 1) == max(1, cores - 1)
    assert thread_budget(0, cores + 5) == 1  # never none
    assert thread_budget(3, 1) == 3  # asked for: as asked
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(cores))  # a process per core: one thread each
    assert thread_budget(0, 0) == 1


def test_a_training_process_runs_on_its_budget(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    before = torch.get_num_threads()
    try:
        with distributed("cpu", threads=1):
            assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
