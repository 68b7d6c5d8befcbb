"""Write trained models so that plain diffusers loads them: ``iter-k/model`` directories and full pipelines.

Each directory appears only when complete (written to a temporary folder, then renamed).
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from spin_diffusion.infra.atomic import atomic_directory
from spin_diffusion.model.families import denoiser_component, denoiser_of, set_denoiser
from spin_diffusion.model.lora import (
    LORA_ITERATIONS_KEY,
    LORA_KIND,
    LORA_KIND_KEY,
    LORA_WEIGHT_NAME,
    has_lora,
    lora_layers,
    merge_lora,
    read_lora_file,
    stack_loras,
    write_lora_file,
)

if TYPE_CHECKING:
    import torch
    from diffusers import DiffusionPipeline, UNet2DConditionModel


def save_trained_unet(
    unet: UNet2DConditionModel,
    out_dir: Path,
    previous: str | os.PathLike[str] | None = None,
    folded: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> Path:
    """Write an ``iter-k/model`` directory that plain diffusers loads as theta_k, whichever way.

    Full fine-tune: ``unet/``. LoRA: ``pytorch_lora_weights.safetensors``, always
    relative to the base model. ``previous`` is the ``model/`` directory of
    iteration k-1 when this LoRA was trained on top of it (k > 1): then the LoRA
    file holds every iteration's change so far (ranks concatenated, so
    ``load_lora_weights`` on the base gives theta_k) and ``unet/`` holds the
    merged theta_k. A previous LoRA file of unknown origin is never stacked on:
    only ``unet/`` is written then. ``folded``: the adapter's layers when
    :func:`~spin_diffusion.model.lora.fold_lora` has already folded it into
    ``unet`` (theta_k is then written from ``unet`` itself, with no merged
    copy). The directory appears only when complete.
    """
    out_dir = Path(out_dir)
    with atomic_directory(out_dir) as tmp:
        component = denoiser_component(unet)  # unet/ or transformer/
        if folded is not None:
            _save_lora_iteration(folded, lambda: unet, component, tmp, out_dir, previous)
        elif not has_lora(unet):
            unet.save_pretrained(str(tmp / component), safe_serialization=True)
        else:
            merged = lambda: merge_lora(copy.deepcopy(unet))  # noqa: E731 - called only when theta_k is written
            _save_lora_iteration(lora_layers(unet), merged, component, tmp, out_dir, previous)
    return out_dir


def _save_lora_iteration(
    layers: dict[str, tuple[torch.Tensor, torch.Tensor]],
    merged: Callable[[], torch.nn.Module],
    component: str,
    tmp: Path,
    out_dir: Path,
    previous: str | os.PathLike[str] | None,
) -> None:
    """The LoRA half of :func:`save_trained_unet`, written into the temporary directory ``tmp``.

    ``merged`` gives theta_k as a plain network; it is called only when ``component/`` is written.
    """
    iterations = 1
    if previous is not None:
        merged().save_pretrained(str(tmp / component), safe_serialization=True)
        prev_file = Path(previous) / LORA_WEIGHT_NAME
        prev_layers, meta = read_lora_file(prev_file) if prev_file.is_file() else ({}, {})
        if meta.get(LORA_KIND_KEY) == LORA_KIND:
            layers = stack_loras(prev_layers, layers)
            iterations = int(meta.get(LORA_ITERATIONS_KEY, "1")) + 1
        else:  # e.g. a delta-only file of an older version: stacking on it would be wrong
            logging.getLogger(__name__).warning(
                "%s holds no LoRA relative to the base model (older run?): %s gets only unet/",
                Path(previous),
                out_dir,
            )
            layers = {}
    if layers:
        write_lora_file(layers, tmp / LORA_WEIGHT_NAME, iterations, component)


def save_full_pipeline(
    pipe: DiffusionPipeline,
    unet: UNet2DConditionModel,
    out_dir: Path,
    extra: Callable[[Path], None] | None = None,
) -> Path:
    """Save the base pipeline with ``unet`` in place (LoRA fused into a copy), atomically.

    ``extra`` writes further files (a model card, an adapter) into the
    directory before it appears, so the result is complete or absent.
    """
    out_dir = Path(out_dir)
    if has_lora(unet):
        unet = copy.deepcopy(unet)
        unet = merge_lora(unet)
    original = denoiser_of(pipe)
    set_denoiser(pipe, unet)
    try:
        with atomic_directory(out_dir) as tmp:
            pipe.save_pretrained(str(tmp), safe_serialization=True)
            if extra is not None:
                extra(tmp)
    finally:
        set_denoiser(pipe, original)
    return out_dir
