"""Shared set-up for the benchmarks: a model to time (the shipped toy base, or a tiny one)."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path


def model_dir(arg: str | None) -> Path:
    """The pipeline to benchmark: ``arg`` if given, else the shipped toy base, else a fresh tiny one."""
    if arg:
        return Path(arg)
    try:
        from spin_diffusion.toy import base_model_path

        return base_model_path()
    except ImportError:
        from spin_diffusion.model.tiny import build_tiny_pipeline

        path = Path(tempfile.mkdtemp()) / "tiny"
        build_tiny_pipeline().save_pretrained(str(path))
        return path


def best_of(fn: Callable[[], object], repeats: int = 3) -> float:
    """Fastest of ``repeats`` runs (seconds): the least noisy estimate on a shared machine."""
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


_WORDS = ("red", "blue", "green", "circle", "square", "left", "right", "small", "large")


def toy_batch(pipe, size: int, *, paired: bool, seed: int = 0):
    """A training batch of the pipeline's latent shape: random latents, seeded t and noise, toy captions."""
    import torch

    from spin_diffusion.training.batches import Batch

    c, s = pipe.unet.config.in_channels, pipe.unet.config.sample_size
    g = torch.Generator().manual_seed(seed)
    return Batch(
        indices=list(range(size)),
        epoch=[0] * size,
        captions=[f"a {_WORDS[i % 3]} {_WORDS[3 + i % 2]} on the {_WORDS[5 + i % 2]}" for i in range(size)],
        latents_a=torch.randn(size, c, s, s, generator=g),
        latents_b=torch.randn(size, c, s, s, generator=g) if paired else None,
        timesteps=torch.randint(0, 1000, (size,), generator=g),
        noise=torch.randn(size, c, s, s, generator=g),
    )


def conditioning(pipe, captions):
    """The UNet conditioning for ``captions``, as training computes it."""
    from spin_diffusion.model.families import Conditioning, encode_prompts

    return Conditioning(encode_prompts(pipe.text_encoder, pipe.tokenizer, captions))


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Median of ``repeats`` timed runs after one warm-up."""
    import statistics

    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
