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
        from spin_diffusion.tiny_pipeline import build_tiny_pipeline

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
