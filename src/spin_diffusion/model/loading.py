"""Find and load diffusers text-to-image pipelines, and apply fine-tuned weights to them.

A pipeline is a local directory, a shipped alias (``toy-base``) or, online, a
hub id; every failure is one line that says what to do.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spin_diffusion.errors import CheckpointError
from spin_diffusion.model.families import (
    denoiser_of,
    family_for_class,
    family_of,
    family_of_directory,
    set_denoiser,
)
from spin_diffusion.model.lora import LORA_WEIGHT_NAME, load_lora_into
from spin_diffusion.model.shipped import MODEL_ALIASES
from spin_diffusion.model.weight_files import is_refused_pickle, refuse_pickled_weights

if TYPE_CHECKING:
    import torch
    from diffusers import DiffusionPipeline

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
        refuse_pickled_weights(path, "model weights", components=True)
        index = json.loads((path / "model_index.json").read_text())
        if "safety_checker" in index:
            kwargs.update(safety_checker=None, requires_safety_checker=False)
        # a component saved as absent (SD3 without T5: text_encoder_3 [null, null]) is passed as None
        kwargs.update({k: None for k, v in index.items() if v == [None, None] and k not in kwargs})
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
    except (OSError, ValueError, pickle.UnpicklingError) as exc:
        if is_refused_pickle(exc):
            raise CheckpointError(
                f"{source} holds a pickled weight file that can carry code; it was refused "
                "(only safetensors weights are loaded)"
            ) from None
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


def load_unet_into(pipe: DiffusionPipeline, unet_dir: str | os.PathLike[str]) -> None:
    """Replace the pipeline's denoiser (UNet or transformer) with a fine-tuned one, checking it fits."""
    path = Path(unet_dir)
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path} is not a diffusers UNet directory (no config.json)")
    current = denoiser_of(pipe)
    refuse_pickled_weights(path, "fine-tuned weights")
    try:
        unet = type(current).from_pretrained(str(path), torch_dtype=current.dtype)
    except (OSError, ValueError, RuntimeError, pickle.UnpicklingError) as exc:
        raise CheckpointError(
            f"could not load the fine-tuned weights in {path}: {str(exc).splitlines()[0]}"
        ) from None
    check_same_architecture(current, unet, what=str(path))
    set_denoiser(pipe, unet)


def check_same_architecture(expected: torch.nn.Module, found: torch.nn.Module, what: str) -> None:
    """Refuse a checkpoint from another model (different parameter names or shapes)."""
    exp = {k: tuple(v.shape) for k, v in expected.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in found.state_dict().items()}
    if exp != got:
        diff = sorted(set(exp.items()) ^ set(got.items()))
        raise CheckpointError(f"{what} does not match the base model's UNet (first difference: {diff[0][0]})")


def load_trained_into(pipe: DiffusionPipeline, model_dir: str | os.PathLike[str]) -> None:
    """Apply fine-tuned weights to ``pipe``: an ``iter-k/model`` directory written by
    :func:`save_trained_unet` (``unet/`` or a LoRA), a UNet directory, a full
    pipeline directory, or a LoRA ``.safetensors`` file.

    ``unet/`` wins when a directory has both (LoRA runs from iteration 2 on); a
    LoRA file is applied to ``pipe`` as it is, so ``pipe`` must be the base model.
    """
    model_dir = Path(model_dir)
    component = family_of(pipe).denoiser  # unet/ or transformer/
    if not model_dir.exists():
        raise CheckpointError(f"fine-tuned weights {model_dir} do not exist")
    if model_dir.is_file():
        load_lora_into(pipe, model_dir)
    elif (model_dir / "config.json").is_file():
        load_unet_into(pipe, model_dir)
    elif (model_dir / component).is_dir():
        load_unet_into(pipe, model_dir / component)
    elif (model_dir / LORA_WEIGHT_NAME).is_file():
        load_lora_into(pipe, model_dir)
    elif (model_dir / "model_index.json").is_file():
        load_unet_into(pipe, model_dir / component)
    else:
        raise CheckpointError(f"{model_dir} holds neither {component}/ nor {LORA_WEIGHT_NAME}")
