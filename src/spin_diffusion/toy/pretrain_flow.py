"""Pretrain the flow-matching toy base: a tiny SD3 without T5 on the same web data as the UNet base.

The stages, data, VAE training and RNG streams are :mod:`spin_diffusion.toy.pretrain`'s; only the
pipeline and the denoiser's objective differ. The denoiser is rectified flow through the family
seam's own :class:`~spin_diffusion.model.flow.FlowMatchingProcess` (``x_t = (1 - sigma) x0 + sigma
eps``, target ``eps - x0``, sigma from the pipeline's ``FlowMatchEulerDiscreteScheduler`` under a
logit-normal or uniform density), and captions go through the pipeline's own ``encode_prompt`` with
gradients, so pretraining, fine-tuning and sampling condition the transformer identically. About 10%
of captions are "" (the pipeline's unconditional input) so classifier-free guidance works.

Speed: without T5 the pipeline appends ``max_sequence_length`` (256) zero "T5" tokens to the 32 CLIP
tokens, and on CPU those dominate the cost. They are identical tokens at every layer (nothing but
attention mixes tokens, and no position is added to text tokens), so attending to 256 copies equals
attending to one copy whose logit is raised by ``log(256)``. Pretraining runs that exact equivalent
(:class:`MergedPaddingAttnProcessor`, tested against the plain forward); the saved pipeline is plain.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from spin_diffusion.toy.pretrain import PretrainConfig, denoiser_loop, run_stages

if TYPE_CHECKING:
    import torch
    from diffusers import StableDiffusion3Pipeline


class FlowPretrainConfig(PretrainConfig):
    """The flow toy base's knobs (defaults = the shipped ``toy-flow-base``).

    Inherited ``unet_*`` settings drive the denoiser stage (here the transformer and both CLIP
    encoders); ``unet_channels`` is unused.
    """

    family: Literal["sd3"] = "sd3"  # type: ignore[assignment]
    vae_steps: int = Field(400, ge=1, description="fewer than the UNet base's: a 16x16x16 latent is easy")
    decoder_steps: int = Field(300, ge=0)
    unet_steps: int = Field(2000, ge=1, description="denoiser steps (transformer + both CLIPs)")
    vae_channels: tuple[int, ...] = (16, 32)  # two levels: 32 px -> 16x16 latents
    latent_channels: int = Field(16, ge=1, description="16, as SD3's autoencoder")
    text_hidden_size: int = Field(32, ge=8, description="width of each of the two CLIP encoders")
    text_layers: int = Field(2, ge=2, description="CLIP layers (SD3 reads the penultimate layer)")
    transformer_layers: int = Field(4, ge=1)
    attention_heads: int = Field(4, ge=1)
    attention_head_dim: int = Field(16, ge=4)
    patch_size: int = Field(2, ge=1, description="2: 16x16 latents become 64 image tokens")
    scheduler_shift: float = Field(
        1.0, gt=0, description="FlowMatchEulerDiscreteScheduler shift (1: no shift at this tiny size)"
    )
    timestep_sampling: Literal["uniform", "logit_normal"] = Field(
        "logit_normal", description="training sigma density (the SD3 paper's logit-normal(0, 1) by default)"
    )


class MergedPaddingAttnProcessor:
    """diffusers' ``JointAttnProcessor2_0`` where the last text token stands for ``copies`` identical ones.

    The same projections, order and outputs; only ``log(copies)`` is added to every query's logit
    for that key, which is what ``copies`` identical keys and values contribute to the softmax.
    """

    def __init__(self, copies: int):
        self.log_copies = math.log(copies)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
        import torch
        import torch.nn.functional as F

        b, n_img = hidden_states.shape[0], hidden_states.shape[1]

        def heads(x: torch.Tensor, norm=None) -> torch.Tensor:
            x = x.view(b, -1, attn.heads, x.shape[-1] // attn.heads).transpose(1, 2)
            return norm(x) if norm is not None else x

        ctx = encoder_hidden_states
        q = torch.cat(
            [heads(attn.to_q(hidden_states), attn.norm_q), heads(attn.add_q_proj(ctx), attn.norm_added_q)], 2
        )
        k = torch.cat(
            [heads(attn.to_k(hidden_states), attn.norm_k), heads(attn.add_k_proj(ctx), attn.norm_added_k)], 2
        )
        v = torch.cat([heads(attn.to_v(hidden_states)), heads(attn.add_v_proj(ctx))], 2)
        bias = torch.zeros(1, k.shape[2], dtype=q.dtype, device=q.device)
        bias[:, -1] = self.log_copies
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=0.0, is_causal=False)
        out = out.transpose(1, 2).reshape(b, -1, q.shape[1] * q.shape[-1]).to(q.dtype)
        img, ctx = out[:, :n_img], out[:, n_img:]
        if not attn.context_pre_only:
            ctx = attn.to_add_out(ctx)
        return attn.to_out[1](attn.to_out[0](img)), ctx


def t5_padding_tokens(pipe) -> int:
    """How many zero "T5" tokens the pipeline's sampler appends when it has no T5 (its call's default)."""
    import inspect

    return int(inspect.signature(pipe.__call__).parameters["max_sequence_length"].default)


def build_sd3_pipeline(cfg: FlowPretrainConfig) -> StableDiffusion3Pipeline:
    """A randomly initialised tiny ``StableDiffusion3Pipeline`` without T5 at this config's sizes."""
    from spin_diffusion.model.tiny_flow import TinyFlowSpec, build_tiny_sd3_pipeline
    from spin_diffusion.toy.world import VOCABULARY

    spec = TinyFlowSpec(
        words=VOCABULARY,
        image_size=cfg.image_size,
        vae_channels=cfg.vae_channels,
        latent_channels=cfg.latent_channels,
        vae_scaling_factor=1.0,  # both set from the trained VAE's latents (calibrate_latents)
        vae_shift_factor=0.0,
        patch_size=cfg.patch_size,
        num_layers=cfg.transformer_layers,
        attention_head_dim=cfg.attention_head_dim,
        num_attention_heads=cfg.attention_heads,
        clip_hidden_size=cfg.text_hidden_size,
        clip_layers=cfg.text_layers,
        clip_max_length=cfg.max_length,
        t5=False,
        t5_hidden_size=2 * cfg.text_hidden_size,  # the joint width: both CLIPs side by side
        scheduler_shift=cfg.scheduler_shift,
    )
    return build_tiny_sd3_pipeline(spec, seed=cfg.seed)


def train_flow_denoiser(
    pipe,
    latents,
    captions: list[str],
    cfg: FlowPretrainConfig,
    gen,
    log: Callable,
    snapshot: Callable | None = None,
) -> None:
    """Transformer + both CLIP encoders, jointly, on the rectified-flow error of the family seam."""
    import torch

    from spin_diffusion.config.flow import FlowConfig
    from spin_diffusion.model.conditioning import Conditioning
    from spin_diffusion.model.flow import sd3_process

    process = sd3_process(pipe, FlowConfig(timestep_sampling=cfg.timestep_sampling, weighting="none"))
    mean, std = latents
    shift, scale = pipe.vae.config.shift_factor, pipe.vae.config.scaling_factor
    n_train = process.config.num_train_timesteps

    if pipe.text_encoder_3 is not None:
        raise ValueError("the flow toy base is SD3 without T5 (text_encoder_3=None)")
    copies = t5_padding_tokens(pipe)

    def step_loss(idx: torch.Tensor) -> torch.Tensor:
        x0 = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=gen) - shift) * scale
        drop = torch.rand(len(idx), generator=gen) < cfg.p_empty_caption
        batch = ["" if d else captions[i] for i, d in zip(idx.tolist(), drop.tolist(), strict=True)]
        eps = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, n_train, (len(idx),), generator=gen)
        states, _, pooled, _ = pipe.encode_prompt(
            prompt=batch,
            prompt_2=None,
            prompt_3=None,
            device=x0.device,
            do_classifier_free_guidance=False,
            max_sequence_length=1,  # one zero token standing for ``copies`` (MergedPaddingAttnProcessor)
        )
        return process.prediction_error(pipe.transformer, x0, Conditioning(states, pooled), t, eps).mean()

    modules = [pipe.transformer, pipe.text_encoder, pipe.text_encoder_2]
    plain = pipe.transformer.attn_processors

    def plain_snapshot(step: int) -> None:  # a snapshot is sampled with the plain processors
        pipe.transformer.set_attn_processor(dict(plain))  # diffusers pops from the dict
        snapshot(step)
        pipe.transformer.set_attn_processor(MergedPaddingAttnProcessor(copies))

    pipe.transformer.set_attn_processor(MergedPaddingAttnProcessor(copies))
    try:
        denoiser_loop(modules, step_loss, len(captions), cfg, gen, log, plain_snapshot if snapshot else None)
    finally:
        pipe.transformer.set_attn_processor(dict(plain))  # diffusers pops from the dict


def pretrain_flow(
    cfg: FlowPretrainConfig, out_dir: str | os.PathLike[str], log: Callable | None = None
) -> StableDiffusion3Pipeline:
    """VAE, rectified-flow denoiser, decoder refinement; the pipeline saved atomically to ``out_dir``."""
    return run_stages(cfg, out_dir, build_sd3_pipeline, train_flow_denoiser, log)
