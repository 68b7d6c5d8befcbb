"""Load, adapt, freeze and save diffusers text-to-image models.

One place knows how a pipeline is found (local directory or hub id), how a
UNet's per-sample error is computed for the scheduler's prediction type, how
the trainable model (full or LoRA) and its frozen reference are made, and how
results are written so that plain diffusers loads them.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spin_diffusion.errors import CheckpointError, ConfigError
from spin_diffusion.infra.atomic import atomic_directory
from spin_diffusion.model.families import Conditioning, as_conditioning, family_for_class, family_of_directory
from spin_diffusion.model.shipped import MODEL_ALIASES
from spin_diffusion.objectives.core import denoising_error

if TYPE_CHECKING:
    import torch
    from diffusers import DiffusionPipeline, UNet2DConditionModel

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
DEFAULT_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def looks_like_local_path(name: str) -> bool:
    """Hub ids are ``owner/name``; anything else that does not exist is a missing path."""
    return not _HUB_ID.match(name)


def resolve_model_source(name_or_path: str | os.PathLike[str]) -> str:
    """The directory or hub id a ``model.pretrained``/``models.NAME.path`` value means.

    An alias (``toy-base``: the toy pipeline shipped with the package) resolves
    to its installed location unless a path of that name exists; anything else
    is returned as given.
    """
    name = str(name_or_path)
    if name in MODEL_ALIASES and not Path(name).expanduser().exists():
        return str(MODEL_ALIASES[name]())
    return name


def load_pipeline(
    name_or_path: str | os.PathLike[str],
    *,
    trained: str | os.PathLike[str] | None = None,
    torch_dtype: torch.dtype | None = None,
    revision: str | None = None,
) -> DiffusionPipeline:
    """Load a text-to-image pipeline with one-line errors that say what to do.

    Works the same for a shipped toy model, a local SD-1.5 copy or (online) a
    hub id, so tests exercise the path users run. ``trained`` applies fine-tuned
    weights on top (see :func:`load_trained_into`).
    """
    from diffusers import DiffusionPipeline

    name = resolve_model_source(name_or_path)
    path = Path(name).expanduser()
    kwargs: dict[str, Any] = {"revision": revision}
    if torch_dtype is not None:
        kwargs["torch_dtype"] = torch_dtype
    if path.exists():
        if not path.is_dir() or not (path / "model_index.json").is_file():
            raise CheckpointError(
                f"{path} is not a diffusers pipeline directory (no model_index.json); "
                "point model.pretrained at a folder saved with save_pretrained()"
            )
        source = str(path)
        family_of_directory(path)  # an unsupported pipeline class is refused before its weights load
        if "safety_checker" in (path / "model_index.json").read_text():
            kwargs.update(safety_checker=None, requires_safety_checker=False)
    elif looks_like_local_path(name):
        raise CheckpointError(
            f"model path {name} does not exist; give a local diffusers directory or a hub id"
        )
    else:
        source = name
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    try:
        with quiet_loading():
            pipe = DiffusionPipeline.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        if source == name and not path.exists():
            raise CheckpointError(
                f"could not load hub id {name!r} ({type(exc).__name__}); this machine may be offline: "
                "download the model elsewhere and pass its local directory"
            ) from exc
        raise CheckpointError(f"could not load pipeline from {source}: {str(exc).splitlines()[0]}") from exc
    family = family_for_class(type(pipe).__name__, source)
    missing = [c for c in family.required_components if getattr(pipe, c, None) is None]
    if missing:
        raise CheckpointError(
            f"{source} is not a complete {family.pipeline_class}: missing {', '.join(missing)}"
        )
    if trained is not None:
        load_trained_into(pipe, trained)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """No "Loading pipeline components" / "Loading weights" bars for a model load that takes a second.

    Both libraries' bars are switched off only for the load and restored after,
    so a caller's own use of diffusers or transformers is left as it was.
    """
    from diffusers.utils import logging as dlogging
    from transformers.utils import logging as tlogging

    d_on, t_on = dlogging.is_progress_bar_enabled(), tlogging.is_progress_bar_enabled()
    dlogging.disable_progress_bar()
    tlogging.disable_progress_bar()
    try:
        yield
    finally:
        if d_on:
            dlogging.enable_progress_bar()
        if t_on:
            tlogging.enable_progress_bar()


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


def load_unet_into(pipe: DiffusionPipeline, unet_dir: str | os.PathLike[str]) -> None:
    """Replace the pipeline's UNet with a fine-tuned one saved as ``unet/``, checking it fits."""
    from diffusers import UNet2DConditionModel

    path = Path(unet_dir)
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path} is not a diffusers UNet directory (no config.json)")
    unet = UNet2DConditionModel.from_pretrained(str(path), torch_dtype=pipe.unet.dtype)
    check_same_architecture(pipe.unet, unet, what=str(path))
    pipe.unet = unet


def check_same_architecture(expected: torch.nn.Module, found: torch.nn.Module, what: str) -> None:
    """Refuse a checkpoint from another model (different parameter names or shapes)."""
    exp = {k: tuple(v.shape) for k, v in expected.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in found.state_dict().items()}
    if exp != got:
        diff = sorted(set(exp.items()) ^ set(got.items()))
        raise CheckpointError(f"{what} does not match the base model's UNet (first difference: {diff[0][0]})")


def training_scheduler(pipe: DiffusionPipeline) -> Any:
    """The DDPM forward process matching the pipeline's scheduler config (what SD trains with)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(pipe.scheduler.config)


def diffusion_target(
    noise_scheduler: Any, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """What the UNet should predict, as the scheduler's ``prediction_type`` says."""
    kind = noise_scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return noise_scheduler.get_velocity(latents, noise, timesteps)
    if kind == "sample":
        return latents
    raise CheckpointError(f"unsupported scheduler prediction_type {kind!r}")


def prediction_error(
    unet: torch.nn.Module,
    noise_scheduler: Any,
    latents: torch.Tensor,
    cond: Conditioning | torch.Tensor,
    timesteps: torch.Tensor,
    noise: torch.Tensor,
) -> torch.Tensor:
    """Per-sample denoising error ``err(model, x0, c, t, eps)`` of DESIGN.md section 2, shape ``[B]``.

    ``cond`` comes from the model family's prompt encoder (bare hidden states
    are taken as SD 1/2 conditioning).
    """
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    target = diffusion_target(noise_scheduler, latents, noise, timesteps)
    dtype = next(unet.parameters()).dtype
    pred = unet(noisy.to(dtype), timesteps, **as_conditioning(cond).unet_kwargs(dtype)).sample
    return denoising_error(pred, target)


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


def frozen_copy(unet: torch.nn.Module, dtype: torch.dtype | None = None) -> torch.nn.Module:
    """A frozen, eval-mode copy of ``unet`` (optionally in lower precision) to serve as reference."""
    ref = copy.deepcopy(unet)
    ref.requires_grad_(False)
    ref.eval()
    if dtype is not None and dtype != next(ref.parameters()).dtype:
        ref.to(dtype=dtype)
    return ref


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


def _read_lora_file(path: Path) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], dict[str, str]]:
    """The layers of a LoRA file we wrote (diffusers key layout) and its metadata."""
    from safetensors import safe_open

    down, up = ".lora.down.weight", ".lora.up.weight"
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    layers = {}
    for key, a in tensors.items():
        if key.startswith("unet.") and key.endswith(down):
            name = key[len("unet.") : -len(down)]
            b = tensors.get(f"unet.{name}{up}")
            if b is None:
                raise CheckpointError(f"LoRA file {path} has {key} but no matching {up[1:]}")
            layers[name] = (a, b)
    return layers, meta


def _write_lora_file(
    layers: dict[str, tuple[torch.Tensor, torch.Tensor]], path: Path, iterations: int
) -> None:
    """A ``pytorch_lora_weights.safetensors`` that ``pipe.load_lora_weights(dir)`` applies at scale 1."""
    from safetensors.torch import save_file

    tensors = {}
    for name, (a, b) in sorted(layers.items()):
        tensors[f"unet.{name}.lora.down.weight"] = a.contiguous()
        tensors[f"unet.{name}.lora.up.weight"] = b.contiguous()
    meta = {"format": "pt", LORA_KIND_KEY: LORA_KIND, LORA_ITERATIONS_KEY: str(iterations)}
    save_file(tensors, str(path), metadata=meta)


def _stack_loras(
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


def save_trained_unet(
    unet: UNet2DConditionModel, out_dir: Path, previous: str | os.PathLike[str] | None = None
) -> Path:
    """Write an ``iter-k/model`` directory that plain diffusers loads as theta_k, whichever way.

    Full fine-tune: ``unet/``. LoRA: ``pytorch_lora_weights.safetensors``, always
    relative to the base model. ``previous`` is the ``model/`` directory of
    iteration k-1 when this LoRA was trained on top of it (k > 1): then the LoRA
    file holds every iteration's change so far (ranks concatenated, so
    ``load_lora_weights`` on the base gives theta_k) and ``unet/`` holds the
    merged theta_k. A previous LoRA file of unknown origin is never stacked on:
    only ``unet/`` is written then. The directory appears only when complete.
    """
    out_dir = Path(out_dir)
    with atomic_directory(out_dir) as tmp:
        if not has_lora(unet):
            unet.save_pretrained(str(tmp / "unet"), safe_serialization=True)
        else:
            _save_lora_iteration(unet, tmp, out_dir, previous)
    return out_dir


def _save_lora_iteration(
    unet: UNet2DConditionModel, tmp: Path, out_dir: Path, previous: str | os.PathLike[str] | None
) -> None:
    """The LoRA half of :func:`save_trained_unet`, written into the temporary directory ``tmp``."""
    import logging

    layers, iterations = lora_layers(unet), 1
    if previous is not None:
        merge_lora(copy.deepcopy(unet)).save_pretrained(str(tmp / "unet"), safe_serialization=True)
        prev_file = Path(previous) / LORA_WEIGHT_NAME
        prev_layers, meta = _read_lora_file(prev_file) if prev_file.is_file() else ({}, {})
        if meta.get(LORA_KIND_KEY) == LORA_KIND:
            layers = _stack_loras(prev_layers, layers)
            iterations = int(meta.get(LORA_ITERATIONS_KEY, "1")) + 1
        else:  # e.g. a delta-only file of an older version: stacking on it would be wrong
            logging.getLogger(__name__).warning(
                "%s holds no LoRA relative to the base model (older run?): %s gets only unet/",
                Path(previous),
                out_dir,
            )
            layers = {}
    if layers:
        _write_lora_file(layers, tmp / LORA_WEIGHT_NAME, iterations)


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
    original = pipe.unet
    pipe.unet = unet
    try:
        with atomic_directory(out_dir) as tmp:
            pipe.save_pretrained(str(tmp), safe_serialization=True)
            if extra is not None:
                extra(tmp)
    finally:
        pipe.unet = original
    return out_dir


def merge_lora(unet: UNet2DConditionModel) -> UNet2DConditionModel:
    """Fold the LoRA weights into the base layers and remove the adapter wrappers (plain UNet keys)."""
    unet.fuse_lora(lora_scale=1.0)
    unet.unload_lora()
    return unet


def load_trained_into(pipe: DiffusionPipeline, model_dir: str | os.PathLike[str]) -> None:
    """Apply fine-tuned weights to ``pipe``: an ``iter-k/model`` directory written by
    :func:`save_trained_unet` (``unet/`` or a LoRA), a UNet directory, a full
    pipeline directory, or a LoRA ``.safetensors`` file.

    ``unet/`` wins when a directory has both (LoRA runs from iteration 2 on); a
    LoRA file is applied to ``pipe`` as it is, so ``pipe`` must be the base model.
    """
    model_dir = Path(model_dir)
    if not model_dir.exists():
        raise CheckpointError(f"fine-tuned weights {model_dir} do not exist")
    if model_dir.is_file():
        load_lora_into(pipe, model_dir)
    elif (model_dir / "config.json").is_file():
        load_unet_into(pipe, model_dir)
    elif (model_dir / "unet").is_dir():
        load_unet_into(pipe, model_dir / "unet")
    elif (model_dir / LORA_WEIGHT_NAME).is_file():
        load_lora_into(pipe, model_dir)
    elif (model_dir / "model_index.json").is_file():
        load_unet_into(pipe, model_dir / "unet")
    else:
        raise CheckpointError(f"{model_dir} holds neither unet/ nor {LORA_WEIGHT_NAME}")


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
