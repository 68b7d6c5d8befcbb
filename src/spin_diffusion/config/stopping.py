"""``training.stop_when``: iteration length by the game (the paper trains each iteration until it is won)."""

from __future__ import annotations

from pydantic import Field, model_validator

from spin_diffusion.config.base import Strict


class StopWhenConfig(Strict):
    """End an iteration once the opponent is beaten: a window's mean crosses a threshold (max_steps caps it)."""

    implicit_acc: float | None = Field(
        None, gt=0, le=1, description="stop when the window's mean implicit accuracy is at least this"
    )
    loss: float | None = Field(None, gt=0, description="stop when the window's mean loss is at most this")
    window: int = Field(20, ge=1, description="optimizer steps the means are taken over (it must be full)")

    @model_validator(mode="after")
    def _some_threshold(self) -> StopWhenConfig:
        if self.implicit_acc is None and self.loss is None:
            raise ValueError("set implicit_acc or loss (or set stop_when to null)")
        return self


def check_stop_when(method: str, stop_when: StopWhenConfig | None) -> None:
    """SFT logs no implicit accuracy, so only its loss can end an iteration."""
    if method == "sft" and stop_when is not None and stop_when.implicit_acc is not None:
        raise ValueError("training.stop_when.implicit_acc: sft has no implicit accuracy; use loss")
