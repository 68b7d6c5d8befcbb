"""Training data: sources, validation, transforms, cached VAE latents and evaluation prompt sets.

Only the torch-free configs are imported eagerly; the rest loads on first use
so that ``import spin_diffusion.data`` stays cheap for the CLI.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from spin_diffusion.config.data import DataConfig, PromptSetConfig

_LAZY = {
    "open_source": "sources",
    "scan_source": "sources",
    "Example": "sources",
    "PairExample": "sources",
    "DataSource": "sources",
    "SourceStats": "problems",
    "ensure_latent_cache": "latents",
    "LatentCache": "latents",
    "ImageTransform": "transforms",
    "load_prompts": "prompts",
}

__all__ = ["DataConfig", "PromptSetConfig", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f"spin_diffusion.data.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'spin_diffusion.data' has no attribute '{name}'")
