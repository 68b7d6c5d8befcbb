"""Iteration length by the game: end an iteration once the opponent is beaten.

The paper trains each iteration until the trained model tells its samples from
the real data ("until the game is won"), with a step cap. A :class:`StopRule`
watches the per-step metrics the loop already computes (means over the whole
global batch, so every process decides alike) and says when the mean over the
last ``window`` optimizer steps crosses a threshold. Its only state is that
window of numbers, which the checkpoint carries, so a resumed iteration stops
at the same step as an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from spin_diffusion.config.stopping import StopWhenConfig

WATCHED = ("implicit_acc", "loss")


@dataclass
class StopRule:
    """Stop when the window's mean ``implicit_acc`` is at least, or its mean ``loss`` at most, a threshold."""

    window: int
    implicit_acc: float | None = None
    loss: float | None = None
    history: list[dict[str, float]] = field(default_factory=list)  # the last ``window`` steps' numbers

    @classmethod
    def from_config(cls, cfg: StopWhenConfig | None) -> StopRule | None:
        if cfg is None or (cfg.implicit_acc is None and cfg.loss is None):
            return None
        return cls(window=cfg.window, implicit_acc=cfg.implicit_acc, loss=cfg.loss)

    def observe(self, step: int, metrics: dict[str, float]) -> dict[str, Any] | None:
        """Add one optimizer step's metrics; the reason to stop after it, or None to go on."""
        self.history.append({"step": step, **{k: float(metrics[k]) for k in WATCHED if k in metrics}})
        del self.history[: -self.window]
        return self.decide()

    def decide(self) -> dict[str, Any] | None:
        """The stopping verdict on the current window (None until the window is full)."""
        if len(self.history) < self.window:
            return None
        means = {k: _mean(self.history, k) for k in WATCHED}
        if self.implicit_acc is not None and means["implicit_acc"] is None:
            raise ValueError(
                "training.stop_when.implicit_acc needs a pairwise method (no implicit_acc logged)"
            )
        hit = []
        if self.implicit_acc is not None and means["implicit_acc"] >= self.implicit_acc:
            hit.append("implicit_acc")
        if self.loss is not None and means["loss"] is not None and means["loss"] <= self.loss:
            hit.append("loss")
        if not hit:
            return None
        return {
            "reason": " and ".join(hit),
            "step": int(self.history[-1]["step"]),
            "window": self.window,
            **{f"window_mean_{k}": v for k, v in means.items() if v is not None},
            "thresholds": {k: getattr(self, k) for k in WATCHED if getattr(self, k) is not None},
        }

    def state(self) -> list[dict[str, float]]:
        """What a checkpoint keeps: the window of numbers."""
        return [dict(row) for row in self.history]

    def load(self, state: list[dict[str, float]] | None) -> None:
        self.history = [dict(row) for row in (state or [])][-self.window :]


def _mean(rows: list[dict[str, float]], key: str) -> float | None:
    vals = [r[key] for r in rows if key in r]
    return sum(vals) / len(vals) if len(vals) == len(rows) else None


def ran_to_the_cap(steps: int) -> dict[str, Any]:
    """The record of an iteration that ran all its ``max_steps``."""
    return {"reason": "max_steps", "step": steps}
