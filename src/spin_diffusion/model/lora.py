"""LoRA adapters on the UNet: attach (peft), switch off for the reference, read, write, stack and merge.

Every LoRA file we write is relative to the base model theta_0, in the key
layout ``pipe.load_lora_weights`` expects, so plain diffusers applies it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from spin_diffusion.errors import CheckpointError, ConfigError

if TYPE_CHECKING:
    import torch
    from diffusers import DiffusionPipeline, UNet2DConditionModel

#: The file name diffusers' ``load_lora_weights(dir)`` looks for; the one definition in the package.
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
DEFAULT_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def load_lora_into(pipe: DiffusionPipeline, lora_path: str | os.PathLike[str]) -> None:
    """Apply a saved LoRA (a directory or a .safetensors file) to ``pipe``."""
    path = Path(lora_path)
    if not path.exists():
        raise CheckpointError(f"LoRA weights {path} do not exist")
    try:
        if path.is_dir():
            pipe.load_lora_weights(str(path), weight_name=LORA_WEIGHT_NAME)
        else:
            pipe.load_lora_weights(str(path.parent), weight_name=path.name)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise CheckpointError(
            f"could not apply LoRA {path} to this pipeline: {str(exc).splitlines()[0]}"
        ) from exc


@dataclass(frozen=True)
class LoraSettings:
    rank: int = 4
    alpha: float = 4.0
    dropout: float = 0.0
    target_modules: Sequence[str] = DEFAULT_LORA_TARGETS


# Layer types peft can wrap with a LoRA (what a target module name must point at).
_LORA_LAYER_TYPES = ("Linear", "Conv1d", "Conv2d", "Conv3d", "Embedding")


def _layer_suffix(name: str) -> str:
    """``...attn1.to_q`` -> ``to_q``; ``...attn1.to_out.0`` -> ``to_out.0`` (how configs name layers)."""
    parts = name.split(".")
    return ".".join(parts[-2:]) if parts[-1].isdigit() and len(parts) > 1 else parts[-1]


def check_lora_targets(unet: torch.nn.Module, target_modules: Sequence[str]) -> None:
    """Refuse LoRA target names that match no adaptable layer, before any work is done.

    peft matches a name against the end of each module path (``to_q`` matches
    ``...attn1.to_q``); a name that matches nothing, or only blocks peft cannot
    wrap, otherwise surfaces as a peft traceback after the model and data were loaded.
    """
    import torch

    layer_types = tuple(getattr(torch.nn, t) for t in _LORA_LAYER_TYPES)
    targets = list(target_modules)
    if not targets:
        raise ConfigError("model.lora.target_modules is empty; name at least one layer, e.g. to_q")
    layers = [n for n, m in unet.named_modules() if n and isinstance(m, layer_types)]
    unmatched = [t for t in targets if not any(n == t or n.endswith(f".{t}") for n in layers)]
    if unmatched:
        suffixes = list(dict.fromkeys(_layer_suffix(n) for n in layers))  # in network order
        raise ConfigError(
            f"model.lora.target_modules: {', '.join(unmatched)} match no Linear or Conv layer of this UNet "
            f"(layer names here include {', '.join(suffixes[:12])})"
        )


def add_lora(unet: UNet2DConditionModel, settings: LoraSettings) -> None:
    """Freeze the base weights and attach a trainable peft LoRA adapter to the UNet."""
    from peft import LoraConfig

    check_lora_targets(unet, settings.target_modules)
    unet.requires_grad_(False)
    unet.add_adapter(
        LoraConfig(
            r=settings.rank,
            lora_alpha=settings.alpha,
            lora_dropout=settings.dropout,
            init_lora_weights="gaussian",
            target_modules=list(settings.target_modules),
        )
    )
    found = [n for n, p in unet.named_parameters() if p.requires_grad]
    if not found:
        raise CheckpointError(
            f"LoRA target_modules {list(settings.target_modules)} matched no layer of this UNet"
        )


def has_lora(unet: torch.nn.Module) -> bool:
    return bool(getattr(unet, "peft_config", None))


@contextlib.contextmanager
def adapters_disabled(unet: UNet2DConditionModel) -> Iterator[None]:
    """Run the LoRA UNet as its base network: the reference without a second copy."""
    unet.disable_adapters()
    try:
        yield
    finally:
        unet.enable_adapters()


def lora_state_dict(unet: UNet2DConditionModel) -> dict[str, torch.Tensor]:
    """The adapter weights in the key layout ``load_lora_weights`` expects."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    return convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))


# Safetensors metadata of the LoRA files we write: every one is relative to the base model theta_0.
LORA_KIND_KEY = "spin_diffusion.lora"
LORA_KIND = "relative-to-base"
LORA_ITERATIONS_KEY = "spin_diffusion.iterations"


def lora_layers(unet: torch.nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Each adapted layer's ``(A, scale * B)``: the change it adds is ``(scale * B) @ A``.

    The scale alpha/r is folded into B because diffusers loads a LoRA file
    without alphas at scale 1; with alpha != r the file would otherwise load wrong.
    """
    from peft.tuners.lora import LoraLayer

    out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for name, module in unet.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        for adapter in module.active_adapters:
            if adapter in module.lora_A:
                a = module.lora_A[adapter].weight.detach()
                b = module.lora_B[adapter].weight.detach() * module.scaling[adapter]
                out[name] = (a.clone(), b.clone())
    return out


def read_lora_file(path: Path) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], dict[str, str]]:
    """The layers of a LoRA file we wrote (diffusers key layout) and its metadata."""
    from safetensors import safe_open

    down, up = ".lora.down.weight", ".lora.up.weight"
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    layers = {}
    for key, a in tensors.items():
        prefix = key.split(".", 1)[0] + "."  # the component: unet. or transformer.
        if prefix in ("unet.", "transformer.") and key.endswith(down):
            name = key[len(prefix) : -len(down)]
            b = tensors.get(f"{prefix}{name}{up}")
            if b is None:
                raise CheckpointError(f"LoRA file {path} has {key} but no matching {up[1:]}")
            layers[name] = (a, b)
    return layers, meta


def write_lora_file(
    layers: dict[str, tuple[torch.Tensor, torch.Tensor]], path: Path, iterations: int, component: str = "unet"
) -> None:
    """A ``pytorch_lora_weights.safetensors`` that ``pipe.load_lora_weights(dir)`` applies at scale 1."""
    from safetensors.torch import save_file

    tensors = {}
    for name, (a, b) in sorted(layers.items()):
        tensors[f"{component}.{name}.lora.down.weight"] = a.contiguous()
        tensors[f"{component}.{name}.lora.up.weight"] = b.contiguous()
    meta = {"format": "pt", LORA_KIND_KEY: LORA_KIND, LORA_ITERATIONS_KEY: str(iterations)}
    save_file(tensors, str(path), metadata=meta)


def stack_loras(
    first: dict[str, tuple[torch.Tensor, torch.Tensor]], second: dict[str, tuple[torch.Tensor, torch.Tensor]]
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """One LoRA whose change is the sum of both: ranks concatenated (A stacked, B side by side)."""
    import torch

    out = dict(first)
    for name, (a2, b2) in second.items():
        if name in out:
            a1, b1 = out[name]
            out[name] = (torch.cat([a1.to(a2.dtype), a2], dim=0), torch.cat([b1.to(b2.dtype), b2], dim=1))
        else:
            out[name] = (a2, b2)
    return out


def merge_lora(unet: UNet2DConditionModel) -> UNet2DConditionModel:
    """Fold the LoRA weights into the base layers and remove the adapter wrappers (plain UNet keys)."""
    unet.fuse_lora(lora_scale=1.0)
    unet.unload_lora()
    return unet


def fold_lora(unet: UNet2DConditionModel) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Fold the LoRA into ``unet`` in place (it becomes the plain theta_k); the adapter's layers, for saving.

    What a self-play iteration does with its trained LoRA: the network goes on
    as the next opponent with no second copy, and ``save_trained_unet(folded=...)``
    writes the file relative to the base from the returned layers.
    """
    layers = lora_layers(unet)
    merge_lora(unet)
    return layers
