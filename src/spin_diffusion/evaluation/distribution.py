"""FID and KID of each model's images against reference images, on a configurable feature extractor.

torchmetrics computes both; the feature network is injected (any module mapping
float images in [0, 1], [B, 3, H, W], to [B, D] features), so tests use a tiny
extractor and users pass CLIP weights from a local directory. Numbers on CLIP
features are not comparable with Inception-FID numbers in papers: the report
names the feature extractor. KID subsets are drawn with a fixed seed.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spin_diffusion.errors import ConfigError, DataError

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from spin_diffusion.config.evaluation import DistributionConfig

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def clip_feature_extractor(path: str | Path, device: str = "cpu") -> torch.nn.Module:
    """CLIP image embeddings of a local ``CLIPModel`` dir, as a module over [0, 1] images."""
    import torch
    from torch import nn

    from spin_diffusion.evaluation.clip_utils import features, load_clip_image_processor, load_clip_model

    model = load_clip_model(path, "FID CLIP feature model", device)
    proc = load_clip_image_processor(path, "FID CLIP feature model")
    side = int(model.config.vision_config.image_size)  # what the processor's centre crop produces
    size = (side, side)

    class _ClipFeatures(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.num_features = int(model.config.projection_dim)
            self.register_buffer("mean", torch.tensor(proc.image_mean, dtype=torch.float32).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(proc.image_std, dtype=torch.float32).view(1, 3, 1, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = nn.functional.interpolate(x.float(), size=size, mode="bicubic", antialias=True)
            x = (x.clamp(0, 1) - self.mean) / self.std
            return features(self.model.get_image_features(pixel_values=x)).float()

    return _ClipFeatures().to(device).eval()


def build_feature_extractor(cfg: DistributionConfig, device: str = "cpu") -> torch.nn.Module | int:
    """The configured extractor: a module (clip) or torchmetrics' Inception feature size (inception)."""
    if cfg.feature == "clip":
        return clip_feature_extractor(cfg.feature_path, device)
    p = Path(cfg.feature_path)
    if not p.is_file():
        raise ConfigError(f"distribution.feature_path {p} does not exist (the FID Inception weights file)")
    return 2048


def images_to_tensor(images: Sequence[Image.Image], size: int) -> torch.Tensor:
    """PIL images -> float [B, 3, size, size] in [0, 1] (bicubic resize; all sets share the size)."""
    import numpy as np
    import torch
    from PIL import Image

    arr = np.stack(
        [
            np.asarray(im.convert("RGB").resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)
            / 255.0
            for im in images
        ]
    )
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


def read_image_dir(path: str | Path, limit: int | None = None) -> list[Image.Image]:
    """Reference images from a folder (sorted by name), with a clear error for an unreadable one."""
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.is_dir():
        raise ConfigError(f"distribution.reference_dir {p} does not exist or is not a directory")
    files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    if limit is not None:
        files = files[:limit]
    if len(files) < 2:
        raise DataError(f"distribution.reference_dir {p} holds {len(files)} images; FID/KID need at least 2")
    out = []
    for f in files:
        try:
            with Image.open(f) as im:
                out.append(im.convert("RGB"))
        except (OSError, UnidentifiedImageError) as exc:
            raise DataError(f"{f}: not a readable image ({type(exc).__name__})") from exc
    return out


def distribution_metrics(
    generated: dict[str, torch.Tensor],
    reference: torch.Tensor,
    feature: torch.nn.Module | int,
    *,
    kid_subset_size: int = 1000,
    kid_subsets: int = 100,
    batch_size: int = 32,
    feature_weights: str | None = None,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """``{model: {"fid", "kid_mean", "kid_std", "n"}}``; images are float [N, 3, H, W] in [0, 1]."""
    import torch

    try:
        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.image.kid import KernelInceptionDistance
    except ImportError as exc:
        raise ConfigError("FID/KID need the torchmetrics package (pip install torchmetrics)") from exc

    n_min = min([len(reference), *(len(v) for v in generated.values())])
    if n_min < 2:
        raise DataError("FID/KID need at least 2 images in every set")
    extra: dict[str, Any] = {}
    if isinstance(feature, int):
        extra["feature_extractor_weights_path"] = feature_weights
    try:
        fid = FrechetInceptionDistance(feature=feature, normalize=True, reset_real_features=False, **extra)
        with warnings.catch_warnings():  # "KID keeps all features in memory": expected, it is how KID works
            warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
            kid = KernelInceptionDistance(
                feature=feature,
                normalize=True,
                reset_real_features=False,
                subset_size=min(kid_subset_size, n_min),
                subsets=kid_subsets,
                **extra,
            )
    except (ModuleNotFoundError, ImportError) as exc:
        raise ConfigError(
            "the Inception feature extractor needs torch-fidelity (which needs torchvision); "
            "use distribution.feature: clip instead"
        ) from exc

    def feed(metric: Any, images: torch.Tensor, real: bool) -> None:
        for start in range(0, len(images), batch_size):
            metric.update(images[start : start + batch_size], real=real)

    out: dict[str, dict[str, float]] = {}
    with torch.inference_mode():
        feed(fid, reference, True)
        feed(kid, reference, True)
        for name, images in generated.items():
            fid.reset()
            kid.reset()
            feed(fid, images, False)
            feed(kid, images, False)
            with torch.random.fork_rng():
                torch.manual_seed(seed)
                kid_mean, kid_std = kid.compute()
            out[name] = {
                "fid": float(fid.compute()),
                "kid_mean": float(kid_mean),
                "kid_std": float(kid_std),
                "n": len(images),
            }
    return out
