"""Models shipped inside the package, and the aliases that name them in configs (no torch here)."""

from __future__ import annotations

from collections.abc import Callable
from importlib.resources import files
from pathlib import Path


def toy_base_path() -> Path:
    """Directory of the shipped, pretrained toy ``StableDiffusionPipeline`` (diffusers layout)."""
    return Path(str(files("spin_diffusion") / "assets" / "toy-base"))


def toy_flow_base_path() -> Path:
    """Directory of the shipped, pretrained flow-matching toy ``StableDiffusion3Pipeline`` (no T5)."""
    return Path(str(files("spin_diffusion") / "assets" / "toy-flow-base"))


#: Names that stand for a model shipped inside the package, so configs work wherever it is installed.
MODEL_ALIASES: dict[str, Callable[[], Path]] = {
    "toy-base": toy_base_path,
    "toy-flow-base": toy_flow_base_path,
}
