"""Whole-module weight helpers: a frozen reference copy, a content fingerprint, loading weights in place."""

from __future__ import annotations

import copy
import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

from spin_diffusion.errors import CheckpointError

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


def load_weights_in_place(unet: torch.nn.Module, unet_dir: str | os.PathLike[str]) -> None:
    """Overwrite ``unet``'s weights with a saved ``unet/`` directory's, one tensor at a time.

    Resuming a run replaces theta_{k-1} by theta_k this way, so memory never
    holds both; every file of a sharded save is read, and a directory from
    another architecture is refused before anything is written.
    """
    import torch
    from safetensors import safe_open

    files = sorted(Path(unet_dir).glob("*.safetensors"))
    state = unet.state_dict()
    shapes: dict[str, tuple[int, ...]] = {}
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            shapes.update({k: tuple(f.get_slice(k).get_shape()) for k in f.keys()})  # noqa: SIM118
    expected = {k: tuple(v.shape) for k, v in state.items()}
    if not files or shapes != expected:
        diff = sorted(set(shapes.items()) ^ set(expected.items()))
        first = diff[0][0] if diff else "no .safetensors files"
        raise CheckpointError(f"{unet_dir} does not match the base model's UNet (first difference: {first})")
    with torch.no_grad():
        for path in files:
            with safe_open(str(path), framework="pt") as f:
                for key in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                    state[key].copy_(f.get_tensor(key))
