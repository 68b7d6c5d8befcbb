"""What each method trains on, read from the run's caches: real latents, preference pairs, opponent samples.

Every adapter draws its random choices (flip, which opponent sample) from the
per-example generator the loop hands it, so a batch is a pure function of
(seed, example, epoch) and precomputed reference errors match live ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from spin_diffusion.config.run import PREFERENCE_METHODS, SELF_PLAY_METHODS
from spin_diffusion.training.batches import Members, TrajectoryMembers

if TYPE_CHECKING:
    import torch


@dataclass
class _CacheData:
    """Examples of the real-latent cache: their count and captions (what every method shares)."""

    cache: Any
    flip: bool

    def __len__(self) -> int:
        return len(self.cache)

    def caption(self, index: int) -> str:
        return self.cache.captions[index]


class RealData(_CacheData):
    """SFT: the real latent of each example."""

    paired = False

    def latents(self, index: int, epoch: int, rng: torch.Generator) -> Members:
        flip = _coin(rng, self.flip)
        return Members(self.cache.latents(index, flip=flip), size_a=self.cache.size_cond(index, flip=flip))


class PreferenceData(_CacheData):
    """DPO and its family: (winner, loser) latents of each preference pair (KTO: desirable, undesirable)."""

    paired = True

    def latents(self, index: int, epoch: int, rng: torch.Generator) -> Members:
        flip = _coin(rng, self.flip)
        win, lose = self.cache.pair_latents(index, flip=flip)
        size_win, size_lose = self.cache.pair_size_cond(index, flip=flip)
        return Members(win, lose, size_win, size_lose)


@dataclass
class SelfPlayData(_CacheData):
    """SPIN: the real latent paired with one of the opponent's samples for the same caption."""

    samples: Any = None
    paired = True

    def latents(self, index: int, epoch: int, rng: torch.Generator) -> Members:
        import torch

        flip = _coin(rng, self.flip)
        real = self.cache.latents(index, flip=flip)
        generated = self.samples.latents(self.cache.ids[index])
        pick = int(torch.randint(0, generated.shape[0], (1,), generator=rng))
        # a generated sample is seen whole at the size it was made: size None
        return Members(real, generated[pick], size_a=self.cache.size_cond(index, flip=flip))


@dataclass
class SelfPlayTrajectoryData(SelfPlayData):
    """spin-exact: the real latent paired with one opponent sample's whole trajectory ``[K+1, ...]``.

    The sample is picked with the same draw as :class:`SelfPlayData`, so both
    SPIN objectives pair an example with the same opponent sample.
    """

    def latents(self, index: int, epoch: int, rng: torch.Generator) -> TrajectoryMembers:
        import torch

        flip = _coin(rng, self.flip)
        real = self.cache.latents(index, flip=flip)
        trajectories = self.samples.trajectory(self.cache.ids[index])
        pick = int(torch.randint(0, trajectories.shape[0], (1,), generator=rng))
        # the real member keeps its cached size and crop (SDXL); the sample was made whole: None
        return TrajectoryMembers(
            real, trajectories[pick], self.samples.schedule, size_a=self.cache.size_cond(index, flip=flip)
        )


def _coin(rng: torch.Generator, enabled: bool) -> bool:
    import torch

    return enabled and bool(torch.rand(1, generator=rng) < 0.5)


def training_data(method: str, cache: Any, flip: bool, samples: Any = None) -> Any:
    """The adapter ``method`` trains on: opponent samples (SPIN; whole trajectories for spin-exact),
    preference pairs (the DPO family) or the real latents alone (SFT)."""
    if method in SELF_PLAY_METHODS:
        kind = SelfPlayTrajectoryData if method == "spin-exact" else SelfPlayData
        return kind(cache, flip=flip, samples=samples)
    if method in PREFERENCE_METHODS:
        return PreferenceData(cache, flip=flip)
    return RealData(cache, flip=flip)
