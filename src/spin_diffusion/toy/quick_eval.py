"""Sample a pipeline on toy eval prompts and judge the images with the oracle.

A small, self-contained check used to characterise the shipped base model (TRAINING.md) and by
``spin-diffusion toy evaluate``; the full evaluation harness lives in ``spin_diffusion.evaluation``.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from spin_diffusion.model.loading import load_pipeline
from spin_diffusion.toy.datasets import eval_prompts
from spin_diffusion.toy.oracle import judge, set_metrics
from spin_diffusion.toy.render import render
from spin_diffusion.toy.world import parse_prompt


def sample_images(
    pipe, prompts: list[str], seed: int = 0, guidance: float = 5.0, steps: int = 20, batch_size: int = 32
) -> list[Image.Image]:
    """Deterministic batched sampling: image ``i`` uses generator seed ``seed + i``."""
    import torch

    size = pipe.vae.config.sample_size
    out: list[Image.Image] = []
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i : i + batch_size]
        gens = [torch.Generator().manual_seed(seed + i + k) for k in range(len(chunk))]
        with torch.inference_mode():
            res = pipe(chunk, height=size, width=size, num_inference_steps=steps, guidance_scale=guidance,
                       generator=gens, output_type="pil")  # fmt: skip
        out.extend(res.images)
    return out


def evaluate_model(
    model: str | os.PathLike[str],
    n_prompts: int = 64,
    images_per_prompt: int = 2,
    seed: int = 0,
    guidance: float = 5.0,
    steps: int = 20,
) -> dict[str, float]:
    """Oracle set metrics of a pipeline's samples on ``eval_prompts(n_prompts, seed)``."""

    pipe = load_pipeline(model)
    pipe.set_progress_bar_config(disable=True)
    prompts = [p for p in eval_prompts(n_prompts, seed) for _ in range(images_per_prompt)]
    images = sample_images(pipe, prompts, seed=seed, guidance=guidance, steps=steps)
    return {**set_metrics(images, prompts), **attribute_pass_rates(images, prompts)}


def attribute_pass_rates(images: list[Image.Image], prompts: list[str]) -> dict[str, float]:
    """``pass_<attribute>``: the share of the oracle's checks of that attribute passed (``pass_count``:
    the right number of objects), over every object the prompts name it for; which attributes a
    base reads from its prompt, beyond the one fidelity number."""
    passed: dict[str, list[bool]] = {}
    for image, prompt in zip(images, prompts, strict=True):
        for name, ok in judge(image, prompt)["checks"].items():
            passed.setdefault(name.rsplit(".", 1)[-1], []).append(bool(ok))
    return {f"pass_{a}": float(np.mean(oks)) for a, oks in sorted(passed.items())}


def evaluate_renders(
    n_prompts: int = 64, images_per_prompt: int = 2, seed: int = 0, style: str = "curated", size: int = 32
) -> dict[str, float]:
    """The same metrics on rendered images: the ceiling (curated) or the pretraining data (web)."""
    prompts = [p for p in eval_prompts(n_prompts, seed) for _ in range(images_per_prompt)]
    rng = np.random.default_rng(seed)
    images = [render(parse_prompt(p), size, style, rng) for p in prompts]  # type: ignore[arg-type]
    return {**set_metrics(images, prompts), **attribute_pass_rates(images, prompts)}
