"""The EMA of the trainable weights in a checkpoint: its weights and its own step counter.

diffusers' ``EMAModel`` derives each step's decay from its step counter, so
restoring the weights without the counter makes a resumed EMA drift from an
uninterrupted one. Both go into one safetensors file (the counter as
metadata), never into a pickle.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from spin_diffusion.errors import CheckpointError

EMA_FILE = "ema.safetensors"
_STEP_KEY = "ema_optimization_step"
_DECAY_KEY = "ema_cur_decay_value"


def save_ema(ema: Any, names: list[str], path: Path) -> None:
    """The shadow weights keyed by parameter name, the step counter and last decay as metadata."""
    from safetensors.torch import save_file

    tensors = {n: p.detach().cpu().contiguous() for n, p in zip(names, ema.shadow_params, strict=True)}
    meta = {_STEP_KEY: str(ema.optimization_step), _DECAY_KEY: json.dumps(ema.cur_decay_value)}
    save_file(tensors, str(path), metadata=meta)


def load_ema(ema: Any, names: list[str], path: Path) -> None:
    """Restore what :func:`save_ema` wrote; a file for other parameters is refused, not half-loaded."""
    from safetensors import safe_open

    if not path.is_file():
        raise CheckpointError(
            f"{path.parent} has no {EMA_FILE}: it was written with training.use_ema off; "
            "resume with the same setting"
        )
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        saved = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    if _STEP_KEY not in meta or set(saved) != set(names):
        raise CheckpointError(
            f"{path} does not hold the EMA of this model's trainable weights (written by another version?)"
        )
    for name, shadow in zip(names, ema.shadow_params, strict=True):
        shadow.data.copy_(saved[name])
    ema.optimization_step = int(meta[_STEP_KEY])
    ema.cur_decay_value = json.loads(meta[_DECAY_KEY])
