"""The supported model families: the one place that knows SD from SDXL, SD3 and FLUX.1.

A :class:`ModelFamily` is resolved once per run from the pipeline's class (the
``_class_name`` of ``model_index.json``), never from a model's name. It says
which components the pipeline must have and builds a :class:`PromptEncoder`,
which turns captions (and, for SDXL, each image's size and crop) into a
:class:`Conditioning`: the UNet's ``encoder_hidden_states`` plus the
``added_cond_kwargs`` SDXL needs. Sampling, training, the reference errors
(live or precomputed), evaluation and saving all use the pipeline classes of
diffusers and this seam, so no other module asks which model it runs. A family
also names its trained network (``unet`` or ``transformer``) and its training
process: the DDPM scheduler for the UNet families, a
:class:`~spin_diffusion.model.flow.FlowMatchingProcess` for the flow families.

Supported: ``StableDiffusionPipeline`` (SD 1.x and 2.x, epsilon or
v-prediction), ``StableDiffusionXLPipeline`` (SDXL base),
``StableDiffusion3Pipeline`` (SD3/SD3.5), ``FluxPipeline`` (FLUX.1) and
``SanaPipeline`` (Sana).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spin_diffusion.errors import CheckpointError, ConfigError
from spin_diffusion.model.conditioning import (
    Conditioning,
    PromptEncoder,
    SizeCond,
    encode_prompts,
    tokenize_captions,
)
from spin_diffusion.model.flow import (
    flux_process,
    flux_sampled_latents,
    sana_process,
    sana_sampler_kwargs,
    sd3_process,
    set_flow_sample_size,
)
from spin_diffusion.model.flow_encoders import FluxPromptEncoder, SanaPromptEncoder, SD3PromptEncoder

if TYPE_CHECKING:
    import torch


class SDPromptEncoder(PromptEncoder):
    """SD 1.x / 2.x: the text encoder's last hidden states; an empty caption is encoded like any other."""

    def __init__(self, pipe: Any):
        super().__init__(pipe)
        self.text_encoder = pipe.text_encoder
        self._tokenizer = pipe.tokenizer

    @property
    def modules(self) -> list[torch.nn.Module]:
        return [self.text_encoder]

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    def encode(
        self,
        captions: Sequence[str],
        sizes: Sequence[SizeCond | None] | None = None,
        latent_hw: tuple[int, int] | None = None,
        pair_sizes: Sequence[SizeCond | None] | None = None,
    ) -> Conditioning:
        return Conditioning(encode_prompts(self.text_encoder, self._tokenizer, captions))


class SDXLPromptEncoder(PromptEncoder):
    """SDXL: both encoders' penultimate hidden states side by side, the second's pooled projection,
    and ``add_time_ids`` = original size + crop top-left + target size of each image.

    An empty caption (caption dropout) becomes what the pipeline's classifier-free
    guidance uses as its unconditional input: zeros when the pipeline is configured
    with ``force_zeros_for_empty_prompt`` (SDXL base is), else the encoded ``""``.
    Training the dropped captions on anything else would teach the UNet an
    unconditional branch that sampling never asks for.
    """

    def __init__(self, pipe: Any):
        super().__init__(pipe)
        self.encoders = [pipe.text_encoder, pipe.text_encoder_2]
        self.tokenizers = [pipe.tokenizer, pipe.tokenizer_2]
        self.zeros_for_empty = bool(getattr(pipe.config, "force_zeros_for_empty_prompt", False))
        unet = pipe.unet
        expected = unet.add_embedding.linear_1.in_features
        given = unet.config.addition_time_embed_dim * 6 + pipe.text_encoder_2.config.projection_dim
        if expected != given:
            raise CheckpointError(
                f"this SDXL UNet's added embedding takes {expected} inputs but 6 time ids and the second "
                f"text encoder's projection give {given}: the pipeline's components do not belong together"
            )

    @property
    def modules(self) -> list[torch.nn.Module]:
        return list(self.encoders)

    @property
    def tokenizer(self) -> Any:
        return self.tokenizers[0]

    def encode(
        self,
        captions: Sequence[str],
        sizes: Sequence[SizeCond | None] | None = None,
        latent_hw: tuple[int, int] | None = None,
        pair_sizes: Sequence[SizeCond | None] | None = None,
    ) -> Conditioning:
        import torch

        captions = list(captions)
        hidden, pooled = [], None
        with torch.no_grad():
            for tokenizer, encoder in zip(self.tokenizers, self.encoders, strict=True):
                ids = tokenize_captions(tokenizer, captions).input_ids.to(encoder.device)
                out = encoder(ids, output_hidden_states=True)
                if out[0].ndim == 2:  # the encoder with projection: its pooled text embedding
                    pooled = out[0]
                hidden.append(out.hidden_states[-2])
        states = torch.cat(hidden, dim=-1)
        if pooled is None:
            raise CheckpointError("the SDXL pipeline's text_encoder_2 gives no pooled (projected) output")
        if self.zeros_for_empty:
            empty = torch.tensor([c == "" for c in captions], device=states.device)
            states = torch.where(empty[:, None, None], torch.zeros_like(states), states)
            pooled = torch.where(empty[:, None], torch.zeros_like(pooled), pooled)
        return Conditioning(
            states,
            pooled,
            self._time_ids(sizes, len(captions), latent_hw, states),
            None if pair_sizes is None else self._time_ids(pair_sizes, len(captions), latent_hw, states),
        )

    def _time_ids(
        self,
        sizes: Sequence[SizeCond | None] | None,
        n: int,
        latent_hw: tuple[int, int] | None,
        like: torch.Tensor,
    ) -> torch.Tensor:
        import torch

        sizes = list(sizes) if sizes is not None else [None] * n
        if len(sizes) != n:
            raise ValueError(f"{len(sizes)} image sizes for {n} captions")
        rows = []
        for s in sizes:
            if s is None:
                if latent_hw is None:
                    raise ValueError("SDXL conditioning needs each image's size or the latent size")
                s = self.default_size(latent_hw)
            rows.append([float(v) for v in s])
        return torch.tensor(rows, dtype=like.dtype, device=like.device)


def ddpm_process(pipe: Any, flow: Any = None) -> Any:
    """The DDPM forward process matching the pipeline's scheduler config (what SD/SDXL train with)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(pipe.scheduler.config)


def check_unet_sample_size(pipe: Any, resolution: int) -> None:
    """A UNet pipeline samples at its UNet's own size; a real/generated pair must have one latent shape."""
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    if size != resolution:
        raise ConfigError(
            f"data.resolution is {resolution} but the opponent samples at {size} px (the UNet's sample_size "
            f"{pipe.unet.config.sample_size} x the VAE's factor {pipe.vae_scale_factor}); set data.resolution: {size}"
        )


def _as_sampled(pipe: Any, latents: torch.Tensor) -> torch.Tensor:
    return latents


def _no_kwargs(pipe: Any) -> dict[str, Any]:
    return {}


#: What the flow families do not support, each with the reason the run is refused for.
FLOW_REFUSALS: tuple[tuple[str, str], ...] = (
    ("spin-exact", "its stored trajectory replays DDIM/DPM-Solver steps in variance-preserving space"),
    ("inversion-dpo", "it inverts with DDIM; the flow ODE run backwards is not built"),
)


@dataclass(frozen=True)
class ModelFamily:
    """One supported pipeline class: its components, how its captions become conditioning, which
    component is the trained denoiser, its training process (noising, target, network call), how the
    sampler's output becomes a stored latent and at which size it samples."""

    pipeline_class: str
    description: str
    required_components: tuple[str, ...]
    encoder: type[PromptEncoder]
    denoiser: str = "unet"
    denoiser_class: str = "UNet2DConditionModel"
    process: Callable[[Any, Any], Any] = ddpm_process
    sampled_latents: Callable[[Any, Any], Any] = _as_sampled
    sample_at: Callable[[Any, int], None] = check_unet_sample_size
    refused_methods: tuple[tuple[str, str], ...] = ()
    samplers: tuple[str, ...] = ("dpmsolver++", "ddim", "euler", "pipeline")
    #: extra arguments of every sampling call (Sana: the size, without resolution binning)
    sampler_kwargs: Callable[[Any], dict[str, Any]] = _no_kwargs

    def prompt_encoder(self, pipe: Any) -> PromptEncoder:
        return self.encoder(pipe)

    def check_sampler(self, sampler: str, field: str) -> None:
        """Refuse a sampler this family cannot sample with (a flow model keeps its own flow-matching one)."""
        if sampler not in self.samplers:
            raise ConfigError(
                f"{field}: {sampler} does not apply to {self.pipeline_class}; use one of "
                f"{', '.join(self.samplers)} (the pipeline's own flow-matching sampler)"
            )

    def check_run(self, method: str, sampler: str, snr_gamma: float | None) -> None:
        """Refuse, in one line, a method or setting this family does not define."""
        for name, why in self.refused_methods:
            if method == name:
                raise ConfigError(f"method: {method} is not available for {self.pipeline_class}: {why}")
        self.check_sampler(sampler, "sampling.scheduler")
        if snr_gamma is not None and self.process is not ddpm_process:
            raise ConfigError(
                f"training.snr_gamma: min-SNR weighting is for DDPM models; {self.pipeline_class} weights "
                "its loss with model.flow.weighting"
            )


SD = ModelFamily(
    "StableDiffusionPipeline",
    "Stable Diffusion 1.x / 2.x (epsilon or v-prediction)",
    ("unet", "vae", "text_encoder", "tokenizer", "scheduler"),
    SDPromptEncoder,
)
SDXL = ModelFamily(
    "StableDiffusionXLPipeline",
    "Stable Diffusion XL base",
    ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler"),
    SDXLPromptEncoder,
)
SD3 = ModelFamily(
    "StableDiffusion3Pipeline",
    "Stable Diffusion 3 / 3.5 (rectified flow; T5 optional)",
    ("transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler"),
    SD3PromptEncoder,
    denoiser="transformer",
    denoiser_class="SD3Transformer2DModel",
    process=sd3_process,
    sample_at=partial(set_flow_sample_size, latent_multiple=2),
    refused_methods=FLOW_REFUSALS,
    samplers=("pipeline",),
)
FLUX = ModelFamily(
    "FluxPipeline",
    "FLUX.1 dev / schnell (rectified flow; guidance-distilled dev embeds its guidance)",
    ("transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler"),
    FluxPromptEncoder,
    denoiser="transformer",
    denoiser_class="FluxTransformer2DModel",
    process=flux_process,
    sampled_latents=flux_sampled_latents,
    sample_at=partial(set_flow_sample_size, latent_multiple=2),
    refused_methods=FLOW_REFUSALS,
    samplers=("pipeline",),
)
SANA = ModelFamily(
    "SanaPipeline",
    "Sana (rectified flow; Gemma-2 text encoder, DC-AE latents)",
    ("transformer", "vae", "text_encoder", "tokenizer", "scheduler"),
    SanaPromptEncoder,
    denoiser="transformer",
    denoiser_class="SanaTransformer2DModel",
    process=sana_process,
    sample_at=partial(set_flow_sample_size, latent_multiple=1, pixel_multiple=32),
    refused_methods=FLOW_REFUSALS,
    samplers=("pipeline",),
    sampler_kwargs=sana_sampler_kwargs,
)
FAMILIES: dict[str, ModelFamily] = {f.pipeline_class: f for f in (SD, SDXL, SD3, FLUX, SANA)}


def supported_description() -> str:
    return "; ".join(f"{f.pipeline_class} ({f.description})" for f in FAMILIES.values())


def family_for_class(class_name: str | None, source: str) -> ModelFamily:
    """The family of a pipeline class name, or a one-line error naming what is supported."""
    family = FAMILIES.get(class_name or "")
    if family is None:
        raise CheckpointError(
            f"{source} is a {class_name or 'pipeline of unknown class'}, which spin-diffusion does not "
            f"support; supported: {supported_description()}"
        )
    return family


def family_of_directory(path: Path) -> ModelFamily:
    """The family a local pipeline directory declares in ``model_index.json`` (checked before loading)."""
    index = Path(path) / "model_index.json"
    try:
        data = json.loads(index.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{index} is unreadable ({type(exc).__name__})") from None
    class_name = data.get("_class_name") if isinstance(data, dict) else None
    if not isinstance(data, dict) or not isinstance(class_name, str):
        raise CheckpointError(
            f"{index}: _class_name must be the pipeline class name as text (such as "
            f'"StableDiffusionPipeline"), found {json.dumps(class_name)[:80]}'
        )
    return family_for_class(class_name, str(path))


def family_of(pipe: Any) -> ModelFamily:
    """The family of a loaded pipeline (by its class, as ``model_index.json`` names it)."""
    return family_for_class(type(pipe).__name__, "the model")


def prompt_encoder(pipe: Any) -> PromptEncoder:
    """The pipeline's :class:`PromptEncoder` (its family resolved from its class)."""
    return family_of(pipe).prompt_encoder(pipe)


def denoiser_of(pipe: Any) -> torch.nn.Module:
    """The network a run trains: the UNet, or the transformer of a flow family."""
    return getattr(pipe, family_of(pipe).denoiser)


def denoiser_component(module: torch.nn.Module) -> str:
    """The pipeline component name (``unet``, ``transformer``) a trained denoiser is saved and loaded under."""
    name = type(module).__name__
    for family in FAMILIES.values():
        if family.denoiser_class == name:
            return family.denoiser
    raise CheckpointError(f"a {name} is not the denoiser of any supported family")


def set_denoiser(pipe: Any, module: torch.nn.Module) -> None:
    """Put ``module`` in the pipeline as its denoiser (to sample or save with another set of weights)."""
    setattr(pipe, family_of(pipe).denoiser, module)
