"""What one training micro-batch holds, and which examples it takes.

Every random choice of a training example (its timestep, noise, caption
dropout, which opponent sample it is paired with) comes from a seed derived
from (run seed, example index, epoch), and the order of examples from a seeded
per-epoch permutation: a run resumes exactly from a micro-step count, and the
reference errors can be computed ahead of time with identical results.

A pair's two members share one timestep always, and one noise draw under
``pair_noise="shared"`` (the Diffusion-DPO habit); under ``"independent"`` (the
SPIN paper's eq. 4.9) the second member gets its own draw, taken from the same
example generator after every other draw, so the timestep, the first member's
noise and the caption dropout are the same numbers in both settings.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

from spin_diffusion.infra.seeds import example_seed

if TYPE_CHECKING:
    import torch

    from spin_diffusion.model.families import Conditioning, PromptEncoder, SizeCond
    from spin_diffusion.sampling.trajectories import SolverSchedule


PairNoise = Literal["shared", "independent"]


@dataclass(frozen=True)
class Members:
    """One example's latents and, where known, each image's size and crop (SDXL's ``add_time_ids``).

    A size of None means "seen whole at the trained size" (a generated sample).
    Data that draws which image an example slot shows (KTO's desirable ratio)
    also returns that image's ``caption`` and its ``label`` (1 desirable, 0 not).
    """

    a: torch.Tensor
    b: torch.Tensor | None = None
    size_a: SizeCond | None = None
    size_b: SizeCond | None = None
    caption: str | None = None
    label: int | None = None


@dataclass(frozen=True)
class TrajectoryMembers:
    """spin-exact's example: the real latent and one opponent sample's whole trajectory ``[K+1, ...]``.

    ``schedule`` is the solver schedule the trajectory was sampled on; the
    sample was made whole at the trained size, so it has no size of its own.
    """

    a: torch.Tensor
    trajectory: torch.Tensor
    schedule: SolverSchedule
    size_a: SizeCond | None = None


class TrainingData(Protocol):
    """What the loop trains on: per example a caption and one latent (SFT) or a pair (DPO, SPIN)."""

    paired: bool

    def __len__(self) -> int: ...

    def caption(self, index: int) -> str: ...

    def latents(self, index: int, epoch: int, rng: torch.Generator) -> Members | TrajectoryMembers:
        """a = real/winner latent, b = generated/loser latent (None for SFT), with each image's size and
        crop; a :class:`TrajectoryMembers` carries the opponent's whole trajectory instead of ``b``."""
        ...


@dataclass(frozen=True)
class Trajectory:
    """The opponent's sampling paths of a batch (spin-exact), in place of a second latent per example."""

    points: torch.Tensor  # [B, K+1, C, h, w]: x_T ... x_0 as the solver produced them
    schedule: SolverSchedule
    step_order: torch.Tensor  # [B, K]: a seeded permutation of the steps per example


@dataclass
class Batch:
    """A micro-batch: ``latents_b`` is the second member of a pair (None for SFT and for trajectory
    batches, whose generated side is ``trajectory``)."""

    indices: list[int]
    epoch: list[int]
    captions: list[str]
    latents_a: torch.Tensor
    latents_b: torch.Tensor | None
    timesteps: torch.Tensor
    noise: torch.Tensor  # the first (real / winner) member's noise; the second's too when shared
    size_cond_a: list[SizeCond | None] = field(default_factory=list)  # per example; None: the trained size
    size_cond_b: list[SizeCond | None] = field(default_factory=list)
    trajectory: Trajectory | None = None
    labels: torch.Tensor | None = None  # [B] per-image labels (KTO on single labelled images)
    noise_b: torch.Tensor | None = None  # the second member's own noise (pair_noise: independent)

    @property
    def paired(self) -> bool:
        """Whether each example has a second member: a latent or a trajectory."""
        return self.latents_b is not None or self.trajectory is not None

    def pair_noise(self) -> torch.Tensor:
        """The noise of the doubled batch ``[a; b]``: the second half is ``noise_b`` when it has its own."""
        import torch

        return torch.cat([self.noise, self.noise if self.noise_b is None else self.noise_b])


def make_batch(
    data: TrainingData,
    items: Sequence[tuple[int, int]],
    *,
    seed: int,
    num_train_timesteps: int,
    caption_dropout: float = 0.0,
    pair_noise: PairNoise = "shared",
) -> Batch:
    """Assemble a batch of (index, epoch) items with per-item seeded t, noise and choices.

    An item with a trajectory (:class:`TrajectoryMembers`) also gets a seeded
    order of its solver steps, drawn last so the other draws do not change.
    ``pair_noise="independent"`` gives a pair's second latent its own noise
    (drawn after all of that); a trajectory's generated member has no noise
    draw (its noisy latents are the sampler's own), so there it changes nothing.
    """
    import torch

    if pair_noise not in ("shared", "independent"):
        raise ValueError(f"pair_noise must be 'shared' or 'independent', got {pair_noise!r}")
    caps, lat_a, lat_b, ts, noises, size_a, size_b, orders, labels = [], [], [], [], [], [], [], [], []
    paths, schedule, noises_b = [], None, []
    for index, epoch in items:
        gen = torch.Generator().manual_seed(example_seed(seed, index, epoch))
        got = data.latents(index, epoch, gen)
        caption = None
        if isinstance(got, TrajectoryMembers):
            a, b, schedule = got.a.float(), None, got.schedule
            paths.append(got.trajectory.float())
            size_a.append(got.size_a)
            size_b.append(None)
        else:
            a, b, caption = got.a.float(), got.b, got.caption
            size_a.append(got.size_a)
            size_b.append(got.size_b)
            if got.label is not None:
                labels.append(got.label)
        t = int(torch.randint(0, num_train_timesteps, (1,), generator=gen))
        noise = torch.randn(a.shape, generator=gen)
        drop = caption_dropout > 0 and float(torch.rand(1, generator=gen)) < caption_dropout
        caps.append("" if drop else (caption if caption is not None else data.caption(index)))
        lat_a.append(a)
        if b is not None:
            lat_b.append(b.float())
        ts.append(t)
        noises.append(noise)
        if isinstance(got, TrajectoryMembers):
            orders.append(torch.randperm(got.schedule.num_steps, generator=gen))
        if pair_noise == "independent" and b is not None:
            noises_b.append(torch.randn(b.shape, generator=gen))
    return Batch(
        indices=[i for i, _ in items],
        epoch=[e for _, e in items],
        captions=caps,
        latents_a=torch.stack(lat_a),
        latents_b=torch.stack(lat_b) if lat_b else None,
        timesteps=torch.tensor(ts, dtype=torch.long),
        noise=torch.stack(noises),
        size_cond_a=size_a,
        size_cond_b=size_b,
        trajectory=Trajectory(torch.stack(paths), schedule, torch.stack(orders)) if paths else None,
        labels=torch.tensor(labels, dtype=torch.long) if labels else None,
        noise_b=torch.stack(noises_b) if noises_b else None,
    )


def micro_batch_items(
    num_examples: int, micro_step: int, *, batch_size: int, rank: int, world_size: int, seed: int
) -> list[tuple[int, int]]:
    """The (index, epoch) items of one process's micro-batch number ``micro_step``.

    Each epoch is a seeded permutation; a global micro-batch takes
    ``batch_size * world_size`` consecutive entries and each rank its slice.
    A dataset smaller than a global batch is tiled. Pure: resuming needs only
    the micro-step count.
    """
    global_batch = batch_size * world_size
    per_epoch = max(1, num_examples // global_batch)
    epoch, pos = divmod(micro_step, per_epoch)
    perm = _epoch_permutation(num_examples, epoch, seed)
    if num_examples < global_batch:
        perm = perm.repeat(math.ceil(global_batch / num_examples))
    start = pos * global_batch + rank * batch_size
    return [(int(i), epoch) for i in perm[start : start + batch_size]]


@functools.lru_cache(maxsize=4)
def _epoch_permutation(num_examples: int, epoch: int, seed: int) -> torch.Tensor:
    """One epoch's seeded order, cached: planning a precompute asks for it once per micro-step."""
    import torch

    return torch.randperm(
        num_examples, generator=torch.Generator().manual_seed(example_seed(seed, -1, epoch))
    )


def batch_conditioning(prompts: PromptEncoder, batch: Batch) -> Conditioning:
    """The conditioning of a training batch: its captions, and each member's recorded size and crop."""
    pair = (batch.size_cond_b or None) if batch.paired else None
    return prompts.encode(
        batch.captions,
        batch.size_cond_a or None,
        latent_hw=tuple(batch.latents_a.shape[-2:]),
        pair_sizes=pair,
    )
