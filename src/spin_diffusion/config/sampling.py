"""How the opponent samples each iteration (and how validation and evaluation images are drawn)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from spin_diffusion.config.base import Strict


class SamplingConfig(Strict):
    """How the opponent generates its samples each iteration."""

    num_samples_per_prompt: int = Field(
        1, ge=1, description="opponent samples per caption; one is drawn per epoch"
    )
    scheduler: Literal["dpmsolver++", "ddim", "euler", "pipeline"] = Field(
        "dpmsolver++", description="sampler; 'pipeline' keeps the model's own scheduler"
    )
    num_inference_steps: int = Field(20, ge=1, description="denoising steps per sample")
    guidance_scale: float = Field(7.5, ge=0, description="classifier-free guidance scale (the paper: 7.5)")
    eta: float = Field(0.0, ge=0, description="DDIM eta (ignored by other samplers)")
    batch_size: int = Field(16, ge=1, description="prompts per forward (CFG doubles it internally)")
    shard_size: int = Field(256, ge=1, description="prompts per latent shard: the unit of resume")
    num_previews: int = Field(16, ge=0, description="samples decoded into previews.png")
    compile: bool = Field(False, description="torch.compile the UNet for sampling")
    latents: Literal["raw", "reencoded"] = Field(
        "raw",
        description="raw: the sampler's final latent; reencoded: decode each sample to an 8-bit image and "
        "encode it like a real one (one VAE pass more). On the toy world raw gave better style at equal "
        "fidelity (docs/results.md)",
    )
