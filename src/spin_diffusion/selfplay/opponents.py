"""The models of a self-play run: theta_k as the next opponent sees it, loaded or copied, and its reference.

Only the current opponent is kept in memory (no separate copy of the base), and
theta_k replaces theta_{k-1} in place (folded LoRA, weights loaded tensor by
tensor), so memory stays the same in every iteration. The precomputed reference-error
table is cached here too: it belongs to the opponent it was computed with.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from spin_diffusion.infra.atomic import atomic_file
from spin_diffusion.model.families import denoiser_component, denoiser_of, set_denoiser

if TYPE_CHECKING:
    import torch


def torch_dtype(name: str) -> torch.dtype:
    import torch

    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def frozen_reference(opponent: Any, trained: Any, dtype: torch.dtype) -> Any:
    """The frozen network a full fine-tuning reference runs: the opponent, in ``dtype``.

    When the trained model is a copy, the opponent is cast in place (it is not
    needed at full precision again: theta_k becomes the next opponent). When it
    trains the opponent itself (a precomputed reference), a cast copy lives only
    while the reference errors are computed.
    """
    from spin_diffusion.model.weights import frozen_copy

    if next(opponent.parameters()).dtype == dtype:
        return opponent
    if trained is opponent:
        return frozen_copy(opponent, dtype)
    return opponent.to(dtype=dtype)


def load_iteration_unet(template: Any, pipe: Any, model_dir: Path) -> Any:
    """theta_k from a finished iteration's ``model/`` directory, loaded into ``template`` in place.

    ``template`` is theta_{k-1}, which theta_k replaces: memory never holds both.
    ``unet/`` (full fine-tuning; LoRA from iteration 2 on) is copied in tensor by
    tensor; iteration 1's LoRA file is relative to the base, which ``template``
    then is, and is folded into it.
    """
    from spin_diffusion.model.loading import load_trained_into
    from spin_diffusion.model.weights import load_weights_in_place

    saved = Path(model_dir) / denoiser_component(template)
    if saved.is_dir():
        load_weights_in_place(template, saved)
        unet = template
    else:
        original = denoiser_of(pipe)
        set_denoiser(pipe, template)
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
