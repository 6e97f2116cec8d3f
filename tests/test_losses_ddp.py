"""SupCon across ranks: 2 real processes over gloo (torchrun) against one process on the
concatenated batch, for the loss, the feature gradients and a shared layer's averaged gradient."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from numerics import assert_within, supcon_gradient_terms, supcon_terms, tolerance, tolerance_of

from ipt_train.losses import supcon_loss

WORLD, IMAGES, TOKENS, WIDTH = 2, 3, 10, 12  # per rank: 3 images of 10 tokens
KEYS = WORLD * IMAGES * TOKENS
CHUNKS = (4096, 7)  # all local rows in one chunk; chunks smaller than the 30 local rows
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # two processes on two cores
RANK_SCRIPT = """
import sys, torch
from ipt_train.losses import supcon_loss
from ipt_train.distributed import average_gradients, distributed

if __name__ == "__main__":
    data = torch.load(sys.argv[1] + "/data.pt")
    with distributed("cpu") as env:
        rows = slice(env.rank * data["images"], (env.rank + 1) * data["images"])
        layer = torch.nn.Linear(*data["weight"].shape[::-1], bias=False)
        layer.weight.data.copy_(data["weight"])
        results = []
        for chunk_rows in data["chunks"]:
            layer.zero_grad(set_to_none=True)
            feats = layer(data["inputs"][rows])  # [b, N, E]
            feats.retain_grad()
            loss = supcon_loss(feats, chunk_rows=chunk_rows, across_ranks=True)
            loss.backward()
            average_gradients(layer, env)  # as the trainer does: mean over ranks
            results.append((loss.detach(), feats.grad, layer.weight.grad))
        torch.save(results, f"{sys.argv[1]}/rank{env.rank}.pt")
"""


def make_data() -> dict:
    """Global batch of WORLD·IMAGES images; rank 1's images resemble rank 0's, so the
    cross-rank negatives change the loss."""
    generator = torch.Generator().manual_seed(5)
    inputs = torch.randn(WORLD * IMAGES, TOKENS, WIDTH, generator=generator)
    inputs[IMAGES:] += 1.5 * inputs[:IMAGES]
    weight = torch.randn(WIDTH, WIDTH, generator=generator) / WIDTH**0.5
    return {"inputs": inputs, "weight": weight, "images": IMAGES, "chunks": CHUNKS}


def single_process(data: dict, chunk_rows: int):
    """(loss, feature gradient [W·b, N, E], layer gradient) of one process, whole batch."""
    layer = torch.nn.Linear(WIDTH, WIDTH, bias=False)
    layer.weight.data.copy_(data["weight"])
    feats = layer(data["inputs"])
    feats.retain_grad()
    loss = supcon_loss(feats, chunk_rows=chunk_rows)
    loss.backward()
    return loss.detach(), feats.grad, layer.weight.grad


@pytest.fixture(scope="module")
def ranks_and_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("supcon_ddp")
    data = make_data()
    torch.save(data, out / "data.pt")
    (out / "rank_script.py").write_text(RANK_SCRIPT)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node", str(WORLD), out / "rank_script.py", out]
    subprocess.run(command, check=True, env=ENV, timeout=120)
    return [torch.load(out / f"rank{r}.pt") for r in range(WORLD)], data


@pytest.mark.numerics
@pytest.mark.parametrize("chunk", range(len(CHUNKS)), ids=[f"chunk_rows={c}" for c in CHUNKS])
def test_two_ranks_equal_one_process_on_the_concatenated_batch(ranks_and_data, chunk):
    """Two processes of 30 anchors each against one of 60, in other chunks: two float32
    computations of every value, which may differ by the derived tolerance."""
    ranks, data = ranks_and_data
    loss, feats_grad, weight_grad = single_process(data, CHUNKS[chunk])
    rank_losses = torch.stack([ranks[r][chunk][0] for r in range(WORLD)])
    # (a) the mean of the ranks' losses (what the trainer logs) is the whole batch's loss
    limit = tolerance(supcon_terms(WIDTH, KEYS, KEYS, TOKENS) + WORLD, loss.item())
    assert_within(rank_losses.mean(), loss, limit)
    # each rank's loss is its own anchors' share, not the whole batch's (the test can fail)
    assert (rank_losses - loss).abs().min() > 0.05
    for r in range(WORLD):
        # (b) rank r's feature gradient holds every rank's loss; the trainer's mean over
        # ranks divides by WORLD: that is the single process's gradient of rank r's images
        rows = slice(r * IMAGES, (r + 1) * IMAGES)
        gradient = supcon_gradient_terms(WIDTH, KEYS) + WORLD  # and the ranks' all-reduce
        limit = tolerance_of(feats_grad[rows], gradient)
        assert_within(ranks[r][chunk][1] / WORLD, feats_grad[rows], limit)
        # the layer's gradient after average_gradients, on every rank: a sum over the tokens
        limit = tolerance_of(weight_grad, gradient + KEYS)
        assert_within(ranks[r][chunk][2], weight_grad, limit)


def test_local_negatives_alone_would_give_another_loss(ranks_and_data):
    """The reference is sensitive to the cross-rank negatives: each rank's batch alone differs."""
    _, data = ranks_and_data
    whole = supcon_loss(data["inputs"] @ data["weight"].T)
    alone = [
        supcon_loss(data["inputs"][r * IMAGES : (r + 1) * IMAGES] @ data["weight"].T)
        for r in range(WORLD)
    ]
    assert abs(torch.stack(alone).mean().item() - whole.item()) > 0.05
