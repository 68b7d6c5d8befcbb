"""Assemble real-architecture diffusers pipelines (random weights) from ``real_architectures``' configs.

    build_pipeline("sdxl", width_divisor=4, resolution=256)      # reduced width, for a shared CPU
    build_pipeline("sd15", resolution=512)                        # the real SD-1.5 shapes
    parameter_counts("flux1-dev")                                 # on the meta device: no memory

``resolution`` sets the pipeline's sample size (the opponent samples at it):
the published sizes are 512 (SD-1.5), 768 (SD-2.1), 1024 (the rest).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import real_architectures as ra

VAE_FACTOR = 8


def _clip_text(config: dict[str, Any], d: int, tokenizer: Any, projection: bool) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(
        **ra.narrowed_clip(config, d),
        vocab_size=ra.CLIP_VOCAB_SIZE,
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModelWithProjection(cfg) if projection else CLIPTextModel(cfg)


def _t5(d: int) -> Any:
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(**ra.narrowed_t5(ra.T5_XXL, d), is_encoder_decoder=False, use_cache=False))


def _vae(config: dict[str, Any], d: int, resolution: int) -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL(**ra.narrowed_vae(config, d, resolution))


def _ddim(prediction_type: str) -> Any:
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type=prediction_type,
    )


def _sd(arch: str, d: int, resolution: int, bpe: Any) -> Any:
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    tokenizer, _ = ra.clip_tokenizer(bpe)
    unet_cfg, text_cfg = (ra.SD15_UNET, ra.CLIP_L) if arch == "sd15" else (ra.SD21_UNET, ra.OPENCLIP_H)
    return StableDiffusionPipeline(
        vae=_vae(ra.SD_VAE, d, resolution),
        text_encoder=_clip_text(text_cfg, d, tokenizer, projection=False),
        tokenizer=tokenizer,
        unet=UNet2DConditionModel(**ra.narrowed_unet(unet_cfg, d, resolution // VAE_FACTOR)),
        scheduler=_ddim("epsilon" if arch == "sd15" else "v_prediction"),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _sdxl(d: int, resolution: int, bpe: Any) -> Any:
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel

    tokenizer, _ = ra.clip_tokenizer(bpe)
    tokenizer_2, _ = ra.clip_tokenizer(bpe)
    return StableDiffusionXLPipeline(
        vae=_vae({**ra.SD_VAE, "scaling_factor": 0.13025, "force_upcast": True}, d, resolution),
        text_encoder=_clip_text(ra.CLIP_L, d, tokenizer, projection=False),
        text_encoder_2=_clip_text(ra.OPENCLIP_BIGG, d, tokenizer_2, projection=True),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=UNet2DConditionModel(**ra.narrowed_unet(ra.SDXL_UNET, d, resolution // VAE_FACTOR)),
        scheduler=_ddim("epsilon"),
        force_zeros_for_empty_prompt=True,
    )


def _flow_scheduler(arch: str) -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler

    if arch == "flux1-dev":  # FLUX.1-dev's scheduler/scheduler_config.json: resolution-dependent shift
        return FlowMatchEulerDiscreteScheduler(
            shift=3.0,
            use_dynamic_shifting=True,
            base_shift=0.5,
            max_shift=1.15,
            base_image_seq_len=256,
            max_image_seq_len=4096,
        )
    return FlowMatchEulerDiscreteScheduler(shift=3.0)  # SD3.5-medium's


def _sd35(d: int, resolution: int, bpe: Any) -> Any:
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline

    tokenizer, _ = ra.clip_tokenizer(bpe)
    tokenizer_2, _ = ra.clip_tokenizer(bpe)
    config = {
        **ra.narrowed_transformer(ra.SD35_MEDIUM_TRANSFORMER, d),
        "sample_size": resolution // VAE_FACTOR,
    }
    return StableDiffusion3Pipeline(
        transformer=SD3Transformer2DModel(**config),
        scheduler=_flow_scheduler("sd35-medium"),
        vae=_vae(ra.SD35_VAE, d, resolution),
        text_encoder=_clip_text(ra.CLIP_L, d, tokenizer, projection=True),
        tokenizer=tokenizer,
        text_encoder_2=_clip_text(ra.OPENCLIP_BIGG, d, tokenizer_2, projection=True),
        tokenizer_2=tokenizer_2,
        text_encoder_3=_t5(d),
        tokenizer_3=ra.t5_tokenizer(256),
    )


def _flux(d: int, resolution: int, bpe: Any) -> Any:
    from diffusers import FluxPipeline, FluxTransformer2DModel

    tokenizer, _ = ra.clip_tokenizer(bpe)
    return FluxPipeline(
        transformer=FluxTransformer2DModel(**ra.narrowed_transformer(ra.FLUX1_DEV_TRANSFORMER, d)),
        scheduler=_flow_scheduler("flux1-dev"),
        vae=_vae(ra.FLUX_VAE, d, resolution),
        text_encoder=_clip_text(ra.CLIP_L, d, tokenizer, projection=False),
        tokenizer=tokenizer,
        text_encoder_2=_t5(d),
        tokenizer_2=ra.t5_tokenizer(512),
    )


def build_pipeline(
    arch: str, width_divisor: int = 1, resolution: int = 256, bpe: str | Path | None = None, seed: int = 0
) -> Any:
    """A randomly initialised diffusers pipeline of ``arch`` (see ``real_architectures.ARCHITECTURES``)."""
    import torch

    if arch not in ra.ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose from {', '.join(ra.ARCHITECTURES)}")
    torch.manual_seed(seed)
    if arch in ("sd15", "sd21"):
        pipe = _sd(arch, width_divisor, resolution, bpe)
    elif arch == "sdxl":
        pipe = _sdxl(width_divisor, resolution, bpe)
    elif arch == "sd35-medium":
        pipe = _sd35(width_divisor, resolution, bpe)
    else:
        pipe = _flux(width_divisor, resolution, bpe)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def denoiser(pipe: Any) -> Any:
    """The trained network: the UNet, or the transformer of a flow family."""
    return getattr(pipe, "unet", None) or pipe.transformer


def frozen_modules(pipe: Any) -> dict[str, Any]:
    """The networks that stay frozen in training: the VAE and every text encoder."""
    names = ("vae", "text_encoder", "text_encoder_2", "text_encoder_3")
    return {n: getattr(pipe, n) for n in names if getattr(pipe, n, None) is not None}


def parameter_counts(arch: str, width_divisor: int = 1, resolution: int = 256) -> dict[str, int]:
    """Parameters of each component, built on the meta device (no memory, seconds even for FLUX)."""
    import torch

    with torch.device("meta"):
        pipe = build_pipeline(arch, width_divisor, resolution)
    counts = {"denoiser": sum(p.numel() for p in denoiser(pipe).parameters())}
    for name, module in frozen_modules(pipe).items():
        counts[name] = sum(p.numel() for p in module.parameters())
    return counts
