"""spin-diffusion: self-play fine-tuning of text-to-image diffusion models.

Heavy libraries (torch, diffusers, transformers) are imported by the modules
that need them, never here, so the CLI answers quickly.
"""

__version__ = "0.1.0"
