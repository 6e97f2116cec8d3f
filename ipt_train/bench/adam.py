"""Why the trainer runs the Adam it runs (``train.TRAINING_ADAM``): each implementation timed."""

from __future__ import annotations

import statistics
import time

import torch

from ipt_train.losses import pretrain_loss
from ipt_train.model import IPT, preset_config
from ipt_train.train import ADAM_IMPLEMENTATIONS, make_optimizer


def adam_benchmark(preset: str = "ipt-tiny", batch: int = 4, rounds: int = 9) -> dict:
    """Median milliseconds of ``optimizer.step()`` and of the whole training step (forward, L1 +
    SupCon, backward, step; sr_x2 slot, random data) per Adam implementation, on the CPU, the
    implementations taking turns each round so that load from elsewhere hits them alike."""
    torch.manual_seed(0)
    model = IPT(preset_config(preset))
    x, y = torch.rand(batch, 3, 48, 48) * 255, torch.rand(batch, 3, 96, 96) * 255
    optimizers = {
        name: make_optimizer(model.parameters(), 1e-9, name) for name in ADAM_IMPLEMENTATIONS
    }
    times: dict[str, list] = {name: [] for name in optimizers}
    for round_ in range(rounds + 1):  # round 0 creates the optimizer states, untimed
        for name, optimizer in optimizers.items():
            start = time.perf_counter()
            model.zero_grad(set_to_none=True)
            output, feats = model(x, 0, return_features=True)
            pretrain_loss(output, y, feats)[0].backward()
            middle = time.perf_counter()
            optimizer.step()
            end = time.perf_counter()
            if round_:
                times[name].append((end - middle, end - start))
    return {
        f"{name} {part} ms": round(1000 * statistics.median(t[i] for t in spans), 1)
        for name, spans in times.items()
        for i, part in enumerate(("optimizer.step", "whole step"))
    }
