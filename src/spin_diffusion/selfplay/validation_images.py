"""Validation images for the experiment trackers: a few fixed captions and seeds, drawn by the model in training.

A loss curve of a pairwise objective says little about what the images look
like; the same prompts with the same seeds after every iteration (and, if asked,
every N steps) show it. Only the main process generates; the images go to each
configured tracker through its own image API and nothing is written elsewhere.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from spin_diffusion.model.families import denoiser_of, set_denoiser

if TYPE_CHECKING:
    from PIL import Image

    from spin_diffusion.config.sampling import SamplingConfig

log = logging.getLogger(__name__)

TAG = "validation"


def validation_prompts(captions: Sequence[str], n: int) -> list[str]:
    """The first ``n`` distinct captions of the training data: the same ones every iteration."""
    return list(dict.fromkeys(c for c in captions if c.strip()))[:n]


@dataclass(frozen=True)
class ValidationSet:
    """Fixed prompts and one fixed seed per prompt, sampled with the run's sampler settings."""

    prompts: list[str]
    seed: int
    sampling: SamplingConfig

    @property
    def seeds(self) -> list[int]:
        return [self.seed + j for j in range(len(self.prompts))]


@contextlib.contextmanager
def _swapped_unet(pipe: Any, unet: Any) -> Iterator[None]:
    """``pipe`` with ``unet`` in place, in eval mode; the pipeline, its scheduler and the mode are restored."""
    original, scheduler, training = denoiser_of(pipe), pipe.scheduler, unet.training
    set_denoiser(pipe, unet)
    unet.eval()
    try:
        yield
    finally:
        set_denoiser(pipe, original)
        pipe.scheduler = scheduler
        unet.train(training)


def generate_validation_images(pipe: Any, unet: Any, vset: ValidationSet) -> list[Image.Image]:
    """One image per validation prompt from ``unet`` (seeded per image, so the global RNG is untouched)."""
    from spin_diffusion.sampling.generate import generate_images, use_scheduler

    with _swapped_unet(pipe, unet):
        use_scheduler(pipe, vset.sampling.scheduler)
        return generate_images(
            pipe,
            vset.prompts,
            vset.seeds,
            num_inference_steps=vset.sampling.num_inference_steps,
            guidance_scale=vset.sampling.guidance_scale,
            batch_size=vset.sampling.batch_size,
        )


def log_images_to_trackers(
    accelerator: Any, names: Sequence[str], images: list[Image.Image], prompts: list[str], step: int
) -> None:
    """Send the images to every tracker in ``names`` at ``step`` (main process only)."""
    import numpy as np

    for name in names:
        tracker = accelerator.get_tracker(name, unwrap=False)
        if name == "tensorboard":
            batch = np.stack([np.asarray(im.convert("RGB")) for im in images])
            tracker.log_images({TAG: batch}, step=step, dataformats="NHWC")
            tracker.writer.add_text(f"{TAG}/prompts", "\n\n".join(prompts), global_step=step)
            tracker.writer.flush()
        elif name == "wandb":
            import wandb

            tracker.tracker.log(
                {TAG: [wandb.Image(im, caption=p) for im, p in zip(images, prompts, strict=True)]}, step=step
            )


def log_validation(
    accelerator: Any, pipe: Any, unet: Any, vset: ValidationSet, trackers: Sequence[str], step: int
) -> None:
    """Generate the validation images with ``unet`` and log them at global step ``step``; all ranks call it."""
    if vset.prompts and trackers and accelerator.is_main_process:
        images = generate_validation_images(pipe, accelerator.unwrap_model(unet), vset)
        log_images_to_trackers(accelerator, trackers, images, vset.prompts, step)
        log.info("logged %d validation images at step %d", len(images), step)
    accelerator.wait_for_everyone()
