"""Whole-module weight helpers: a frozen reference copy and a content fingerprint."""

from __future__ import annotations

import copy
import hashlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def frozen_copy(unet: torch.nn.Module, dtype: torch.dtype | None = None) -> torch.nn.Module:
    """A frozen, eval-mode copy of ``unet`` (optionally in lower precision) to serve as reference."""
    ref = copy.deepcopy(unet)
    ref.requires_grad_(False)
    ref.eval()
    if dtype is not None and dtype != next(ref.parameters()).dtype:
        ref.to(dtype=dtype)
    return ref


def fingerprint_module(module: torch.nn.Module) -> str:
    """A short content hash of a module's weights, recorded in manifests to detect mixing models."""
    import torch

    h = hashlib.blake2b(digest_size=8)
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        t = tensor.detach().cpu().contiguous()
        h.update(str(t.dtype).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
