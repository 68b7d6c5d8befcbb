"""The models of a self-play run: theta_k as the next opponent sees it, loaded or copied, and its reference.

Only the current opponent is kept in memory (no separate copy of the base), so
memory stays the same in every iteration. The precomputed reference-error
table is cached here too: it belongs to the opponent it was computed with.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spin_diffusion.infra.atomic import atomic_file
from spin_diffusion.model.families import denoiser_of, set_denoiser

if TYPE_CHECKING:
    import torch


def torch_dtype(name: str) -> torch.dtype:
    import torch

    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def merged_copy(unet: Any) -> Any:
    """A plain UNet with any LoRA folded in: theta_k as the next opponent sees it."""
    from spin_diffusion.model.lora import has_lora, merge_lora

    clone = copy.deepcopy(unet)
    if has_lora(clone):
        clone = merge_lora(clone)
    clone.requires_grad_(False)
    clone.eval()
    return clone


def load_iteration_unet(template: Any, pipe: Any, model_dir: Path) -> Any:
    """theta_k from a finished iteration's ``model/`` directory, as a plain (merged) UNet."""
    from spin_diffusion.model.loading import load_trained_into

    original = denoiser_of(pipe)
    set_denoiser(pipe, copy.deepcopy(template))
    try:
        load_trained_into(pipe, model_dir)
        if getattr(denoiser_of(pipe), "peft_config", None):
            pipe.fuse_lora()
            pipe.unload_lora_weights()
        unet = denoiser_of(pipe)
    finally:
        set_denoiser(pipe, original)
    unet.requires_grad_(False)
    unet.eval()
    return unet


def reference_table(path: Path, compute: Any, accelerator: Any, key: str) -> torch.Tensor:
    """The precomputed reference errors: reused if made for ``key``, else computed and saved once.

    ``compute`` runs on every rank (each takes its share of the chunks and all
    merge them); only the main process writes the table.
    """
    from safetensors.torch import load_file, save_file

    if saved_table_key(path) == key:
        return load_file(str(path))["errors"]
    table = compute()
    if accelerator.is_main_process:
        with atomic_file(path) as tmp:
            save_file({"errors": table.contiguous()}, str(tmp), metadata={"key": key})
    accelerator.wait_for_everyone()
    return table


def saved_table_key(path: Path) -> str | None:
    """The key a saved reference table was made for (None if absent, damaged or from an older version)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("key")
    except Exception:  # noqa: BLE001 - missing or damaged: compute again
        return None
