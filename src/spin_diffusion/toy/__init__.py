"""The embedded toy world: prompt grammar, renderer, exact oracle judge, data sets and base pretraining.

Importing this package is cheap (no torch); submodules that need torch import it lazily.
"""

from __future__ import annotations

from spin_diffusion.model.shipped import toy_base_path as base_model_path

__all__ = ["base_model_path"]
