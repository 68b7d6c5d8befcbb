"""Opponent sampling: batched DPM-Solver++ (20 steps, CFG in one doubled batch) vs the naive loop.

The naive baseline is what many training scripts do: one prompt at a time with
the pipeline's default 50-step DDPM-style sampler. Both produce the same
number of final latents; the ratio is measured in one run.

    .venv/bin/python benchmarks/bench_sampling.py [--model DIR] [--prompts 32]
"""

from __future__ import annotations

import argparse

import torch
from _common import best_of, model_dir

from spin_diffusion.models import load_pipeline
from spin_diffusion.sampling import generate_latents, sample_seed, use_scheduler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pipe = load_pipeline(model_dir(args.model))
    prompts = [f"a red circle {i}" for i in range(args.prompts)]
    seeds = [sample_seed(0, p, 0) for p in prompts]

    use_scheduler(pipe, "ddim")
    naive = best_of(
        lambda: generate_latents(
            pipe, prompts, seeds, num_inference_steps=50, guidance_scale=7.5, batch_size=1
        ),
        1,
    )
    use_scheduler(pipe, "dpmsolver++")
    one_by_one = best_of(
        lambda: generate_latents(
            pipe, prompts, seeds, num_inference_steps=20, guidance_scale=7.5, batch_size=1
        ),
        1,
    )
    batched = best_of(
        lambda: generate_latents(
            pipe, prompts, seeds, num_inference_steps=20, guidance_scale=7.5, batch_size=32
        ),
        1,
    )
    n = len(prompts)
    print(f"model: {model_dir(args.model)}  prompts: {n}  threads: {args.threads}")
    print(f"naive   (DDIM 50 steps, batch 1)      {naive:7.2f} s  {n / naive:7.1f} img/s")
    print(f"solver  (DPM-Solver++ 20, batch 1)    {one_by_one:7.2f} s  {n / one_by_one:7.1f} img/s")
    print(f"batched (DPM-Solver++ 20, batch 32)   {batched:7.2f} s  {n / batched:7.1f} img/s")
    print(
        f"speed-up of the default over naive: {naive / batched:.1f}x "
        f"(sampler {naive / one_by_one:.1f}x, batching {one_by_one / batched:.1f}x)"
    )


if __name__ == "__main__":
    main()
