"""Training checkpoints: everything a killed run needs to continue exactly where it was saved.

One file, ``RUN/checkpoint.pt``, replaced atomically (written in full to a temporary name, then
renamed): our checkpoint format (:func:`ipt_train.checkpoint.save_checkpoint`, loadable by every
``ipt-train`` command as a model) plus the optimizer state, the next step, the run's settings and
the RNG states. The data position is the step: the loader's streams restart from (seed, step).
Everything in it loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ipt_data import UserError
from ipt_train.checkpoint import build_model, load_weights_only, save_checkpoint
from ipt_train.model import IPT

STATE_NAME = "checkpoint.pt"


@dataclass
class TrainState:
    model: IPT
    optimizer: dict  # torch.optim state_dict
    step: int  # the next step to train (steps 0..step-1 are in the weights)
    run: dict  # the settings the run was started with (see train.run_identity)
    rng: dict


def save_train_state(
    path: str | Path, model: IPT, optimizer: torch.optim.Optimizer, step: int, run: dict
) -> None:
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    save_checkpoint(path, model, optimizer=optimizer.state_dict(), step=step, run=run, rng=rng)


def load_train_state(path: str | Path) -> TrainState:
    """The state saved at ``path``; a file without training state is one clear error."""
    content = load_weights_only(path)
    missing = [k for k in ("model", "optimizer", "step", "run") if k not in content]
    if not isinstance(content, dict) or missing:
        raise UserError(f"{path}: not a training checkpoint (no {', '.join(missing)})")
    try:
        model = build_model(content["model"], content.get("config"))
    except UserError as error:
        raise UserError(f"{path}: {error}") from None
    return TrainState(model, content["optimizer"], content["step"], content["run"], content["rng"])


def restore_rng(rng: dict) -> None:
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
