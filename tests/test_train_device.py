"""Which device each training process takes (``ipt-train pretrain/finetune --device``)."""

from __future__ import annotations

import pytest
import torch

from ipt_data.errors import UserError
from ipt_train.train import distributed, process_device


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
