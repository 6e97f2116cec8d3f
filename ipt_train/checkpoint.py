"""Reading, converting and writing IPT checkpoints.

Two file kinds are read, both with ``torch.load(weights_only=True)`` (no code in a checkpoint is
ever run):

* the official release (``IPT_pretrain.pt``, ``IPT_sr2.pt``, ...): a plain state_dict;
* ours (:func:`save_checkpoint`): ``{"format": FORMAT, "config": {...}, "model": state_dict, ...}``
  where the extra keys (optimizer state, step, ...) belong to whoever saved it.

The layout (tasks and their scales, widths, depth) is read from the tensor shapes, so any IPT
state_dict builds its own model; the number of attention heads is not in the weights and comes
from the saved config, the caller, or the paper's 12. A file that is not a checkpoint, or whose
tensors do not fit the IPT layout, is one :class:`UserError`.
"""

from __future__ import annotations

import dataclasses
import io
import math
import re
import warnings
from pathlib import Path

import torch

from ipt_data import Task, UserError, write_bytes_atomic
from ipt_train.model import IPT, PRETRAIN_SCALES, IPTConfig

# Attention heads of a model read from a file that does not record them (a plain state_dict):
# the official code's default, which every preset uses too.
PLAIN_NUM_HEADS = 12

FORMAT = "ipt-train-checkpoint/1"
StateDict = dict[str, torch.Tensor]

# Prefixes DDP and torch.compile put in front of every key.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def read_checkpoint(path: str | Path) -> tuple[StateDict, dict | None]:
    """(state_dict, saved config fields or None) of an official or our checkpoint file."""
    content = load_weights_only(path)
    if isinstance(content, dict) and "model" in content and isinstance(content["model"], dict):
        state, config = content["model"], content.get("config")
    else:
        state, config = content, None
    if not isinstance(state, dict) or not state:
        raise UserError(f"{path}: not an IPT checkpoint (no state_dict inside)")
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise UserError(f"{path}: not an IPT checkpoint (its state_dict holds non-tensors)")
    return strip_wrapper_prefixes(state), config


def load_weights_only(path: str | Path):
    """``torch.load(path, weights_only=True)`` on the CPU: tensors and plain containers only,
    never pickled objects; a missing, corrupt or foreign file is one :class:`UserError`."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: a folder, not a checkpoint file")
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint file")
    try:
        with warnings.catch_warnings():  # torch warns about odd pickle protocols: noise here
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for corrupt, truncated or foreign files
        raise UserError(
            f"{path}: not a readable PyTorch checkpoint ({_load_failure(error)})"
        ) from None


def _load_failure(error: Exception) -> str:
    """A short reason for a failed ``torch.load``: torch's own messages run to paragraphs, carry
    terminal escape codes and suggest ``weights_only=False``, which this loader never does."""
    text = str(error)
    if "Weights only load failed" in text:
        return "it holds pickled Python objects, not only tensors; those are never loaded"
    if isinstance(error, EOFError | OSError) or re.search("central directory|EOF|corrupt", text):
        return "truncated or corrupt file"
    return f"not a PyTorch file: {type(error).__name__}"


def strip_wrapper_prefixes(state: StateDict) -> StateDict:
    """Keys without the ``module.`` (DDP) / ``_orig_mod.`` (torch.compile) prefixes."""
    clean = {}
    for key, value in state.items():
        while key.startswith(_WRAPPER_PREFIXES):
            key = key.split(".", 1)[1]
        clean[key] = value
    return clean


def config_from_state_dict(state: StateDict, num_heads: int = PLAIN_NUM_HEADS) -> IPTConfig:
    """The IPTConfig whose model has exactly this state_dict's layout (heads: ``num_heads``)."""
    try:
        n_feats, n_colors = state["head.0.0.weight"].shape[:2]
        embed_dim = state["body.linear_encoding.weight"].shape[0]
        num_tokens = state["body.position_encoding.pe.weight"].shape[0]
        mlp_dim = state["body.encoder.layers.0.linear1.weight"].shape[0]
    except KeyError as error:
        raise UserError(f"not an IPT state_dict: it has no {error.args[0]!r}") from None
    patch_dim = math.isqrt(embed_dim // n_feats)
    num_layers = len(_indices(state, r"body\.encoder\.layers\.(\d+)\.norm1\.weight"))
    slots = _indices(state, r"head\.(\d+)\.0\.weight")
    try:
        return IPTConfig(
            scales=tuple(_tail_scale(state, slot, n_feats) for slot in slots),
            n_feats=n_feats,
            patch_size=math.isqrt(num_tokens) * patch_dim,
            patch_dim=patch_dim,
            num_heads=num_heads,
            num_layers=num_layers,
            mlp_ratio=mlp_dim // embed_dim,
            n_colors=n_colors,
        )
    except ValueError as error:
        raise UserError(f"state_dict does not describe an IPT model: {error}") from None


def _indices(state: StateDict, pattern: str) -> list[int]:
    found = sorted(int(m.group(1)) for key in state if (m := re.fullmatch(pattern, key)))
    if found != list(range(len(found))) or not found:
        raise UserError(f"not an IPT state_dict: keys matching {pattern!r} are not 0..n-1")
    return found


def _tail_scale(state: StateDict, slot: int, n_feats: int) -> int:
    """x1 tails have no upsampler conv; x3 has one conv to 9C; x2 one and x4 two convs to 4C."""
    first = state.get(f"tail.{slot}.0.0.weight")
    if first is None:
        return 1
    if first.shape[0] == 9 * n_feats:
        return 3
    return 4 if f"tail.{slot}.0.2.weight" in state else 2


def build_model(state: StateDict, config: dict | None = None, num_heads: int | None = None) -> IPT:
    """An IPT holding ``state`` (loaded strictly; the model takes over its float32 tensors, no
    copy); ``num_heads`` overrides the saved config."""
    heads = num_heads if num_heads is not None else (config or {}).get("num_heads", PLAIN_NUM_HEADS)
    cfg = config_from_state_dict(state, num_heads=heads)
    with torch.device("meta"):  # no random init of weights that are overwritten at once
        model = IPT(cfg)
    missing, unexpected = _layout_difference(model.state_dict(), state)
    if missing or unexpected:
        raise UserError(
            f"state_dict does not fit the IPT layout {cfg.scales}: "
            f"missing or misshapen {missing[:3]}, unexpected {unexpected[:3]}"
        )
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    return model


def _layout_difference(expected: StateDict, state: StateDict) -> tuple[list[str], list[str]]:
    missing = [k for k, v in expected.items() if k not in state or state[k].shape != v.shape]
    return missing, [k for k in state if k not in expected]


def load_model(path: str | Path, num_heads: int | None = None) -> IPT:
    """The IPT in an official or our checkpoint file, on the CPU, in eval mode."""
    state, config = read_checkpoint(path)
    try:
        return build_model(state, config, num_heads).eval()
    except UserError as error:
        raise UserError(f"{path}: {error}") from None


def slot_for_task(cfg: IPTConfig, task: Task) -> int:
    """The head/tail slot that runs ``task`` in a model of layout ``cfg``.

    The 6-task layout runs every task at its official slot; a single-task model runs a task of
    its own scale at slot 0 (x1 checkpoints do not say whether they are derain or denoise).
    """
    if cfg.scales == PRETRAIN_SCALES:
        return task.index
    if cfg.n_tasks == 1 and cfg.scales[0] == task.scale:
        return 0
    if cfg.n_tasks == 1:
        raise UserError(
            f"the checkpoint is a single-task x{cfg.scales[0]} model; "
            f"task {task.name} needs a x{task.scale} model"
        )
    raise UserError(f"a model with task scales {cfg.scales} has no defined slot for {task.name}")


def to_single_task(state: StateDict, slot: int) -> StateDict:
    """Slot ``slot`` of a multi-task state_dict as a single-task one (slot 0); other heads,
    tails and task embeddings are dropped."""
    n_tasks = state["body.query_embed.weight"].shape[0]
    if not 0 <= slot < n_tasks:
        raise UserError(f"slot {slot} out of range for a {n_tasks}-task checkpoint")
    single = {}
    for key, value in state.items():
        part, index, rest = _split_slot_key(key)
        if part is None:
            single[key] = value
        elif index == slot:
            single[f"{part}.0.{rest}"] = value
    single["body.query_embed.weight"] = state["body.query_embed.weight"][slot : slot + 1].clone()
    return single


def to_multi_task(single: StateDict, slot: int, base: StateDict) -> StateDict:
    """Put a single-task state_dict back at ``slot`` of the multi-task ``base``: the shared parts
    (body, mean shifts) and that slot come from ``single``, the other slots from ``base``."""
    merged = {k: v for k, v in base.items() if _split_slot_key(k)[1] not in (-1, slot)}
    for key, value in single.items():
        part, _, rest = _split_slot_key(key)
        merged[key if part is None else f"{part}.{slot}.{rest}"] = value
    queries = base["body.query_embed.weight"].clone()
    queries[slot] = single["body.query_embed.weight"][0]
    merged["body.query_embed.weight"] = queries
    missing, unexpected = _layout_difference(base, merged)
    if missing or unexpected:
        raise UserError(f"the single-task model does not fit slot {slot}: differs at {missing[:3]}")
    return {k: merged[k] for k in base}  # the base's key order


def _split_slot_key(key: str) -> tuple[str | None, int, str]:
    """``tail.3.1.weight`` -> ("tail", 3, "1.weight"); other keys -> (None, -1, key)."""
    match = re.fullmatch(r"(head|tail)\.(\d+)\.(.+)", key)
    return (match.group(1), int(match.group(2)), match.group(3)) if match else (None, -1, key)


def official_state_dict(model: torch.nn.Module) -> StateDict:
    """The model's weights in the official layout: plain keys, contiguous float32 CPU tensors."""
    state = strip_wrapper_prefixes(model.state_dict())
    return {
        k: (v.detach().float() if v.is_floating_point() else v.detach()).cpu().contiguous().clone()
        for k, v in state.items()
    }


def export_official(model: torch.nn.Module, path: str | Path) -> None:
    """Write the model as the official release's files are: a plain state_dict."""
    _save_atomic(official_state_dict(model), path)


def save_checkpoint(path: str | Path, model: IPT, **extra) -> None:
    """Write our checkpoint: the official-layout state_dict, the config, and ``extra`` entries
    (which must be loadable with ``weights_only=True``: tensors, numbers, strings, containers)."""
    content = {
        "format": FORMAT,
        "config": dataclasses.asdict(model.cfg),
        "model": official_state_dict(model),
        **extra,
    }
    _save_atomic(content, path)


def _save_atomic(content, path: str | Path) -> None:
    """Serialise fully in memory first: an error never leaves a half-written checkpoint."""
    buffer = io.BytesIO()
    torch.save(content, buffer)
    write_bytes_atomic(path, buffer.getbuffer())


def convert_checkpoint(
    source: str | Path,
    dest: str | Path,
    task: Task | None = None,
    into: str | Path | None = None,
    num_heads: int | None = None,
) -> IPTConfig:
    """Write ``source`` (official or ours) to ``dest`` as the official files are: a plain
    state_dict. With ``task``, only that task's slot, as a single-task checkpoint (what
    ``IPT_sr2.pt`` is to ``IPT_pretrain.pt``); with ``into`` too, the single-task ``source`` put
    back at that task's slot of the multi-task checkpoint ``into``. Returns the written layout."""
    model = load_model(source, num_heads)
    state = official_state_dict(model)
    if into is not None:
        if task is None:
            raise UserError("--into needs --task: the slot to put the single-task model at")
        base = load_model(into, num_heads)
        if model.cfg.n_tasks != 1:
            raise UserError(f"{source}: a {model.cfg.n_tasks}-task model; --into takes one task")
        state = to_multi_task(
            to_single_task(state, slot_for_task(model.cfg, task)),
            slot_for_task(base.cfg, task),
            official_state_dict(base),
        )
    elif task is not None:
        state = to_single_task(state, slot_for_task(model.cfg, task))
    cfg = build_model(state, num_heads=model.cfg.num_heads).cfg  # the result loads strictly
    _save_atomic(state, dest)
    return cfg
