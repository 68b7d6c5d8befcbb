"""Adaptive-DPO's extra annotators: EMA copies of the trained weights that score each pair too.

The official code (fanfanffff1/Adaptive-DPO, ``dpo_train_un.py``) keeps two
diffusers ``EMAModel``s of the UNet (decays 0.9999 and 0.5), stepped after every
optimizer step, and for each batch swaps each one's weights into the model,
recomputes the model's errors on the same noisy inputs and restores the
weights. Ours does the same with the *trainable* weights only (with LoRA, the
adapter; the frozen base is the same in every copy, so nothing changes).

Memory: two fp32 copies of the trainable weights (LoRA: twice the adapter;
full fine-tuning of SD-1.5: 2 x 3.4 GB) plus one temporary copy while an
annotator's weights are swapped in; compute: two extra no-grad forwards of the
pair batch per micro-step once the warm-up is over. The official code holds two
whole-UNet shadows (base included) and the same temporary copy.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from spin_diffusion.errors import CheckpointError
from spin_diffusion.training.ema import load_ema, save_ema

ANNOTATOR_FILE = "annotator-{index}.safetensors"


class EmaAnnotators:
    """The EMA annotators and the count of optimizer steps they have seen (for the warm-up)."""

    def __init__(self, params: list[Any], decays: tuple[float, ...], warmup_steps: int) -> None:
        from diffusers.training_utils import EMAModel

        self.emas = [EMAModel(params, decay=d) for d in decays]
        self.warmup_steps = warmup_steps
        self.steps = 0

    @property
    def ready(self) -> bool:
        """The official code scores with the annotators only from step ``ema_warmup_steps`` on."""
        return self.steps >= self.warmup_steps

    def after_optimizer_step(self, params: list[Any]) -> None:
        for ema in self.emas:
            ema.step(params)
        self.steps += 1

    def scores(self, params: list[Any], score: Callable[[], Any]) -> list[Any]:
        """``score()`` evaluated with each annotator's weights swapped into ``params``, then restored."""
        import torch

        out = []
        for ema in self.emas:
            ema.store(params)
            ema.copy_to(params)
            try:
                with torch.no_grad():
                    out.append(score())
            finally:
                ema.restore(params)
        return out

    def save(self, directory: Path, names: list[str]) -> None:
        for i, ema in enumerate(self.emas):
            save_ema(ema, names, directory / ANNOTATOR_FILE.format(index=i))

    def load(self, directory: Path, names: list[str]) -> None:
        for i, ema in enumerate(self.emas):
            path = directory / ANNOTATOR_FILE.format(index=i)
            if not path.is_file():
                raise CheckpointError(f"{directory} has no {path.name}: it was not written by adaptive-dpo")
            load_ema(ema, names, path)
        self.steps = self.emas[0].optimization_step
