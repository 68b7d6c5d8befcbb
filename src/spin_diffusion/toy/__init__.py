"""The embedded toy world: prompt grammar, renderer, exact oracle judge and the shipped base model.

Importing this package is cheap (no torch); submodules that need torch import it lazily.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def base_model_path() -> Path:
    """Directory of the shipped, pretrained toy ``StableDiffusionPipeline`` (diffusers layout)."""
    return Path(str(files("spin_diffusion") / "assets" / "toy-base"))


__all__ = ["base_model_path"]
