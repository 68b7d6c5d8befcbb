"""Loading CLIP pieces from local directories with one-line errors, and unwrapping features.

Shared by PickScore, the aesthetic predictor, HPS (tokenizer only) and the FID
feature extractor. transformers 5 returns a model output from
``get_image_features``/``get_text_features`` (the projected embedding is its
``pooler_output``); ``features`` accepts both that and a plain tensor.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from spin_diffusion.errors import CheckpointError
from spin_diffusion.evaluation.scorer_base import refuse_incomplete_load, require_dir
from spin_diffusion.model.weight_files import refuse_pickled_weights

if TYPE_CHECKING:
    import torch
    from transformers import CLIPModel, CLIPTokenizer


def features(output: Any) -> torch.Tensor:
    """The projected embedding from a ``get_*_features`` result (tensor or model output)."""
    import torch

    if isinstance(output, torch.Tensor):
        return output
    pooled = getattr(output, "pooler_output", None)
    if pooled is None:
        raise TypeError(f"cannot find embeddings in {type(output).__name__}")
    return pooled


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


def load_clip_model(path: str | Path, what: str, device: str = "cpu") -> CLIPModel:
    """A ``CLIPModel`` from a local ``save_pretrained`` directory (config.json + weights).

    Every weight must load: a missing or renamed key would otherwise be scored
    with random values (see ``refuse_incomplete_load``).
    """
    from transformers import CLIPModel

    p = require_dir(path, what, must_hold=("config.json",))
    refuse_pickled_weights(p, what)
    try:
        model, info = CLIPModel.from_pretrained(str(p), local_files_only=True, output_loading_info=True)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise CheckpointError(
            f"{what} {p} is not a loadable CLIPModel directory: {_first_line(exc)}"
        ) from exc
    # transformers only warns about weights it had to initialise at random; we refuse them
    refuse_incomplete_load(
        what,
        p,
        info.get("missing_keys", ()),
        info.get("unexpected_keys", ()),
        info.get("mismatched_keys", ()),
    )
    return model.to(device).float().eval()


def load_clip_tokenizer(path: str | Path, what: str) -> CLIPTokenizer:
    from transformers import CLIPTokenizer

    p = require_dir(path, what)
    if not (
        ((p / "vocab.json").is_file() and (p / "merges.txt").is_file()) or (p / "tokenizer.json").is_file()
    ):
        raise CheckpointError(
            f"{what} {p} holds no CLIP tokenizer (vocab.json + merges.txt, or tokenizer.json)"
        )
    try:
        return CLIPTokenizer.from_pretrained(str(p), local_files_only=True)
    except (OSError, ValueError, TypeError) as exc:
        raise CheckpointError(
            f"{what} {p} holds no CLIP tokenizer (vocab.json + merges.txt): {_first_line(exc)}"
        ) from exc


def load_clip_image_processor(path: str | Path, what: str) -> Any:
    """The PIL-backed CLIP image processor (the default one needs torchvision)."""
    try:
        from transformers import CLIPImageProcessorPil as Processor
    except ImportError:  # older transformers: the classic class is PIL-based
        from transformers import CLIPImageProcessor as Processor

    p = require_dir(path, what, must_hold=("preprocessor_config.json",))
    try:
        return Processor.from_pretrained(str(p), local_files_only=True)
    except (OSError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{what} {p} holds no CLIP image processor: {_first_line(exc)}") from exc


def pixel_values(processor: Any, images: list, device: str) -> torch.Tensor:
    return processor(images=[im.convert("RGB") for im in images], return_tensors="pt")["pixel_values"].to(
        device
    )
