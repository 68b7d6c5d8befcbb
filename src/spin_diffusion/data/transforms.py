"""Pixel transforms (resize, crop, flip, [-1, 1] tensors) and caption dropout.

Randomness is drawn from per-example generators seeded by (seed, purpose,
example id, epoch), so results never depend on worker count or iteration
order, and a rerun reproduces the same crops, flips and dropped captions.
"""

from __future__ import annotations

import random

import numpy as np
import torch
from PIL import Image

from spin_diffusion.config.data import DataConfig
from spin_diffusion.infra.seeds import example_rng


def resized_size(size: tuple[int, int], resolution: int) -> tuple[int, int]:
    """(w, h) after scaling the shorter side of ``size`` to ``resolution``, keeping the aspect ratio."""
    w, h = size
    scale = resolution / min(w, h)
    return (max(resolution, round(w * scale)), max(resolution, round(h * scale)))


def resize_shorter(img: Image.Image, resolution: int) -> Image.Image:
    """Resize so the shorter side equals ``resolution``, keeping the aspect ratio (bicubic, antialiased)."""
    size = resized_size(img.size, resolution)
    return img if size == img.size else img.resize(size, Image.Resampling.BICUBIC)


def crop_offsets(
    size: tuple[int, int], resolution: int, *, center: bool, rng: random.Random | None
) -> tuple[int, int]:
    """``(left, top)`` of the ``resolution`` square cut from an image of ``size`` (w, h)."""
    w, h = size
    if center or rng is None:
        return (w - resolution) // 2, (h - resolution) // 2
    return rng.randint(0, w - resolution), rng.randint(0, h - resolution)


def crop_square(img: Image.Image, resolution: int, *, center: bool, rng: random.Random | None) -> Image.Image:
    """A ``resolution`` square: centred, or at a random offset drawn from ``rng``."""
    left, top = crop_offsets(img.size, resolution, center=center, rng=rng)
    return img.crop((left, top, left + resolution, top + resolution))


def to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB image -> float32 tensor [3, H, W] in [-1, 1] (the VAE's input range)."""
    arr = np.asarray(img.convert("RGB"), dtype=np.float32)
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous().div_(127.5).sub_(1.0)


def hflip(x: torch.Tensor) -> torch.Tensor:
    """Mirror a [..., H, W] tensor left-right."""
    return torch.flip(x, dims=[-1])


class ImageTransform:
    """The configured image pipeline: resize shorter side, crop, optional flip, normalise."""

    def __init__(self, cfg: DataConfig) -> None:
        self.resolution = cfg.resolution
        self.center_crop = cfg.center_crop
        self.seed = cfg.seed

    def square(self, img: Image.Image, example_id: str, epoch: int = 0) -> Image.Image:
        """Resized and cropped PIL image (the crop offset is fixed per example id and epoch)."""
        rng = None if self.center_crop else example_rng(self.seed, "crop", example_id, epoch)
        return crop_square(
            resize_shorter(img, self.resolution), self.resolution, center=self.center_crop, rng=rng
        )

    def size_cond(
        self, img: Image.Image, example_id: str, *, epoch: int = 0, flip: bool = False
    ) -> tuple[int, int, int, int, int, int]:
        """SDXL's micro-conditioning of the crop :meth:`square` makes, in ``add_time_ids`` order:
        (original h, w, crop top, crop left, target h, w), the crop measured in the resized image.

        A flipped crop is the mirror image of the resized picture's crop, so its
        left edge is measured from the other side.
        """
        w, h = img.size
        resized = resized_size(img.size, self.resolution)
        rng = None if self.center_crop else example_rng(self.seed, "crop", example_id, epoch)
        left, top = crop_offsets(resized, self.resolution, center=self.center_crop, rng=rng)
        if flip:
            left = resized[0] - left - self.resolution
        return (h, w, top, left, self.resolution, self.resolution)

    def __call__(
        self, img: Image.Image, example_id: str, *, epoch: int = 0, flip: bool = False
    ) -> torch.Tensor:
        x = to_tensor(self.square(img, example_id, epoch))
        return hflip(x) if flip else x
