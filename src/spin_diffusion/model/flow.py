"""Rectified-flow training of the flow-matching families (SD3/SD3.5, FLUX.1): noising, target, network call.

``x_t = (1 - sigma) x0 + sigma eps``; the network predicts a velocity and the
target is ``eps - x0``. Sigmas come from the pipeline's own
``FlowMatchEulerDiscreteScheduler`` (its static ``shift``, or, when the
scheduler shifts dynamically as FLUX.1's does, the resolution-dependent shift
its sampler applies). A :class:`FlowMatchingProcess` stands where a UNet
family's DDPM scheduler stands: the batch's integer timestep ``t`` (a uniform
draw over ``num_train_timesteps``, seeded per example so resume and the
precomputed reference need only a step count) is mapped through the chosen
density (diffusers' ``compute_density_for_timestep_sampling``, as a transform of
that uniform draw) to an index of the schedule, as diffusers' SD3/FLUX scripts
do. The per-sample error is ``w(sigma) * mean((v_pred - (eps - x0))^2)`` in fp32,
so every objective applies unchanged.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from spin_diffusion.config.flow import FlowConfig
    from spin_diffusion.model.conditioning import Conditioning


@dataclass(frozen=True)
class FlowProcessConfig:
    """What the trainer and the batch builder read from a training scheduler's ``config``."""

    num_train_timesteps: int
    prediction_type: str = "flow"


def density_transform(u: torch.Tensor, settings: FlowConfig) -> torch.Tensor:
    """A uniform draw ``u`` in (0, 1) turned into one of diffusers' ``compute_density_for_timestep_sampling``.

    logit_normal: ``sigmoid(m + s * Phi^-1(u))`` (the same law as sigmoid of a
    normal draw); mode: the SD3 paper's ``1 - u - s (cos^2(pi u / 2) - 1 + u)``;
    uniform: ``u``.
    """
    import torch

    if settings.timestep_sampling == "logit_normal":
        z = math.sqrt(2.0) * torch.erfinv(2.0 * u - 1.0)
        return torch.sigmoid(settings.logit_mean + settings.logit_std * z)
    if settings.timestep_sampling == "mode":
        return 1 - u - settings.mode_scale * (torch.cos(math.pi * u / 2) ** 2 - 1 + u)
    return u


def loss_weights(sigmas: torch.Tensor, scheme: str) -> torch.Tensor:
    """Per-sample weight of diffusers' ``compute_loss_weighting_for_sd3`` (none, sigma_sqrt, cosmap)."""
    import torch

    if scheme == "sigma_sqrt":
        return sigmas.float() ** -2.0
    if scheme == "cosmap":
        return 2 / (math.pi * (1 - 2 * sigmas + 2 * sigmas**2))
    return torch.ones_like(sigmas)


class DenoiserCall(ABC):
    """How one flow family calls its transformer: latents in ``[B, C, h, w]``, a velocity out in the same shape."""

    #: Latent pixels per image token along each side (FLUX packs 2x2).
    patch_size: int

    def image_seq_len(self, latent_hw: tuple[int, int]) -> int:
        """The image token count the sampler's resolution-dependent shift is computed from."""
        return (latent_hw[0] // self.patch_size) * (latent_hw[1] // self.patch_size)

    @abstractmethod
    def __call__(
        self,
        net: Any,
        noisy: torch.Tensor,
        sigmas: torch.Tensor,
        cond: Conditioning,
        num_train_timesteps: int,
    ) -> torch.Tensor:
        """The network's velocity prediction at ``noisy`` (fp32)."""


class SD3Call(DenoiserCall):
    """``SD3Transformer2DModel``: timestep ``sigma * T``, T5+CLIP states and the pooled CLIP projection."""

    def __init__(self, patch_size: int):
        self.patch_size = patch_size

    def __call__(
        self,
        net: Any,
        noisy: torch.Tensor,
        sigmas: torch.Tensor,
        cond: Conditioning,
        num_train_timesteps: int,
    ) -> torch.Tensor:
        dtype = next(net.parameters()).dtype
        if cond.text_embeds is None:
            raise ValueError("SD3 conditioning needs the pooled text projection")
        return net(
            hidden_states=noisy.to(dtype),
            timestep=(sigmas * num_train_timesteps).to(dtype),
            encoder_hidden_states=cond.hidden_states.to(dtype),
            pooled_projections=cond.text_embeds.to(dtype),
        ).sample.float()


def pack_latents(x: torch.Tensor) -> torch.Tensor:
    """FLUX's 2x2 packing: ``[B, C, h, w]`` -> ``[B, (h/2)(w/2), 4C]`` tokens."""
    b, c, h, w = x.shape
    x = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(x: torch.Tensor, latent_hw: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`pack_latents`."""
    h, w = latent_hw
    b, _, d = x.shape
    x = x.view(b, h // 2, w // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, d // 4, h, w)


def latent_image_ids(latent_hw: tuple[int, int], device: Any, dtype: Any) -> torch.Tensor:
    """FLUX's ``img_ids``: (0, row, column) of each packed token, ``[(h/2)(w/2), 3]``."""
    import torch

    h, w = latent_hw[0] // 2, latent_hw[1] // 2
    ids = torch.zeros(h, w, 3)
    ids[..., 1] = torch.arange(h)[:, None]
    ids[..., 2] = torch.arange(w)[None, :]
    return ids.reshape(h * w, 3).to(device=device, dtype=dtype)


class FluxCall(DenoiserCall):
    """``FluxTransformer2DModel``: packed latents with ``img_ids``, T5 states with zero ``txt_ids``, the
    pooled CLIP output, timestep ``sigma`` and, for guidance-distilled FLUX.1-dev, an embedded guidance."""

    patch_size = 2  # the 2x2 packing of pack_latents

    def __init__(self, guidance: float | None):
        self.guidance = guidance

    def __call__(
        self,
        net: Any,
        noisy: torch.Tensor,
        sigmas: torch.Tensor,
        cond: Conditioning,
        num_train_timesteps: int,
    ) -> torch.Tensor:
        import torch

        dtype = next(net.parameters()).dtype
        if cond.text_embeds is None:
            raise ValueError("FLUX conditioning needs the pooled CLIP output")
        hw = (int(noisy.shape[-2]), int(noisy.shape[-1]))
        states = cond.hidden_states.to(dtype)
        guidance = None
        if self.guidance is not None:
            guidance = torch.full((noisy.shape[0],), self.guidance, device=noisy.device, dtype=torch.float32)
        out = net(
            hidden_states=pack_latents(noisy).to(dtype),
            timestep=sigmas.to(dtype),
            guidance=guidance,
            pooled_projections=cond.text_embeds.to(dtype),
            encoder_hidden_states=states,
            txt_ids=torch.zeros(states.shape[1], 3, device=noisy.device, dtype=dtype),
            img_ids=latent_image_ids(hw, noisy.device, dtype),
        ).sample
        return unpack_latents(out.float(), hw)


class SanaCall(DenoiserCall):
    """``SanaTransformer2DModel``: timestep ``sigma * T * timestep_scale``, Gemma's states and their mask."""

    def __init__(self, patch_size: int, timestep_scale: float):
        self.patch_size, self.timestep_scale = patch_size, timestep_scale

    def __call__(
        self,
        net: Any,
        noisy: torch.Tensor,
        sigmas: torch.Tensor,
        cond: Conditioning,
        num_train_timesteps: int,
    ) -> torch.Tensor:
        dtype = next(net.parameters()).dtype
        return net(
            hidden_states=noisy.to(dtype),
            encoder_hidden_states=cond.hidden_states.to(dtype),
            encoder_attention_mask=cond.attention_mask,
            timestep=(sigmas * num_train_timesteps * self.timestep_scale).to(dtype),
        ).sample.float()


class FlowMatchingProcess:
    """The rectified-flow forward process of one pipeline, standing where a DDPM scheduler stands."""

    def __init__(
        self, scheduler_config: Any, call: DenoiserCall, settings: FlowConfig, shift: float | None = None
    ):
        import torch
        from diffusers import FlowMatchEulerDiscreteScheduler

        # ``shift``: for a pipeline whose sampler names it otherwise (Sana's DPM-Solver: flow_shift)
        extra = {} if shift is None else {"shift": shift}
        self.scheduler = FlowMatchEulerDiscreteScheduler.from_config(scheduler_config, **extra)
        sched_cfg = self.scheduler.config
        self.config = FlowProcessConfig(int(sched_cfg.num_train_timesteps))
        # The schedule as a fresh scheduler holds it: statically shifted, or unshifted when dynamic.
        self.schedule = torch.as_tensor(self.scheduler.sigmas, dtype=torch.float32).flatten()
        self.dynamic = bool(sched_cfg.get("use_dynamic_shifting", False))
        self.call = call
        self.settings = settings

    def sigmas(self, timesteps: torch.Tensor, latent_hw: tuple[int, int]) -> torch.Tensor:
        """``sigma`` of each batch timestep index (fp32, ``[B]``), with the sampler's shift at this size."""
        import torch

        n = self.config.num_train_timesteps
        u = (timesteps.detach().cpu().double() + 0.5) / n
        draw = density_transform(u, self.settings)
        index = (draw * n).long().clamp(0, len(self.schedule) - 1)
        sigmas = self.schedule[index]
        if self.dynamic:
            sigmas = self.scheduler.time_shift(self.shift_mu(latent_hw), 1.0, sigmas.double()).float()
        return sigmas.to(device=timesteps.device, dtype=torch.float32)

    def shift_mu(self, latent_hw: tuple[int, int]) -> float:
        """The pipeline's ``calculate_shift`` for this latent size (FLUX's resolution-dependent shift)."""
        cfg = self.scheduler.config
        base_len, max_len = cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096)
        base, top = cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.15)
        slope = (top - base) / (max_len - base_len)
        return self.call.image_seq_len(latent_hw) * slope + base - slope * base_len

    def _expand(self, timesteps: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        s = self.sigmas(timesteps, (int(x.shape[-2]), int(x.shape[-1]))).to(x.device)
        return s.view(-1, *([1] * (x.ndim - 1)))

    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        s = self._expand(timesteps, latents)
        return ((1 - s) * latents.float() + s * noise.float()).to(latents.dtype)

    def target(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return noise.float() - latents.float()

    def prediction_error(
        self,
        net: Any,
        latents: torch.Tensor,
        cond: Conditioning,
        timesteps: torch.Tensor,
        noise: torch.Tensor,
    ) -> torch.Tensor:
        """Per-sample ``w(sigma) * mean((v - (eps - x0))^2)`` in fp32, shape ``[B]``."""
        from spin_diffusion.objectives.core import denoising_error  # torch, only when training

        hw = (int(latents.shape[-2]), int(latents.shape[-1]))
        sigmas = self.sigmas(timesteps, hw).to(latents.device)
        noisy = self.add_noise(latents, noise, timesteps)
        pred = self.call(net, noisy, sigmas, cond, self.config.num_train_timesteps)
        err = denoising_error(pred, self.target(latents, noise, timesteps))
        return err * loss_weights(sigmas, self.settings.weighting).to(err.device)


def _settings(flow: FlowConfig | None) -> FlowConfig:
    from spin_diffusion.config.flow import FlowConfig

    return flow if flow is not None else FlowConfig()


def sd3_process(pipe: Any, flow: FlowConfig | None = None) -> FlowMatchingProcess:
    """The training process of a ``StableDiffusion3Pipeline``."""
    return FlowMatchingProcess(
        pipe.scheduler.config, SD3Call(int(pipe.transformer.config.patch_size)), _settings(flow)
    )


def flux_process(pipe: Any, flow: FlowConfig | None = None) -> FlowMatchingProcess:
    """The training process of a ``FluxPipeline``; guidance is embedded only if the transformer has the embedder."""
    settings = _settings(flow)
    guidance = settings.guidance if pipe.transformer.config.guidance_embeds else None
    return FlowMatchingProcess(pipe.scheduler.config, FluxCall(guidance), settings)


def sana_process(pipe: Any, flow: FlowConfig | None = None) -> FlowMatchingProcess:
    """The training process of a ``SanaPipeline``: its sampler's ``flow_shift`` as a static shift."""
    cfg, net = pipe.scheduler.config, pipe.transformer.config
    shift = cfg.get("flow_shift") if "flow_shift" in cfg else None
    call = SanaCall(int(net.patch_size), float(net.get("timestep_scale", 1.0)))
    return FlowMatchingProcess(cfg, call, _settings(flow), shift=shift)


def sana_sampler_kwargs(pipe: Any) -> dict[str, Any]:
    """Sana's pipeline samples 1024 px unless told, and bins sizes to aspect ratios: ask for the model's
    own size (or the training resolution :func:`set_flow_sample_size` set), unbinned."""
    side = int(getattr(pipe, "default_sample_size", pipe.transformer.config.sample_size)) * int(
        pipe.vae_scale_factor
    )
    return {"height": side, "width": side, "use_resolution_binning": False}


def flux_sampled_latents(pipe: Any, latents: torch.Tensor) -> torch.Tensor:
    """``FluxPipeline(output_type="latent")`` returns packed tokens; stored latents are ``[B, C, h, w]``."""
    side = int(pipe.default_sample_size)
    return unpack_latents(latents, (side, side))


def set_flow_sample_size(
    pipe: Any, resolution: int, latent_multiple: int = 2, pixel_multiple: int = 1
) -> None:
    """Make the pipeline sample at the training resolution (SD3/FLUX pipelines take it as an attribute).

    ``latent_multiple``: the latent side must divide by it (SD3's patch size, FLUX's 2x2 packing);
    ``pixel_multiple``: the image side must (Sana's pipeline asks for multiples of 32).
    """
    from spin_diffusion.errors import ConfigError

    factor = math.lcm(int(pipe.vae_scale_factor) * latent_multiple, pixel_multiple)
    if resolution % factor:
        raise ConfigError(f"data.resolution {resolution} must be a multiple of {factor} for this pipeline")
    pipe.default_sample_size = resolution // int(pipe.vae_scale_factor)
