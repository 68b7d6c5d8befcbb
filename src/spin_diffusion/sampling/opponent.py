"""The opponent's samples: generated per prompt, stored as latent shards plus a manifest, read lazily.

Each sample's starting noise comes from its own seed, derived from (run seed,
prompt id, sample index), so the same prompt gives the same latents whatever
the batch size, the shard layout or the number of processes. The samples are
stored as latents in the shard store (:mod:`spin_diffusion.infra.shards`; by
default re-encoded through an 8-bit image, so they live where the real
latents live); a shard is the unit of resume.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spin_diffusion.errors import CheckpointError
from spin_diffusion.infra.atomic import save_image_atomic, write_json_atomic
from spin_diffusion.infra.interrupt import StopFlag
from spin_diffusion.infra.seeds import sample_seed
from spin_diffusion.infra.shards import (
    identity_changes,
    read_shard,
    shard_name,
    write_shard,
)
from spin_diffusion.model.families import denoiser_of, set_denoiser
from spin_diffusion.sampling.generate import (
    SamplingInterrupted,
    decode_latents,
    generate_latents,
    image_grid,
    reencode_latents,
    use_scheduler,
)
from spin_diffusion.sampling.samples import MANIFEST, OpponentSamples, shard_problem

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

    from spin_diffusion.config.sampling import SamplingConfig
    from spin_diffusion.sampling.trajectories import SolverSchedule

log = logging.getLogger(__name__)

SETTINGS = "settings.json"


def prompts_fingerprint(ids: Sequence[str], captions: Sequence[str]) -> str:
    h = hashlib.blake2b(digest_size=8)
    for i, c in zip(ids, captions, strict=True):
        h.update(f"{i}\x00{c}\x01".encode())
    return h.hexdigest()


@dataclass
class _Plan:
    """What one sampling call must produce: its identity, shards, and the settings every shard uses."""

    out_dir: Path
    ids: Sequence[str]
    captions: Sequence[str]
    settings: SamplingConfig
    seed: int
    identity: dict[str, Any]
    shards: list[tuple[int, int]]  # (shard number, first prompt)
    schedule: SolverSchedule | None

    @property
    def n(self) -> int:
        return self.settings.num_samples_per_prompt

    @property
    def points(self) -> int | None:
        return None if self.schedule is None else self.schedule.num_steps + 1

    def bad_shards(self, shards: Sequence[tuple[int, int]]) -> list[tuple[int, str]]:
        return _bad_shards(self.out_dir, shards, self.ids, self.settings.shard_size, self.n, self.points)


def sample_opponent(
    pipe: DiffusionPipeline,
    ids: Sequence[str],
    captions: Sequence[str],
    settings: SamplingConfig,
    out_dir: Path,
    *,
    seed: int,
    model_fingerprint: str,
    rank: int = 0,
    world_size: int = 1,
    barrier: Any | None = None,
    show_progress: bool = True,
    trajectory: bool = False,
) -> OpponentSamples | None:
    """Generate ``n`` samples per prompt into ``out_dir`` as latent shards plus a manifest.

    Resumable: complete shards are kept, a complete directory is a no-op (a
    missing or truncated shard in it is sampled again), and a directory made
    with other settings or another model is refused. With several processes,
    shard ``i`` belongs to rank ``i % world_size``; rank 0 writes the manifest
    after ``barrier()``. SIGINT/SIGTERM stop it after the current batch with
    :class:`SamplingInterrupted`. Returns the samples (all ranks). With
    ``trajectory`` (the exact SPIN objective) every solver point is stored too,
    fp32 in the same memory-mapped shards, and the solver schedule joins the
    samples' identity and the manifest.
    """
    plan = _plan(pipe, ids, captions, settings, Path(out_dir), seed, model_fingerprint, trajectory)
    if _complete_or_reset(plan, rank):
        return OpponentSamples(plan.out_dir)
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        settings_path = plan.out_dir / SETTINGS
        saved = _read_record(settings_path, "sampler")
        if saved is not None:
            _check_same(saved, plan.identity, plan.out_dir)
        else:
            if settings_path.is_file():  # damaged: the shards' settings are unknown, so they go too
                log.warning("%s is damaged; sampling again", settings_path)
                for shard in plan.out_dir.glob("shard-*.safetensors"):
                    shard.unlink()
            write_json_atomic(settings_path, plan.identity)
    if barrier is not None:
        barrier()
    elapsed = _sample_shards(pipe, plan, rank, world_size, show_progress, trajectory)
    if barrier is not None:
        barrier()
    if rank == 0:
        _write_previews(pipe, plan.out_dir, ids, settings.num_previews)
        _write_manifest(plan, elapsed, world_size)
    if barrier is not None:
        barrier()
    return OpponentSamples(plan.out_dir)


def _plan(
    pipe: DiffusionPipeline,
    ids: Sequence[str],
    captions: Sequence[str],
    settings: SamplingConfig,
    out_dir: Path,
    seed: int,
    model_fingerprint: str,
    trajectory: bool,
) -> _Plan:
    """The samples' identity (what makes stored samples reusable) and their shard layout."""
    identity = {
        "model_fingerprint": model_fingerprint,
        "prompts_fingerprint": prompts_fingerprint(ids, captions),
        "num_prompts": len(ids),
        "seed": seed,
        "sampler": settings.model_dump(mode="json", exclude={"batch_size", "num_previews"}),
    }
    schedule = None
    if trajectory:
        from spin_diffusion.sampling.trajectories import solver_schedule

        use_scheduler(pipe, settings.scheduler)
        schedule = solver_schedule(pipe.scheduler, settings.num_inference_steps)
        identity["trajectory"] = schedule.as_json()  # absent for final-latent samples: older dirs still match
    shards = [(i, s) for i, s in enumerate(range(0, len(ids), settings.shard_size))]
    return _Plan(out_dir, ids, captions, settings, seed, identity, shards, schedule)


def _complete_or_reset(plan: _Plan, rank: int) -> bool:
    """True if ``out_dir`` already holds these samples; otherwise drop a stale manifest (rank 0)."""
    if not (plan.out_dir / MANIFEST).is_file():
        return False
    done = _read_record(plan.out_dir / MANIFEST, "identity")
    if done is None:  # damaged: sampling is resumable and deterministic, so a resample, not a traceback
        if rank == 0:
            log.warning("%s is damaged; sampling again", plan.out_dir / MANIFEST)
            (plan.out_dir / MANIFEST).unlink(missing_ok=True)
        return False
    _check_same(done["identity"], plan.identity, plan.out_dir)
    bad = plan.bad_shards(plan.shards)
    if not bad:
        return True
    if rank == 0:
        log.warning(
            "%s: %s; sampling %s again",
            plan.out_dir,
            bad[0][1],
            "it" if len(bad) == 1 else f"{len(bad)} shards",
        )
        (plan.out_dir / MANIFEST).unlink(missing_ok=True)
    return False


def _read_record(path: Path, key: str) -> dict[str, Any] | None:
    """The JSON object in ``path`` holding ``key``; None when it is absent or damaged."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) and key in data else None


def _sample_shards(
    pipe: DiffusionPipeline, plan: _Plan, rank: int, world_size: int, show_progress: bool, trajectory: bool
) -> float:
    """Sample this rank's missing shards; returns the seconds it took."""
    import torch
    from tqdm.auto import tqdm

    settings = plan.settings
    use_scheduler(pipe, settings.scheduler)
    if settings.compile:
        set_denoiser(pipe, torch.compile(denoiser_of(pipe)))
    mine = [(i, s) for i, s in plan.shards if i % world_size == rank]
    bad = {i for i, _ in plan.bad_shards(mine)}
    todo = [(i, s) for i, s in mine if i in bad]
    total = sum(min(settings.shard_size, len(plan.ids) - s) for _, s in todo) * plan.n
    started = time.perf_counter()
    with (
        StopFlag() as stop,
        tqdm(
            total=total, desc="sampling opponent", unit="img", disable=not show_progress or rank != 0
        ) as bar,
    ):
        for i, start in todo:
            try:
                if stop():  # a signal that came while the previous shard was saved
                    raise SamplingInterrupted("sampling interrupted")
                _sample_shard(pipe, plan, i, start, bar, stop, trajectory)
            except SamplingInterrupted:
                raise SamplingInterrupted(_interrupted_message(plan.out_dir, len(plan.shards))) from None
        if stop():
            raise SamplingInterrupted(_interrupted_message(plan.out_dir, len(plan.shards)))
    return time.perf_counter() - started


def _sample_shard(
    pipe: DiffusionPipeline, plan: _Plan, i: int, start: int, bar: Any, stop: Any, trajectory: bool
) -> None:
    """Generate and write shard ``i`` (prompts ``start ..``): fp16 latents, fp32 trajectories."""
    import torch

    settings, n = plan.settings, plan.n
    shard_ids = list(plan.ids[start : start + settings.shard_size])
    shard_caps = list(plan.captions[start : start + settings.shard_size])
    prompts = [c for c in shard_caps for _ in range(n)]
    seeds = [sample_seed(plan.seed, pid, j) for pid in shard_ids for j in range(n)]
    lat = generate_latents(
        pipe,
        prompts,
        seeds,
        num_inference_steps=settings.num_inference_steps,
        guidance_scale=settings.guidance_scale,
        eta=settings.eta,
        batch_size=settings.batch_size,
        progress=bar,
        stop=stop,
        trajectory=trajectory,
    )
    tensors = {}
    if trajectory:
        tensors["trajectory"] = lat.reshape(len(shard_ids), n, *lat.shape[1:]).contiguous()
        lat = lat[:, -1]
    if settings.latents == "reencoded":
        lat = reencode_latents(pipe, lat, settings.batch_size)
    tensors["latents"] = lat.reshape(len(shard_ids), n, *lat.shape[1:]).to(torch.float16).contiguous()
    write_shard(plan.out_dir / shard_name(i), tensors, {"ids": json.dumps(shard_ids)})


def _write_manifest(plan: _Plan, elapsed: float, world_size: int) -> None:
    size = plan.settings.shard_size
    manifest = {
        "identity": plan.identity,
        "num_prompts": len(plan.ids),
        "samples_per_prompt": plan.n,
        "shards": [{"file": shard_name(i), "ids": list(plan.ids[s : s + size])} for i, s in plan.shards],
        "seconds_this_process": round(elapsed, 2),
        "world_size": world_size,
    }
    if plan.schedule is not None:
        manifest["trajectory"] = plan.schedule.as_json()
    write_json_atomic(plan.out_dir / MANIFEST, manifest)


def _bad_shards(
    out_dir: Path,
    shards: Sequence[tuple[int, int]],
    ids: Sequence[str],
    shard_size: int,
    n: int,
    trajectory_points: int | None = None,
) -> list[tuple[int, str]]:
    """The shards (number, reason) that must be sampled (again): missing, truncated or not these prompts."""
    bad = []
    for i, start in shards:
        path = out_dir / shard_name(i)
        problem = shard_problem(path, ids[start : start + shard_size], n, trajectory_points)
        if problem is not None:
            bad.append((i, f"{path.name} {problem}"))
    return bad


def _interrupted_message(out_dir: Path, total: int) -> str:
    complete = sum(1 for _ in out_dir.glob("shard-*.safetensors"))
    return (
        f"interrupted while sampling the opponent; {complete} of {total} shards are complete in {out_dir}; "
        "run the same command to resume"
    )


def _check_same(saved: dict[str, Any], current: dict[str, Any], out_dir: Path) -> None:
    diff = identity_changes(saved, current)
    if diff:
        raise CheckpointError(
            f"{out_dir} was sampled with different {', '.join(diff)}; delete it together with the "
            f"iteration's checkpoints ({out_dir.parent / 'checkpoints'}, trained on these samples), "
            "or use a new run name"
        )


def _write_previews(pipe: DiffusionPipeline, out_dir: Path, ids: Sequence[str], count: int) -> None:
    """Decode the first few samples into previews.png so a person can look at the opponent."""
    import torch

    if count <= 0 or not ids:
        return
    lat = read_shard(out_dir / shard_name(0))["latents"][:, 0][:count].to(torch.float32)
    images = decode_latents(pipe, lat)
    save_image_atomic(image_grid(images, cols=min(8, len(images))), out_dir / "previews.png")
