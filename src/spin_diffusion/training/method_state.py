"""State a method keeps across optimizer steps, declared by the method, kept by the one training loop.

Most objectives are pure functions of one batch. A few need more: Adaptive-DPO's
official form scores each pair with EMA copies of the trained weights. Such a
method's row in :data:`spin_diffusion.training.losses.PAIR_METHODS` names a
factory; the trainer builds the state once, hands it to the loss, steps it
after every optimizer step and writes it into every checkpoint, without ever
knowing which method it runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol


class MethodState(Protocol):
    """What the trainer may do with a method's state."""

    def after_optimizer_step(self, params: list[Any]) -> None:
        """Called once per optimizer step, with the trainable parameters just updated."""
        ...

    def save(self, directory: Path, names: list[str]) -> None:
        """Write the state into a checkpoint directory (safetensors; ``names`` name the parameters)."""
        ...

    def load(self, directory: Path, names: list[str]) -> None:
        """Restore what :meth:`save` wrote; refuse a file that does not fit."""
        ...
