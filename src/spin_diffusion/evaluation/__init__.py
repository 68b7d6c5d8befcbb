"""Evaluation harness: scorers (PickScore, HPSv2, ImageReward, Aesthetic, toy oracle),
benchmark runner (generate -> score -> aggregate -> report), FID/KID.

Importing this package is light; heavy modules (torch, transformers) are
imported by the scorer and runner modules when they are used.
"""

from __future__ import annotations

from typing import Any

__all__ = ["build_scorer", "evaluate_models"]


def build_scorer(*args: Any, **kwargs: Any) -> Any:
    """See :func:`spin_diffusion.evaluation.registry.build_scorer`."""
    from spin_diffusion.evaluation.registry import build_scorer as _build

    return _build(*args, **kwargs)


def evaluate_models(*args: Any, **kwargs: Any) -> Any:
    """See :func:`spin_diffusion.evaluation.runner.evaluate_models`."""
    from spin_diffusion.evaluation.runner import evaluate_models as _evaluate

    return _evaluate(*args, **kwargs)
