"""Batched, deterministic generation: latents, trajectories and images for the opponent and evaluation.

Each sample's starting noise comes from its own seed (see
:func:`spin_diffusion.infra.seeds.sample_seed`), so the same prompt gives the
same latents whatever the batch size. Classifier-free guidance runs as one
doubled batch inside the pipeline.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from spin_diffusion.infra.interrupt import Interrupted
from spin_diffusion.model.families import family_of

if TYPE_CHECKING:
    import torch
    from diffusers import DiffusionPipeline
    from PIL import Image


class SamplingInterrupted(Interrupted):
    """SIGINT/SIGTERM during sampling: complete shards are kept; the same command resumes (exit 130)."""


def use_scheduler(pipe: DiffusionPipeline, name: str) -> None:
    """Swap the sampling scheduler, keeping the model's noise schedule and prediction type."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler

    family_of(pipe).check_sampler(name, "scheduler")  # a flow model samples with its own scheduler
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
    family = family_of(pipe)  # FLUX's sampler returns packed tokens: stored latents are [N, C, h, w]
    params = _call_parameters(pipe)
    extra: dict[str, Any] = {"eta": eta} if "eta" in params else {}
    extra.update(family.sampler_kwargs(pipe))
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
            latents = (
                torch.stack(points, dim=1) if trajectory else family.sampled_latents(pipe, result.images)
            )
            out.append(latents.float().cpu())
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

    from spin_diffusion.data.encoding import encode_pixels, latent_scaling

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
