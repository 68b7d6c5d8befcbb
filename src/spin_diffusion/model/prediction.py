"""What the UNet is trained to predict and its per-sample error: the seam between models and objectives."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from spin_diffusion.errors import CheckpointError
from spin_diffusion.model.families import family_of
from spin_diffusion.model.flow import FlowMatchingProcess
from spin_diffusion.objectives.core import denoising_error

if TYPE_CHECKING:
    import torch
    from diffusers import DiffusionPipeline

    from spin_diffusion.model.families import Conditioning


def training_scheduler(pipe: DiffusionPipeline, flow: Any = None) -> Any:
    """The forward process the pipeline's family trains with: the DDPM scheduler matching the
    pipeline's scheduler config (SD, SDXL) or a flow-matching process (SD3, FLUX, Sana; ``flow`` is
    ``model.flow`` of the run config)."""
    return family_of(pipe).process(pipe, flow)


def diffusion_target(
    noise_scheduler: Any, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """What the UNet should predict, as the scheduler's ``prediction_type`` says."""
    kind = noise_scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return noise_scheduler.get_velocity(latents, noise, timesteps)
    if kind == "sample":
        return latents
    raise CheckpointError(f"unsupported scheduler prediction_type {kind!r}")


def prediction_error(
    unet: torch.nn.Module,
    noise_scheduler: Any,
    latents: torch.Tensor,
    cond: Conditioning,
    timesteps: torch.Tensor,
    noise: torch.Tensor,
) -> torch.Tensor:
    """Per-sample denoising error ``err(model, x0, c, t, eps)``, shape ``[B]``.

    ``err = mean_{C,H,W} (unet(x_t, t, c) - target)^2`` with ``x_t`` the forward-noised
    latent and ``target`` what the scheduler's ``prediction_type`` asks for; the
    objectives (:mod:`spin_diffusion.objectives.core`) are pure functions of it.
    ``cond`` comes from the model family's prompt encoder.
    """
    if isinstance(noise_scheduler, FlowMatchingProcess):  # the flow families' process calls its own network
        return noise_scheduler.prediction_error(unet, latents, cond, timesteps, noise)
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    target = diffusion_target(noise_scheduler, latents, noise, timesteps)
    dtype = next(unet.parameters()).dtype
    pred = unet(noisy.to(dtype), timesteps, **cond.unet_kwargs(dtype)).sample
    return denoising_error(pred, target)
