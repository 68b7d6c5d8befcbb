"""Training-step costs: one concatenated forward per model vs two, and precomputed vs live reference.

    .venv/bin/python benchmarks/bench_training_step.py [--model DIR] [--batch 8]

Prints the time of one SPIN loss+backward for each variant and their ratios,
measured in one run, plus the memory the reference model occupies (which the
precomputed path does not hold at all).
"""

from __future__ import annotations

import argparse

import torch
from _common import best_of, model_dir

from spin_diffusion.batches import Batch
from spin_diffusion.conditioning import encode_prompts
from spin_diffusion.config import TrainingConfig
from spin_diffusion.losses import compute_loss
from spin_diffusion.models import frozen_copy, load_pipeline, prediction_error, training_scheduler
from spin_diffusion.objectives import spin_loss
from spin_diffusion.reference import ModuleReference, PrecomputedReference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pipe = load_pipeline(model_dir(args.model))
    sched = training_scheduler(pipe)
    unet = frozen_copy(pipe.unet)
    unet.requires_grad_(True)
    unet.train()
    ref = ModuleReference(frozen_copy(pipe.unet), sched)
    c, s = pipe.unet.config.in_channels, pipe.unet.config.sample_size
    g = torch.Generator().manual_seed(0)
    b = args.batch
    batch = Batch(
        indices=list(range(b)),
        epoch=[0] * b,
        captions=["a red circle"] * b,
        latents_a=torch.randn(b, c, s, s, generator=g),
        latents_b=torch.randn(b, c, s, s, generator=g),
        timesteps=torch.randint(0, 1000, (b,), generator=g),
        noise=torch.randn(b, c, s, s, generator=g),
    )
    emb = encode_prompts(pipe.text_encoder, pipe.tokenizer, batch.captions)
    cfg = TrainingConfig(beta=2000)
    table = torch.rand(1, b, 2)

    def concatenated() -> None:
        compute_loss("spin", cfg, unet, sched, ref, batch, emb).loss.backward()

    def separate() -> None:
        t, eps = batch.timesteps, batch.noise
        errs = []
        for lat in (batch.latents_a, batch.latents_b):
            m = prediction_error(unet, sched, lat, emb, t, eps)
            with torch.no_grad():
                r = prediction_error(ref.unet, sched, lat, emb, t, eps)
            errs += [m, r]
        spin_loss(*errs, beta=2000).mean().backward()

    def precomputed() -> None:
        compute_loss("spin", cfg, unet, sched, PrecomputedReference(table), batch, emb).loss.backward()

    t_cat, t_sep, t_pre = best_of(concatenated, 5), best_of(separate, 5), best_of(precomputed, 5)
    ref_mb = sum(p.numel() * p.element_size() for p in ref.unet.parameters()) / 2**20
    print(f"batch {b} pairs, latents {c}x{s}x{s}, threads {args.threads}")
    print(f"separate forwards (4 per step)      {t_sep * 1000:8.1f} ms")
    print(
        f"concatenated (1 per model)          {t_cat * 1000:8.1f} ms   {t_sep / t_cat:.2f}x faster than separate"
    )
    print(
        f"precomputed reference (no ref fwd)  {t_pre * 1000:8.1f} ms   {t_cat / t_pre:.2f}x faster than live reference"
    )
    print(f"reference UNet held in memory by the live path: {ref_mb:.1f} MiB (precomputed path: 0)")


if __name__ == "__main__":
    main()
