"""Pretrain the toy base model on the "web" distribution (the analogue of SD-1.5 on LAION).

Two stages, as for Stable Diffusion: (1) train the VAE to reconstruct web images, then freeze it
and set ``scaling_factor`` so latents have unit std; (2) train UNet + text encoder jointly with the
DDPM epsilon objective on those latents, dropping ~10% of captions to "" so classifier-free
guidance works at sampling time. The result is an ordinary diffusers ``StableDiffusionPipeline``
saved with safetensors. Everything is seeded; on 2 CPU cores the default run takes ~20 minutes.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    import torch
    from diffusers import StableDiffusionPipeline


class PretrainConfig(BaseModel):
    """Every knob of the toy pretraining run (defaults = the shipped base model)."""

    model_config = ConfigDict(extra="forbid")

    family: Literal["sd"] = Field("sd", description="sd: the UNet base; sd3: see toy.pretrain_flow")
    seed: int = 0
    n_images: int = Field(8000, ge=16, description="web (caption, image) pairs: a fixed, finite budget")
    image_size: int = Field(32, ge=16)
    unet_channels: tuple[int, ...] = (32, 64, 64)
    vae_channels: tuple[int, ...] = (16, 32, 32)  # three levels: 32 px -> 8x8 latents (CPU attention is slow)
    latent_channels: int = Field(
        8, ge=1, description="8 (not SD's 4): an 8x8 latent must hold the whole image"
    )
    text_hidden_size: int = Field(32, ge=8)
    max_length: int = Field(32, ge=26, description="token slots; the longest toy prompt is 25 tokens")
    vae_curated_images: int = Field(2000, ge=0, description="curated images added to the VAE's training set")
    vae_steps: int = Field(1500, ge=1)
    vae_batch_size: int = Field(16, ge=1)
    vae_lr: float = Field(2e-3, gt=0)
    kl_weight: float = Field(1e-6, ge=0)
    decoder_steps: int = Field(1500, ge=0, description="stage 3: refine the VAE decoder, encoder frozen")
    unet_steps: int = Field(2500, ge=1)
    unet_batch_size: int = Field(16, ge=1)
    unet_lr: float = Field(1e-3, gt=0)
    warmup_steps: int = Field(200, ge=0)
    p_empty_caption: float = Field(0.1, ge=0, le=1)
    threads: int = Field(2, ge=1)
    snapshot_every: int = Field(
        0, ge=0, description="also save <out_dir>.step-N every N UNet steps (0: never)"
    )
    vae_from: str | None = Field(
        None,
        description="reuse the (frozen, already refined) VAE of this pipeline directory: stages 1 and 3 "
        "are skipped, so the latent space is unchanged and only the UNet and text encoder are retrained",
    )


def _images_to_tensor(images) -> torch.Tensor:
    import numpy as np
    import torch

    arr = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2) / 127.5 - 1.0


def _lr_lambda(warmup: int, total: int) -> Callable[[int], float]:
    """Linear warm-up then cosine decay to 10%."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f


def train_vae(vae, pixels: torch.Tensor, cfg: PretrainConfig, gen: torch.Generator, log: Callable) -> None:
    """Reconstruction (L1 + MSE) plus a tiny KL term, like SD's autoencoder without the GAN loss."""
    import torch

    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, _lr_lambda(min(cfg.warmup_steps, cfg.vae_steps // 4 + 1), cfg.vae_steps)
    )
    vae.train()
    for step in range(cfg.vae_steps):
        idx = torch.randint(len(pixels), (cfg.vae_batch_size,), generator=gen)
        x = pixels[idx]
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)
        rec = vae.decode(z).sample
        loss = (rec - x).abs().mean() + ((rec - x) ** 2).mean() + cfg.kl_weight * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0 or step == cfg.vae_steps - 1:
            log({"stage": "vae", "step": step, "loss": round(loss.item(), 5)})
    vae.eval()
    vae.requires_grad_(False)


def refine_decoder(vae, cfg: PretrainConfig, log: Callable) -> None:
    """Stage 3: train only the VAE decoder (the encoder, hence the UNet's latent space, stays fixed).

    Like SD's later fine-tuned decoders, this sharpens reconstructions (here: palette colours, which
    a short joint VAE run gets wrong) without touching the UNet. Data and RNG depend only on the seed.
    """
    import torch

    from spin_diffusion.toy.datasets import generate_pairs

    if cfg.decoder_steps == 0:
        return
    web = generate_pairs(cfg.n_images, cfg.seed, "web", cfg.image_size)
    curated = generate_pairs(cfg.vae_curated_images, cfg.seed, "curated", cfg.image_size)
    pixels = _images_to_tensor([im for _, im in web + curated])
    gen = torch.Generator().manual_seed(cfg.seed + 3)
    with torch.inference_mode():
        mean, std = encode_latents(vae, pixels)
    decoder = [p for m in (vae.decoder, vae.post_quant_conv) if m is not None for p in m.parameters()]
    vae.requires_grad_(False)
    for p in decoder:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(decoder, lr=cfg.vae_lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg.decoder_steps // 10 + 1, cfg.decoder_steps))
    vae.train()
    for step in range(cfg.decoder_steps):
        idx = torch.randint(len(pixels), (cfg.vae_batch_size,), generator=gen)
        z = mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=gen)
        rec = vae.decode(z).sample
        x = pixels[idx]
        loss = (rec - x).abs().mean() + ((rec - x) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == cfg.decoder_steps - 1:
            log({"stage": "decoder", "step": step, "loss": round(loss.item(), 5)})
    vae.eval()
    vae.requires_grad_(False)
    log({"stage": "decoder_done", "recon_fidelity": vae_recon_fidelity(vae, cfg)})


def vae_recon_fidelity(vae, cfg: PretrainConfig, n: int = 64) -> float:
    """Oracle fidelity of VAE reconstructions of curated images: the ceiling any UNet can reach."""
    import numpy as np
    import torch
    from PIL import Image

    from spin_diffusion.toy.datasets import generate_pairs
    from spin_diffusion.toy.oracle import judge

    pairs = generate_pairs(n, cfg.seed + 1, "curated", cfg.image_size)
    with torch.inference_mode():
        rec = vae.decode(vae.encode(_images_to_tensor([im for _, im in pairs])).latent_dist.mode()).sample
    arr = ((rec.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return round(
        float(
            np.mean([judge(Image.fromarray(a), t)["fidelity"] for a, (t, _) in zip(arr, pairs, strict=True)])
        ),
        4,
    )


def encode_latents(vae, pixels: torch.Tensor, batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std of every image (latents are re-sampled from them each step)."""
    import torch

    means, stds = [], []
    with torch.inference_mode():
        for i in range(0, len(pixels), batch):
            post = vae.encode(pixels[i : i + batch]).latent_dist
            means.append(post.mean)
            stds.append(post.std)
    return torch.cat(means), torch.cat(stds)


def denoiser_loop(
    modules: list,
    step_loss: Callable[[torch.Tensor], torch.Tensor],
    n_examples: int,
    cfg: PretrainConfig,
    gen,
    log: Callable,
    snapshot: Callable | None = None,
) -> None:
    """The denoiser stage every family shares: AdamW, warm-up + cosine, clipping, logging, snapshots.

    ``step_loss(idx)`` is the family's loss on the examples ``idx`` (drawn here, from ``gen``).
    """
    import torch

    params = [p for m in modules for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.unet_lr, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg.warmup_steps, cfg.unet_steps))
    for m in modules:
        m.train()
    for step in range(cfg.unet_steps):
        idx = torch.randint(n_examples, (cfg.unet_batch_size,), generator=gen)
        loss = step_loss(idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if step % 100 == 0 or step == cfg.unet_steps - 1:
            log(
                {
                    "stage": "denoiser",
                    "step": step,
                    "loss": round(loss.item(), 5),
                    "lr": sched.get_last_lr()[0],
                }
            )
        if (
            snapshot
            and cfg.snapshot_every
            and (step + 1) % cfg.snapshot_every == 0
            and step + 1 < cfg.unet_steps
        ):
            for m in modules:
                m.eval()
            snapshot(step + 1)
            for m in modules:
                m.train()
    for m in modules:
        m.eval()


def train_denoiser(
    pipe,
    latents,
    captions: list[str],
    cfg: PretrainConfig,
    gen,
    log: Callable,
    snapshot: Callable | None = None,
) -> None:
    """Joint UNet + text-encoder training on scaled latents with the scheduler's own noising."""
    import torch
    from diffusers import DDPMScheduler

    noise_sched = DDPMScheduler.from_config(pipe.scheduler.config)
    tok = pipe.tokenizer
    ids = tok(
        captions, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids
    empty = tok([""], padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids
    mean, std = latents
    sf = pipe.vae.config.scaling_factor

    def step_loss(idx: torch.Tensor) -> torch.Tensor:
        x0 = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=gen)) * sf
        batch_ids = ids[idx].clone()
        drop = torch.rand(len(idx), generator=gen) < cfg.p_empty_caption
        batch_ids[drop] = empty[0]
        eps = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (len(idx),), generator=gen)
        pred = pipe.unet(noise_sched.add_noise(x0, eps, t), t, pipe.text_encoder(batch_ids)[0]).sample
        return ((pred.float() - eps) ** 2).mean()

    denoiser_loop([pipe.unet, pipe.text_encoder], step_loss, len(ids), cfg, gen, log, snapshot)


def build_sd_pipeline(cfg: PretrainConfig):
    """The UNet family's tiny ``StableDiffusionPipeline`` at this config's sizes (random weights)."""
    from spin_diffusion.model.tiny import TinyPipelineSpec, build_tiny_pipeline
    from spin_diffusion.toy.world import VOCABULARY

    spec = TinyPipelineSpec(
        words=VOCABULARY,
        image_size=cfg.image_size,
        vae_channels=cfg.vae_channels,
        latent_channels=cfg.latent_channels,
        unet_channels=cfg.unet_channels,
        text_hidden_size=cfg.text_hidden_size,
        max_length=cfg.max_length,
    )
    return build_tiny_pipeline(spec, seed=cfg.seed)


def pretrain(
    cfg: PretrainConfig, out_dir: str | os.PathLike[str], log: Callable | None = None
) -> StableDiffusionPipeline:
    """Pretrain the UNet family's toy base (see :func:`run_stages`)."""
    return run_stages(cfg, out_dir, build_sd_pipeline, train_denoiser, log)


def calibrate_latents(vae, mean: torch.Tensor, std: torch.Tensor, gen) -> float:
    """Set ``scaling_factor`` (and ``shift_factor`` where the VAE has one, as SD3's does) so the
    denoiser's latents ``(z - shift) * scale`` have zero mean (with a shift) and unit std."""
    import torch

    z = mean + std * torch.randn(mean.shape, generator=gen)
    if vae.config.get("shift_factor") is not None:
        shift = z.mean().item()
        vae.register_to_config(shift_factor=round(shift, 5))
        z = z - shift
    sample_std = z.std().item()
    vae.register_to_config(scaling_factor=round(1.0 / sample_std, 5))
    return sample_std


def run_stages(
    cfg: PretrainConfig,
    out_dir: str | os.PathLike[str],
    build: Callable,
    train: Callable,
    log: Callable | None = None,
):
    """VAE, denoiser (``train``, the family's), decoder refinement; save atomically to ``out_dir``.

    ``build(cfg)`` makes the family's randomly initialised pipeline; the data, the VAE stages and
    the RNG streams are the same for every family.
    """
    import torch

    from spin_diffusion.toy.datasets import generate_pairs
    from spin_diffusion.toy.pretrain_io import load_frozen_vae, save_pipeline

    start = time.time()
    sink = log or (lambda rec: print(json.dumps(rec), flush=True))

    def log(rec: dict) -> None:
        sink({**rec, "elapsed": round(time.time() - start, 1)})

    torch.set_num_threads(cfg.threads)
    pairs = generate_pairs(cfg.n_images, cfg.seed, "web", cfg.image_size)
    captions = [t for t, _ in pairs]
    pixels = _images_to_tensor([im for _, im in pairs])
    log({"stage": "data", "n": len(pairs), "seconds": round(time.time() - start, 1)})
    pipe = build(cfg)
    gen = torch.Generator().manual_seed(cfg.seed)
    # The autoencoder sees both kinds of toy image (as SD's VAE saw general photos), so curated
    # images, the fine-tuning target, reconstruct well; the denoiser sees web data only.
    if cfg.vae_from is not None:
        pipe.vae = load_frozen_vae(Path(cfg.vae_from), pipe.vae.config)
        mean, std = encode_latents(pipe.vae, pixels)
        log({"stage": "vae_reused", "from": cfg.vae_from, "scaling_factor": pipe.vae.config.scaling_factor})
    else:
        curated = generate_pairs(cfg.vae_curated_images, cfg.seed, "curated", cfg.image_size)
        vae_pixels = torch.cat([pixels, _images_to_tensor([im for _, im in curated])]) if curated else pixels
        train_vae(pipe.vae, vae_pixels, cfg, gen, log)
        mean, std = encode_latents(pipe.vae, pixels)
        sample_std = calibrate_latents(pipe.vae, mean, std, gen)
        log({"stage": "vae_done", "latent_std": sample_std, "recon_fidelity": vae_recon_fidelity(pipe.vae, cfg), "scaling_factor": pipe.vae.config.scaling_factor,
             "shift_factor": pipe.vae.config.get("shift_factor"), "seconds": round(time.time() - start, 1)})  # fmt: skip

    def snapshot(step: int) -> None:
        save_pipeline(pipe, f"{out_dir}.step-{step}", {"config": cfg.model_dump(), "unet_step": step})
        log({"stage": "snapshot", "step": step})

    train(pipe, (mean, std), captions, cfg, gen, log, snapshot)
    if cfg.vae_from is None:
        refine_decoder(pipe.vae, cfg, log)
    save_pipeline(pipe, out_dir, {"config": cfg.model_dump(), "seconds": round(time.time() - start, 1)})
    log({"stage": "done", "seconds": round(time.time() - start, 1), "out_dir": str(out_dir)})
    return pipe
