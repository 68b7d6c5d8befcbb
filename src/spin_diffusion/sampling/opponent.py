"""Batched, deterministic generation: opponent latents for training, images for evaluation.

Each sample's starting noise comes from its own seed, derived from (run seed,
prompt id, sample index), so the same prompt gives the same latents whatever
the batch size, the shard layout or the number of processes. The opponent's
samples are stored as latents in safetensors shards (by default re-encoded
through an 8-bit image, so they live where the real latents live); a shard is
the unit of resume.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spin_diffusion.errors import CheckpointError
from spin_diffusion.infra.atomic import atomic_file, save_image_atomic, write_json_atomic
from spin_diffusion.infra.compact import CompactStrings, StringIndex
from spin_diffusion.infra.interrupt import Interrupted, StopFlag
from spin_diffusion.infra.seeds import sample_seed

if TYPE_CHECKING:
    import torch
    from diffusers import DiffusionPipeline
    from PIL import Image

    from spin_diffusion.config.run import SamplingConfig
    from spin_diffusion.sampling.trajectories import SolverSchedule

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
SETTINGS = "settings.json"


class SamplingInterrupted(Interrupted):
    """SIGINT/SIGTERM during sampling: complete shards are kept; the same command resumes (exit 130)."""


def use_scheduler(pipe: DiffusionPipeline, name: str) -> None:
    """Swap the sampling scheduler, keeping the model's noise schedule and prediction type."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler

    config = pipe.scheduler.config
    if name == "dpmsolver++":
        pipe.scheduler = DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++")
    elif name == "ddim":
        pipe.scheduler = DDIMScheduler.from_config(config)
    elif name == "euler":
        pipe.scheduler = EulerDiscreteScheduler.from_config(config)
    elif name != "pipeline":
        raise ValueError(f"unknown scheduler {name!r}")


def generate_latents(
    pipe: DiffusionPipeline,
    prompts: Sequence[str],
    seeds: Sequence[int],
    *,
    num_inference_steps: int = 20,
    guidance_scale: float = 7.5,
    eta: float = 0.0,
    batch_size: int = 16,
    progress: Any | None = None,
    stop: Callable[[], bool] | None = None,
    trajectory: bool = False,
) -> torch.Tensor:
    """Final latents (the UNet's latent space, fp32) for each (prompt, seed), in batches.

    Classifier-free guidance runs as one doubled batch inside the pipeline.
    ``stop`` is asked after every batch; when it says so, :class:`SamplingInterrupted`
    is raised and the partial result is dropped. With ``trajectory`` the result
    is every solver point instead, ``[N, K+1, C, h, w]`` from the starting noise
    to the final latent (captured with ``callback_on_step_end``; the same
    samples as without it).
    """
    import torch

    if len(prompts) != len(seeds):
        raise ValueError("prompts and seeds must have the same length")
    out = []
    params = _call_parameters(pipe)
    extra: dict[str, Any] = {"eta": eta} if "eta" in params else {}
    if trajectory and "callback_on_step_end" not in params:
        raise ValueError(f"{type(pipe).__name__} has no callback_on_step_end: cannot store trajectories")
    with torch.inference_mode(), _quiet_diffusers():
        for start in range(0, len(prompts), batch_size):
            batch_prompts = list(prompts[start : start + batch_size])
            gens = [torch.Generator(device="cpu").manual_seed(s) for s in seeds[start : start + batch_size]]
            points: list[torch.Tensor] = []
            if trajectory:
                extra.update(_trajectory_capture(pipe, gens, points))
            result = pipe(
                prompt=batch_prompts,
                num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale,
                generator=gens,
                output_type="latent",
                **extra,
            )
            out.append(torch.stack(points, dim=1) if trajectory else result.images.float().cpu())
            if progress is not None:
                progress.update(len(batch_prompts))
            if stop is not None and stop():
                raise SamplingInterrupted("sampling interrupted")
    return torch.cat(out) if out else torch.empty(0)


def _trajectory_capture(
    pipe: DiffusionPipeline, gens: Sequence[Any], points: list[torch.Tensor]
) -> dict[str, Any]:
    """Pipeline arguments that record every solver point into ``points`` (fp32, CPU).

    The starting noise is drawn here with diffusers' ``randn_tensor`` from the
    same per-sample generators and handed in as ``latents``, exactly as the
    pipeline would draw it, so it can be stored; every later point is the
    ``latents`` the pipeline passes to ``callback_on_step_end``.
    """
    from diffusers.utils.torch_utils import randn_tensor

    size = pipe.unet.config.sample_size
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    encoder = getattr(pipe, "text_encoder", None)
    dtype = encoder.dtype if encoder is not None else pipe.unet.dtype
    shape = (len(gens), pipe.unet.config.in_channels, h, w)
    noise = randn_tensor(shape, generator=list(gens), device=pipe.unet.device, dtype=dtype)
    points.append((noise * pipe.scheduler.init_noise_sigma).float().cpu())

    def record(_pipe: Any, _step: int, _t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        points.append(tensors["latents"].float().cpu())
        return tensors

    return {
        "latents": noise,
        "callback_on_step_end": record,
        "callback_on_step_end_tensor_inputs": ["latents"],
    }


@contextlib.contextmanager
def _quiet_diffusers() -> Iterator[None]:
    """Silence the pipeline's per-batch warnings (it prints every truncated prompt of every batch)."""
    from diffusers.utils import logging as dlogging

    level = dlogging.get_verbosity()
    dlogging.set_verbosity_error()
    try:
        yield
    finally:
        dlogging.set_verbosity(level)


def _call_parameters(pipe: DiffusionPipeline) -> set[str]:
    import inspect

    return set(inspect.signature(pipe.__call__).parameters)


def decode_latents(pipe: DiffusionPipeline, latents: torch.Tensor, batch_size: int = 16) -> list[Image.Image]:
    """Latents -> PIL images (only for previews and evaluation; training never decodes)."""
    import torch

    vae = pipe.vae
    images: list[Image.Image] = []
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    with torch.inference_mode():
        for start in range(0, len(latents), batch_size):
            z = latents[start : start + batch_size].to(vae.device, vae.dtype)
            x = vae.decode(z / vae.config.scaling_factor + shift).sample
            images.extend(pipe.image_processor.postprocess(x.float(), output_type="pil"))
    return images


def reencode_latents(pipe: DiffusionPipeline, latents: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Decode -> 8-bit image -> encode, with the encoder call that made the real latents.

    A sampler's final latent is not what the encoder returns for the image it
    decodes to (on the toy world the VAE round-trip error is ~10x that of an
    encoded real image), so comparing raw samples with encoded real images
    lets the discriminator win on latent statistics the decoder never shows.
    The 8-bit quantisation is the one ``image_processor.postprocess`` applies
    when a sample is saved as an image file.
    """
    import torch

    from spin_diffusion.data.latents import encode_pixels, latent_scaling

    vae = pipe.vae
    scale, shift = latent_scaling(vae)
    out = []
    with torch.inference_mode():
        for start in range(0, len(latents), batch_size):
            z = latents[start : start + batch_size].to(vae.device, vae.dtype)
            x = vae.decode(z / scale + (shift or 0.0)).sample.float()
            pixels = ((x / 2 + 0.5).clamp(0, 1) * 255).round() / 127.5 - 1.0
            out.append(encode_pixels(vae, pixels))
    return torch.cat(out) if out else latents.float()


def generate_images(
    pipe: DiffusionPipeline,
    prompts: Sequence[str],
    seeds: Sequence[int],
    *,
    num_inference_steps: int = 20,
    guidance_scale: float = 7.5,
    batch_size: int = 16,
    eta: float = 0.0,
) -> list[Image.Image]:
    """PIL images for each (prompt, seed): the evaluation harness's generator."""
    latents = generate_latents(
        pipe,
        prompts,
        seeds,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        eta=eta,
        batch_size=batch_size,
    )
    return decode_latents(pipe, latents, batch_size)


def image_grid(images: Sequence[Image.Image], cols: int) -> Image.Image:
    """Tile images row-major into one picture."""
    from PIL import Image

    if not images:
        raise ValueError("no images to tile")
    w, h = images[0].size
    rows = (len(images) + cols - 1) // cols
    grid = Image.new("RGB", (cols * w, rows * h), "white")
    for i, img in enumerate(images):
        grid.paste(img.convert("RGB"), ((i % cols) * w, (i // cols) * h))
    return grid


def prompts_fingerprint(ids: Sequence[str], captions: Sequence[str]) -> str:
    h = hashlib.blake2b(digest_size=8)
    for i, c in zip(ids, captions, strict=True):
        h.update(f"{i}\x00{c}\x01".encode())
    return h.hexdigest()


class OpponentSamples:
    """The opponent's latents for every prompt id, read lazily from a complete sample directory.

    Only the manifest is read up front (an index id -> (shard, row)); a shard is
    memory-mapped the first time one of its prompts is asked for, so memory does
    not grow with the number of samples.
    """

    max_open_shards = 64

    def __init__(self, out_dir: Path):
        self.dir = Path(out_dir)
        manifest_path = self.dir / MANIFEST
        if not manifest_path.is_file():
            raise CheckpointError(f"{self.dir} has no {MANIFEST}: sampling did not finish")
        manifest = json.loads(manifest_path.read_text())
        shards = manifest.pop("shards")  # the id lists are kept compactly below, not as JSON lists
        self.manifest = manifest
        self._files: list[str] = [shard["file"] for shard in shards]
        self._ids = CompactStrings.concat(shard["ids"] for shard in shards)
        self._starts = [0]
        for shard in shards:
            self._starts.append(self._starts[-1] + len(shard["ids"]))
        del shards
        self._index = StringIndex(self._ids)
        distinct = self._index.distinct()
        if distinct != manifest["num_prompts"]:
            raise CheckpointError(
                f"{self.dir}: manifest lists {manifest['num_prompts']} prompts, shards hold {distinct}"
            )
        self._handles: OrderedDict[int, Any] = OrderedDict()

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def ids(self) -> CompactStrings:
        """The prompt ids, in shard order (the manifest's id lists are not kept)."""
        return self._ids

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()  # memory maps do not cross process boundaries
        state["_handles"] = OrderedDict()
        return state

    def latents(self, prompt_id: str) -> torch.Tensor:
        """All samples for one prompt: ``[n, C, h, w]`` (fp16 as stored)."""
        pos = self._index.find(prompt_id)
        if pos is None:
            raise CheckpointError(f"{self.dir} has no samples for prompt id {prompt_id!r}")
        s = bisect_right(self._starts, pos) - 1
        row = pos - self._starts[s]
        return self._shard(s).get_slice("latents")[row : row + 1][0]

    @property
    def schedule(self) -> SolverSchedule | None:
        """The solver schedule of the stored trajectories, or None when only final latents were kept."""
        from spin_diffusion.sampling.trajectories import SolverSchedule

        stored = self.manifest.get("trajectory")
        return None if stored is None else SolverSchedule.from_json(stored)

    def trajectory(self, prompt_id: str) -> torch.Tensor:
        """Every solver point of all samples for one prompt: ``[n, K+1, C, h, w]`` fp32, noise first."""
        if self.schedule is None:
            raise CheckpointError(f"{self.dir} holds no trajectories (sampled for a method that needs none)")
        pos = self._index.find(prompt_id)
        if pos is None:
            raise CheckpointError(f"{self.dir} has no samples for prompt id {prompt_id!r}")
        s = bisect_right(self._starts, pos) - 1
        return self._shard(s).get_slice("trajectory")[pos - self._starts[s] : pos - self._starts[s] + 1][0]

    def _shard(self, s: int) -> Any:
        if s in self._handles:
            self._handles.move_to_end(s)
            return self._handles[s]
        path = self.dir / self._files[s]
        ids = self._ids[self._starts[s] : self._starts[s + 1]]
        schedule = self.schedule
        points = None if schedule is None else schedule.num_steps + 1
        problem = shard_problem(path, ids, self.manifest.get("samples_per_prompt"), points)
        if problem is not None:
            raise CheckpointError(f"{path} {problem}; run the same command to sample it again")
        self._handles[s] = _open_shard(path)
        if len(self._handles) > self.max_open_shards:
            self._handles.popitem(last=False)
        return self._handles[s]


def _open_shard(path: Path) -> Any:
    """A memory-mapped view of one shard (nothing is read until a slice is asked for)."""
    from safetensors import safe_open

    return safe_open(str(path), framework="pt")


def shard_problem(
    path: Path, ids: Sequence[str], samples_per_prompt: int | None, trajectory_points: int | None = None
) -> str | None:
    """Why a shard cannot be used (missing, truncated, other prompts or shape), or None.

    The reason reads after the file name: "shard-00003.safetensors is missing".
    With ``trajectory_points`` the shard must also hold trajectories of that many points.
    """
    if not path.is_file():
        return "is missing"
    try:
        handle = _open_shard(path)
        stored = json.loads((handle.metadata() or {}).get("ids", "null"))
        shape = handle.get_slice("latents").get_shape()
        traj_shape = handle.get_slice("trajectory").get_shape() if trajectory_points is not None else None
    except Exception as exc:  # noqa: BLE001 - safetensors reports a torn file as a header error
        return f"is unreadable ({exc})"
    if stored != list(ids):
        return "holds other prompts than the manifest lists"
    if shape[0] != len(ids) or (samples_per_prompt is not None and shape[1] != samples_per_prompt):
        return f"has latents of shape {list(shape)} for {len(ids)} prompts"
    if traj_shape is not None and (traj_shape[:2] != shape[:2] or traj_shape[2] != trajectory_points):
        return f"has trajectories of shape {list(traj_shape)}, not {trajectory_points} points per sample"
    return None


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
    import torch
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    n = settings.num_samples_per_prompt
    identity = {
        "model_fingerprint": model_fingerprint,
        "prompts_fingerprint": prompts_fingerprint(ids, captions),
        "num_prompts": len(ids),
        "seed": seed,
        "sampler": settings.model_dump(mode="json", exclude={"batch_size", "num_previews"}),
    }
    schedule = None
    points = None
    if trajectory:
        from spin_diffusion.sampling.trajectories import solver_schedule

        use_scheduler(pipe, settings.scheduler)
        schedule = solver_schedule(pipe.scheduler, settings.num_inference_steps)
        points = schedule.num_steps + 1
        identity["trajectory"] = schedule.as_json()  # absent for final-latent samples: older dirs still match
    shards = [(i, s) for i, s in enumerate(range(0, len(ids), settings.shard_size))]
    if (out_dir / MANIFEST).is_file():
        done = json.loads((out_dir / MANIFEST).read_text())
        _check_same(done["identity"], identity, out_dir)
        bad = _bad_shards(out_dir, shards, ids, settings.shard_size, n, points)
        if not bad:
            return OpponentSamples(out_dir)
        if rank == 0:
            log.warning(
                "%s: %s; sampling %s again",
                out_dir,
                bad[0][1],
                "it" if len(bad) == 1 else f"{len(bad)} shards",
            )
            (out_dir / MANIFEST).unlink(missing_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        settings_path = out_dir / SETTINGS
        if settings_path.is_file():
            _check_same(json.loads(settings_path.read_text()), identity, out_dir)
        else:
            write_json_atomic(settings_path, identity)
    if barrier is not None:
        barrier()

    use_scheduler(pipe, settings.scheduler)
    if settings.compile:
        pipe.unet = torch.compile(pipe.unet)
    mine = [(i, s) for i, s in shards if i % world_size == rank]
    bad = {i for i, _ in _bad_shards(out_dir, mine, ids, settings.shard_size, n, points)}
    todo = [(i, s) for i, s in mine if i in bad]
    total = sum(min(settings.shard_size, len(ids) - s) for _, s in todo) * n
    started = time.perf_counter()
    with (
        StopFlag() as stop,
        tqdm(
            total=total, desc="sampling opponent", unit="img", disable=not show_progress or rank != 0
        ) as bar,
    ):
        for i, start in todo:
            shard_ids = list(ids[start : start + settings.shard_size])
            shard_caps = list(captions[start : start + settings.shard_size])
            prompts = [c for c in shard_caps for _ in range(n)]
            seeds = [sample_seed(seed, pid, j) for pid in shard_ids for j in range(n)]
            try:
                if stop():  # a signal that came while the previous shard was saved
                    raise SamplingInterrupted("sampling interrupted")
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
            except SamplingInterrupted:
                raise SamplingInterrupted(_interrupted_message(out_dir, len(shards))) from None
            tensors = {}
            if trajectory:
                tensors["trajectory"] = lat.reshape(len(shard_ids), n, *lat.shape[1:]).contiguous()
                lat = lat[:, -1]
            if settings.latents == "reencoded":
                lat = reencode_latents(pipe, lat, settings.batch_size)
            tensors["latents"] = lat.reshape(len(shard_ids), n, *lat.shape[1:]).to(torch.float16).contiguous()
            with atomic_file(out_dir / _shard_name(i)) as tmp:
                save_file(tensors, str(tmp), metadata={"ids": json.dumps(shard_ids)})
        if stop():
            raise SamplingInterrupted(_interrupted_message(out_dir, len(shards)))
    elapsed = time.perf_counter() - started
    if barrier is not None:
        barrier()
    if rank == 0:
        _write_previews(pipe, out_dir, ids, settings.num_previews)
        manifest = {
            "identity": identity,
            "num_prompts": len(ids),
            "samples_per_prompt": n,
            "shards": [
                {"file": _shard_name(i), "ids": list(ids[s : s + settings.shard_size])} for i, s in shards
            ],
            "seconds_this_process": round(elapsed, 2),
            "world_size": world_size,
        }
        if schedule is not None:
            manifest["trajectory"] = schedule.as_json()
        write_json_atomic(out_dir / MANIFEST, manifest)
    if barrier is not None:
        barrier()
    return OpponentSamples(out_dir)


def _shard_name(index: int) -> str:
    return f"shard-{index:05d}.safetensors"


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
        path = out_dir / _shard_name(i)
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
    diff = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    if diff:
        raise CheckpointError(
            f"{out_dir} was sampled with different {', '.join(diff)}; delete it or use a new run name"
        )


def _write_previews(pipe: DiffusionPipeline, out_dir: Path, ids: Sequence[str], count: int) -> None:
    """Decode the first few samples into previews.png so a person can look at the opponent."""
    import torch
    from safetensors.torch import load_file

    if count <= 0 or not ids:
        return
    lat = load_file(str(out_dir / _shard_name(0)))["latents"][:, 0][:count].to(torch.float32)
    images = decode_latents(pipe, lat)
    save_image_atomic(image_grid(images, cols=min(8, len(images))), out_dir / "previews.png")
