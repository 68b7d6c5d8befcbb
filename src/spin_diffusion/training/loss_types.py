"""What a loss computation hands the trainer, and the trainer's backward handed to an objective.

Kept apart from ``losses`` so the objectives that back-propagate themselves
(``exact_spin``) and the method table both depend on it, not on each other.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Backprop:
    """The trainer's backward, handed to an objective that back-propagates in chunks itself.

    ``backward(loss)`` is ``accelerator.backward(loss / accumulation)`` (so grad
    scaling and DDP hooks apply to every chunk); ``no_sync()`` turns gradient
    synchronisation off for a chunk's forward and backward. The objective uses
    it on every chunk but the last, so a sync micro-step all-reduces once, after
    the whole gradient is accumulated, rather than once per chunk.
    """

    backward: Callable[[torch.Tensor], None]
    no_sync: Callable[[], contextlib.AbstractContextManager[Any]]


@dataclass
class LossOutput:
    """``loss`` is logged and checked; the trainer back-propagates it unless ``backward`` is set.

    An objective with its own ``backward(Backprop)`` (the exact SPIN objective's
    chunked pass 2) returns a detached ``loss`` and does the backward itself.
    """

    loss: torch.Tensor
    metrics: dict[str, float] = field(default_factory=dict)
    backward: Callable[[Backprop], None] | None = None
