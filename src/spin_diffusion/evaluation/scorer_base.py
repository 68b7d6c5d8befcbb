"""The one interface every judge implements, plus the image preprocessing they share.

A scorer maps (images, prompts) to one float per image. The batching, device
placement and inference mode live here once, so each model file only says how
one batch is scored.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from spin_diffusion.errors import CheckpointError
from spin_diffusion.model.weight_files import is_refused_pickle, refusal, unpickling_reason

if TYPE_CHECKING:
    import torch
    from PIL import Image

# CLIP's (OpenAI) normalisation, used by HPS and ImageReward preprocessing.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@runtime_checkable
class Scorer(Protocol):
    """``score(images, prompts)`` -> float32 CPU tensor of shape [N], higher is better."""

    name: str

    def score(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> torch.Tensor: ...


class BatchedScorer:
    """Splits the input into batches and runs ``_score_batch`` in inference mode on ``device``."""

    name = "scorer"

    def __init__(self, device: str = "cpu", batch_size: int = 16, name: str | None = None):
        self.device = device
        self.batch_size = batch_size
        self.name = name or self.name  # a config may rename the metric

    def score(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> torch.Tensor:
        import torch

        if len(images) != len(prompts):
            raise ValueError(f"{self.name}: got {len(images)} images but {len(prompts)} prompts")
        out = []
        with torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                batch = self._score_batch(
                    list(images[start : start + self.batch_size]),
                    list(prompts[start : start + self.batch_size]),
                )
                out.append(batch.detach().float().cpu().reshape(-1))
        return torch.cat(out) if out else torch.empty(0)

    def _score_batch(self, images: list[Image.Image], prompts: list[str]) -> torch.Tensor:
        raise NotImplementedError


def resolve_device(device: str) -> str:
    """``auto`` -> cuda when available, else cpu."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def require_file(path: str | Path, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        hint = " (it is a directory)" if p.is_dir() else ""
        raise CheckpointError(f"{what} {p} does not exist or is not a file{hint}")
    return p


def require_dir(path: str | Path, what: str, must_hold: Sequence[str] = ()) -> Path:
    p = Path(path).expanduser()
    if not p.is_dir():
        raise CheckpointError(f"{what} {p} does not exist or is not a directory")
    for name in must_hold:
        if not (p / name).exists():
            raise CheckpointError(f"{what} {p} has no {name}")
    return p


def _ignorable(key: str) -> bool:
    # position ids are buffers rebuilt from the config; releases differ on whether they save them
    return key.split(".")[-1] == "position_ids"


def refuse_incomplete_load(
    what: str,
    path: str | Path,
    missing: Iterable[str] = (),
    unexpected: Iterable[str] = (),
    mismatched: Iterable[str] = (),
) -> None:
    """Raise one ``CheckpointError`` line when weights did not all load into their places.

    A scorer with a freshly initialised (random) layer still returns numbers, so
    any missing, unexpected or wrongly shaped key other than ``position_ids`` is
    a refusal, never a warning. Every loader of the package calls this one check.
    """
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)):
        bad = sorted({str(k if isinstance(k, str) else k[0]) for k in keys} - {""})
        bad = [k for k in bad if not _ignorable(k)]
        if bad:
            more = f" (+{len(bad) - 3} more)" if len(bad) > 3 else ""
            parts.append(f"{label} {', '.join(bad[:3])}{more}")
    if parts:
        raise CheckpointError(f"{what} {path} does not hold the weights it should: {'; '.join(parts)}")


def load_torch_state(path: Path, what: str) -> dict[str, torch.Tensor]:
    """A tensor dict from a ``.pt``/``.pth``/``.bin`` (weights_only) or ``.safetensors`` file.

    Unwraps the usual containers (``state_dict``, ``model``) and a DDP ``module.`` prefix.
    """
    import torch

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path))
        else:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, pickle with code, wrong format
        if is_refused_pickle(exc):
            raise refusal(path, what) from None
        raise CheckpointError(
            f"{what} {path} could not be read as weights: {unpickling_reason(exc)}"
        ) from exc
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{what} {path} does not hold a state dict of tensors")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return obj


def to_normalized_tensor(
    images: Sequence[Image.Image], mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """Equal-size PIL images -> normalised float tensor [B, 3, H, W]."""
    import numpy as np
    import torch

    arr = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0 for im in images])
    x = torch.from_numpy(arr).permute(0, 3, 1, 2)
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - m) / s


def resize_shorter_center_crop(image: Image.Image, size: int) -> Image.Image:
    """Bicubic resize of the shorter side to ``size``, then a centred ``size`` square crop.

    Mirrors torchvision's ``Resize(size)`` + ``CenterCrop(size)`` on PIL input (the
    ImageReward transform) without importing torchvision.
    """
    from PIL import Image

    image = image.convert("RGB")
    w, h = image.size
    if w <= h:
        new_w, new_h = size, int(size * h / w)
    else:
        new_w, new_h = int(size * w / h), size
    if (new_w, new_h) != (w, h):
        image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
    left = int(round((new_w - size) / 2.0))
    top = int(round((new_h - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def resize_longest_pad_square(image: Image.Image, size: int, fill: int = 0) -> Image.Image:
    """Bicubic resize of the longer side to ``size``, then centred padding to a square.

    The HPS evaluation transform (open_clip's ``ResizeMaxSize``): nothing is cropped.
    """
    from PIL import Image

    image = image.convert("RGB")
    w, h = image.size
    scale = size / float(max(w, h))
    new_w, new_h = round(w * scale), round(h * scale)
    if (new_w, new_h) != (w, h):
        image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
    canvas = Image.new("RGB", (size, size), (fill, fill, fill))
    canvas.paste(image, ((size - new_w) // 2, (size - new_h) // 2))
    return canvas
