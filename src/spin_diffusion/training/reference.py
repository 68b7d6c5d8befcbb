"""The reference model's errors: live (a frozen UNet or the adapter-free one) or precomputed.

A precomputed table holds the errors of exactly the micro-batches training
will run, so it gives the same loss as the live reference without keeping a
second model in memory.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from spin_diffusion.errors import CheckpointError
from spin_diffusion.infra.shards import read_shard, shard_metadata_or_none, shard_name, write_shard
from spin_diffusion.training.batches import (
    Batch,
    PairNoise,
    TrainingData,
    batch_conditioning,
    make_batch,
    micro_batch_items,
)

if TYPE_CHECKING:
    import torch

    from spin_diffusion.config.run import TrainingConfig
    from spin_diffusion.model.families import Conditioning, PromptEncoder


class Reference(Protocol):
    def errors(self, batch: Batch, latents: torch.Tensor, emb: Conditioning) -> torch.Tensor:
        """Reference errors for the (doubled) batch, shape ``[2B]``, no gradient."""
        ...


@dataclass
class ModuleReference:
    """A frozen UNet (full fine-tuning) or the trained UNet with adapters disabled (LoRA)."""

    unet: Any
    noise_scheduler: Any
    disable_adapters: bool = False

    def errors(self, batch: Batch, latents: torch.Tensor, emb: Conditioning) -> torch.Tensor:
        import torch

        from spin_diffusion.model.lora import adapters_disabled
        from spin_diffusion.model.prediction import prediction_error

        ctx = adapters_disabled(self.unet) if self.disable_adapters else contextlib.nullcontext()
        reps = len(latents) // len(batch.timesteps)  # 2 for a pair batch, 1 for single images
        t2 = batch.timesteps.repeat(reps)
        eps2 = batch.pair_noise() if reps == 2 else batch.noise  # the pair's noise: shared or one each
        with torch.no_grad(), ctx:
            return prediction_error(
                self.unet, self.noise_scheduler, latents, emb, t2.to(latents.device), eps2.to(latents.device)
            ).float()

    def predict(self, latents: torch.Tensor, timesteps: torch.Tensor, emb: Conditioning) -> torch.Tensor:
        """The reference's raw output at given noisy latents (what DDIM inversion steps with), no gradient."""
        import torch

        from spin_diffusion.model.lora import adapters_disabled

        ctx = adapters_disabled(self.unet) if self.disable_adapters else contextlib.nullcontext()
        dtype = next(self.unet.parameters()).dtype
        kwargs = emb.unet_kwargs(dtype)
        with torch.no_grad(), ctx:
            return self.unet(latents.to(dtype), timesteps, **kwargs).sample.float()


@dataclass
class PrecomputedReference:
    """Reference errors looked up by (epoch, example): no reference model in memory.

    Entries the iteration was not expected to visit are NaN; meeting one means
    the table was made for other steps or settings, which must not pass silently.
    """

    table: torch.Tensor  # [epochs, N, 2] float32: (err_a, err_b), NaN where not computed
    source: str = "the precomputed reference errors"

    def errors(self, batch: Batch, latents: torch.Tensor, emb: Conditioning) -> torch.Tensor:
        import torch

        e = torch.tensor(batch.epoch)
        i = torch.tensor(batch.indices)
        if int(e.max()) >= self.table.shape[0]:
            raise CheckpointError(
                f"{self.source} cover {self.table.shape[0]} epochs; epoch {int(e.max())} asked: "
                "delete the file to recompute it for these steps"
            )
        pair = self.table[e, i]  # [B, 2]
        missing = pair.isnan().any(dim=1)
        if bool(missing.any()):
            k = int(missing.nonzero()[0])
            raise CheckpointError(
                f"{self.source} have no entry for example {int(i[k])} in epoch {int(e[k])} "
                "(made for other steps or settings): delete the file to recompute it"
            )
        return torch.cat([pair[:, 0], pair[:, 1]]).to(latents.device)


@dataclass(frozen=True)
class ReferencePlan:
    """The micro-batches an iteration will run, every rank's, in training's batch layout.

    Precomputing exactly these batches (same items, same order, same size) makes
    the stored errors the numbers a live reference would give, and skips every
    (epoch, example) the steps never reach.
    """

    num_examples: int
    micro_steps: int  # max_steps x accumulation
    batch_size: int
    world_size: int
    seed: int
    pair_noise: PairNoise = "shared"  # the noise each member is scored at (training.pair_noise)

    @classmethod
    def for_training(
        cls, num_examples: int, cfg: TrainingConfig, world_size: int, seed: int
    ) -> ReferencePlan:
        accumulation = cfg.accumulation_steps(world_size)
        return cls(
            num_examples, cfg.max_steps * accumulation, cfg.batch_size, world_size, seed, cfg.pair_noise
        )

    def identity(self) -> dict[str, int | str]:
        """What decides which items are visited, how they are batched and at which noise.

        ``pair_noise`` enters only when it is ``independent``: every table made before the
        setting existed used shared noise and keeps its key (such runs resume without recomputing).
        """
        out: dict[str, int | str] = {
            "num_examples": self.num_examples,
            "micro_steps": self.micro_steps,
            "batch_size": self.batch_size,
            "world_size": self.world_size,
            "seed": self.seed,
        }
        if self.pair_noise != "shared":
            out["pair_noise"] = self.pair_noise
        return out

    @property
    def epochs(self) -> int:
        per_epoch = max(1, self.num_examples // (self.batch_size * self.world_size))
        return (self.micro_steps - 1) // per_epoch + 1

    def micro_batches(self, start: int, end: int) -> list[list[tuple[int, int]]]:
        """Every rank's micro-batch for micro-steps ``start .. end-1``."""
        return [
            micro_batch_items(
                self.num_examples,
                m,
                batch_size=self.batch_size,
                rank=r,
                world_size=self.world_size,
                seed=self.seed,
            )
            for m in range(start, min(end, self.micro_steps))
            for r in range(self.world_size)
        ]


def reference_batch_errors(
    reference: ModuleReference,
    data: TrainingData,
    prompts: PromptEncoder,
    micro_batches: Sequence[Sequence[tuple[int, int]]],
    *,
    seed: int,
    num_train_timesteps: int,
    caption_dropout: float,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
    pair_noise: PairNoise = "shared",
) -> dict[str, torch.Tensor]:
    """Reference errors of whole micro-batches, under the autocast and pair noise training uses.

    Returns ``epoch`` and ``index`` ([M] int64) and ``errors`` ([M, 2] float32).
    """
    import torch

    epochs, indices, errors = [], [], []
    device = next(reference.unet.parameters()).device
    for items in micro_batches:
        batch = make_batch(
            data,
            items,
            seed=seed,
            num_train_timesteps=num_train_timesteps,
            caption_dropout=caption_dropout,
            pair_noise=pair_noise,
        )
        emb = batch_conditioning(prompts, batch)
        lat = torch.cat([batch.latents_a, batch.latents_b]).to(device)
        with autocast():
            err = reference.errors(batch, lat, emb.pair()).float().cpu()
        b = len(items)
        errors.append(torch.stack([err[:b], err[b:]], dim=1))
        epochs.append(torch.tensor(batch.epoch, dtype=torch.long))
        indices.append(torch.tensor(batch.indices, dtype=torch.long))
    return {"epoch": torch.cat(epochs), "index": torch.cat(indices), "errors": torch.cat(errors)}


CHUNK_PREFIX = "chunk"  # chunk-00000.safetensors: the shard store's naming rule with its own prefix


def _chunk_ranges(plan: ReferencePlan, chunk_micro_steps: int) -> list[tuple[int, int, int]]:
    """(chunk number, first micro-step, end micro-step) of every chunk of the plan."""
    starts = range(0, plan.micro_steps, chunk_micro_steps)
    return [(c, s, min(s + chunk_micro_steps, plan.micro_steps)) for c, s in enumerate(starts)]


def _chunk_done(path: Path, key: str, span: str) -> bool:
    """A chunk is done if its file opens completely and was made for this key and span."""
    meta = shard_metadata_or_none(path)  # None: missing or damaged, compute it again
    return meta is not None and meta.get("key") == key and meta.get("micro_steps") == span


def _chunk_size_in_use(chunk_dir: Path, key: str) -> int | None:
    """The chunk size of an earlier precompute for the same key, read from its first chunk's span.

    Keeping it when the step count changed (a resume with more steps) leaves the
    finished chunks' spans unchanged, so only chunks past them are computed.
    """
    meta = shard_metadata_or_none(chunk_dir / shard_name(0, CHUNK_PREFIX))
    if meta is None:  # none yet, or damaged: choose afresh
        return None
    start, _, end = meta.get("micro_steps", "").partition(":")
    if meta.get("key") != key or start != "0" or not end.isdigit() or int(end) < 1:
        return None
    return int(end)


def precompute_reference_errors(
    reference: ModuleReference,
    data: TrainingData,
    prompts: PromptEncoder,
    *,
    plan: ReferencePlan,
    chunk_dir: Path,
    key: dict[str, Any],
    num_train_timesteps: int,
    caption_dropout: float,
    rank: int = 0,
    barrier: Callable[[], Any] | None = None,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
    chunk_micro_steps: int | None = None,
    show_progress: bool = True,
) -> torch.Tensor:
    """Reference errors of every item the plan visits (NaN elsewhere), split across ranks, resumable.

    The plan's micro-steps are cut into chunks; chunk ``c`` is computed by rank
    ``c % world_size`` and written to ``chunk_dir`` on its own, so an interrupted
    precompute redoes only missing chunks, and one for more steps (a resume
    after the step count was raised) computes only the chunks it lacks (a
    last, shorter chunk is made again at full length). After ``barrier()`` every rank merges all chunks into the dense
    ``[epochs, N, 2]`` table. Chunks hold at most 64 micro-steps, fewer when
    that is needed to give every rank a share, and keep the size they were
    first made with.
    """
    from tqdm.auto import tqdm

    chunk_dir = Path(chunk_dir)
    chunk_dir.mkdir(parents=True, exist_ok=True)
    layout = {k: v for k, v in plan.identity().items() if k != "micro_steps"}  # a chunk records its own span
    chunk_key = json.dumps(
        {**key, **layout, "num_train_timesteps": num_train_timesteps, "caption_dropout": caption_dropout},
        sort_keys=True,
        default=str,
    )
    if chunk_micro_steps is None:
        chunk_micro_steps = _chunk_size_in_use(chunk_dir, chunk_key) or max(
            1, min(64, math.ceil(plan.micro_steps / plan.world_size))
        )
    chunks = _chunk_ranges(plan, chunk_micro_steps)
    todo = [
        (c, s, e)
        for c, s, e in chunks
        if c % plan.world_size == rank
        and not _chunk_done(chunk_dir / shard_name(c, CHUNK_PREFIX), chunk_key, f"{s}:{e}")
    ]
    for c, s, e in tqdm(todo, desc="reference errors", unit="chunk", disable=not show_progress):
        part = reference_batch_errors(
            reference,
            data,
            prompts,
            plan.micro_batches(s, e),
            seed=plan.seed,
            num_train_timesteps=num_train_timesteps,
            caption_dropout=caption_dropout,
            autocast=autocast,
            pair_noise=plan.pair_noise,
        )
        meta = {"key": chunk_key, "micro_steps": f"{s}:{e}", "rank": str(rank)}
        write_shard(chunk_dir / shard_name(c, CHUNK_PREFIX), part, meta)
    if barrier is not None:
        barrier()
    return merge_reference_chunks(chunk_dir, chunks, plan)


def merge_reference_chunks(
    chunk_dir: Path, chunks: Sequence[tuple[int, int, int]], plan: ReferencePlan
) -> torch.Tensor:
    """The dense table from the chunk files: NaN for every (epoch, example) no step visits."""
    import torch

    table = torch.full((plan.epochs, plan.num_examples, 2), float("nan"))
    for c, _, _ in chunks:
        path = Path(chunk_dir) / shard_name(c, CHUNK_PREFIX)
        try:
            part = read_shard(path)
        except Exception as exc:  # noqa: BLE001 - another rank failed or the file is damaged
            raise CheckpointError(f"reference errors chunk {path} is missing or damaged ({exc})") from None
        table[part["epoch"], part["index"]] = part["errors"]
    return table
