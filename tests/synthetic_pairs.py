"""Fixed random (real, generated) latent pairs with captions: training data for loop-level tests."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from spin_diffusion.training.batches import Members

SIX_CAPTIONS = (
    "a red circle",
    "a blue square",
    "a green circle",
    "a red square",
    "a blue circle",
    "a green square",
)


@dataclass
class SyntheticPairs:
    """``TrainingData`` with one fixed 'real' and one fixed 'generated' latent per caption.

    ``poison_from_epoch``: from that epoch on, real latents are NaN (to test divergence handling).
    """

    captions: Sequence[str] = field(default_factory=lambda: SIX_CAPTIONS)
    poison_from_epoch: int | None = None
    paired: bool = True

    def __post_init__(self) -> None:
        gen = torch.Generator().manual_seed(0)
        self.a = torch.randn(len(self.captions), 4, 8, 8, generator=gen)
        self.b = torch.randn(len(self.captions), 4, 8, 8, generator=gen)

    def __len__(self) -> int:
        return len(self.captions)

    def caption(self, index: int) -> str:
        return self.captions[index]

    def latents(self, index: int, epoch: int, rng: torch.Generator) -> Members:
        if self.poison_from_epoch is not None and epoch >= self.poison_from_epoch:
            return Members(torch.full_like(self.a[index], float("nan")), self.b[index])
        return Members(self.a[index], self.b[index])
