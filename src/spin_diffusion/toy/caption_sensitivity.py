"""Which words of its prompt a model listens to: its denoising error when one attribute is swapped.

Fine-tuning on exact captions can only sharpen what a model already conditions on. If swapping
"top left" for "bottom right" in the caption leaves the denoising error unchanged at every noise
level, the model does not read position, and no amount of fine-tuning data at these sizes shows
its effect within a study. The ratio ``error(swapped caption) / error(true caption)`` per attribute
and noise level says which attributes are in reach (above 1) and which are not (1 to within noise).

The images are toy renders of single complete objects, encoded with the model's own VAE; the
error is the training error of the model's family (:func:`~spin_diffusion.model.prediction.prediction_error`),
so the UNet and the flow bases are measured the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from spin_diffusion.toy.world import (
    ATTRIBUTE_VALUES,
    ATTRIBUTES,
    ObjectSpec,
    PromptSpec,
    complete_spec,
    spec_to_prompt,
)

#: What replaces the true caption: each attribute swapped for another value, or the empty caption.
SWAPS: tuple[str, ...] = (*ATTRIBUTES, "empty")
#: Points of the forward process, as a fraction of its timesteps (0: clean, 1: pure noise).
NOISE_POINTS: tuple[float, ...] = (0.05, 0.2, 0.4, 0.6, 0.8, 0.95)


@dataclass(frozen=True)
class Sensitivity:
    """Ratios ``error(swapped) / error(true)`` by swap, one per noise point, and the true caption's error."""

    noise: list[float]  # the noise's share of x_t at each point: sqrt(1 - alpha_bar) or sigma
    true_error: list[float]
    ratios: dict[str, list[float]]

    def peak(self, swap: str) -> float:
        """The largest ratio over noise points: how much the model listens to that attribute at best."""
        return max(self.ratios[swap])


def swapped_captions(scene: PromptSpec, rng: np.random.Generator, text_seed: int) -> dict[str, str]:
    """The true caption of a one-object ``scene`` and, per swap, the same sentence with one change.

    Every caption is written with the same paraphrase draw (``text_seed``), so the captions differ
    in the swapped word only.
    """
    (obj,) = scene.objects
    out = {"true": spec_to_prompt(scene, np.random.default_rng(text_seed))}
    for a in ATTRIBUTES:
        others = [v for v in ATTRIBUTE_VALUES[a] if v != obj.get(a)]
        changed = replace(obj, **{a: others[int(rng.integers(len(others)))]})
        out[a] = spec_to_prompt(PromptSpec((changed,)), np.random.default_rng(text_seed))
    out["empty"] = ""
    return out


def _scenes(n: int, seed: int) -> tuple[list[PromptSpec], list[dict[str, str]]]:
    rng = np.random.default_rng([7, seed])
    scenes = [complete_spec(PromptSpec((ObjectSpec(),)), rng) for _ in range(n)]
    return scenes, [swapped_captions(s, rng, text_seed=i) for i, s in enumerate(scenes)]


def caption_sensitivity(
    pipe: Any,
    n_scenes: int = 128,
    points: Sequence[float] = NOISE_POINTS,
    repeats: int = 2,
    seed: int = 0,
    style: str = "web",
) -> Sensitivity:
    """Measure :class:`Sensitivity` of ``pipe`` (a toy pipeline of either family) on ``n_scenes`` renders.

    Each noise point uses ``repeats`` noise draws shared by every caption, so a ratio compares the
    same noisy latents under two captions and its noise is that of the model's answer alone.
    """
    import torch

    from spin_diffusion.config.flow import FlowConfig
    from spin_diffusion.data.encoding import encode_pixels
    from spin_diffusion.data.transforms import to_tensor
    from spin_diffusion.model.families import denoiser_of, prompt_encoder
    from spin_diffusion.model.flow import FlowMatchingProcess
    from spin_diffusion.model.prediction import prediction_error, training_scheduler
    from spin_diffusion.toy.render import render_scene

    scenes, captions = _scenes(n_scenes, seed)
    size = int(pipe.vae.config.sample_size)
    images = [render_scene(s, size, style, np.random.default_rng([8, seed, i])) for i, s in enumerate(scenes)]
    latents = encode_pixels(pipe.vae, torch.stack([to_tensor(im) for im in images]))
    # uniform: the timestep index maps to the schedule directly, so the points are the same for all
    process = training_scheduler(pipe, FlowConfig(timestep_sampling="uniform"))
    encoder = prompt_encoder(pipe)
    kinds = ("true", *SWAPS)
    with torch.no_grad():
        cond = {k: encoder.encode([c[k] for c in captions]) for k in kinds}
    n_steps = int(process.config.num_train_timesteps)
    noise, errors = [], {k: [] for k in kinds}
    net = denoiser_of(pipe)
    flow = isinstance(process, FlowMatchingProcess)
    for p in points:
        # a flow schedule runs from sigma 1 at index 0; a DDPM one from clean at index 0
        index = round((1 - p) * (n_steps - 1)) if flow else round(p * (n_steps - 1))
        t = torch.full((len(latents),), index, dtype=torch.long)
        if flow:
            noise.append(float(process.sigmas(t[:1], tuple(latents.shape[-2:]))[0]))
        else:
            noise.append(float((1 - process.alphas_cumprod[index]) ** 0.5))
        totals = dict.fromkeys(kinds, 0.0)
        for r in range(repeats):
            eps = torch.randn(latents.shape, generator=torch.Generator().manual_seed(1000 * r + index))
            with torch.no_grad():
                for k in kinds:
                    totals[k] += float(prediction_error(net, process, latents, cond[k], t, eps).mean())
        for k in kinds:
            errors[k].append(totals[k] / repeats)
    ratios = {k: [e / b for e, b in zip(errors[k], errors["true"], strict=True)] for k in SWAPS}
    return Sensitivity(noise=noise, true_error=errors["true"], ratios=ratios)


def sensitivity_markdown(result: Sensitivity) -> str:
    """A table: one row per noise point, the error ratio of each swap (1.000: the word is ignored)."""
    head = "| noise | error (true caption) | " + " | ".join(f"{s} swapped" for s in SWAPS) + " |"
    rule = "|" + "---:|" * (2 + len(SWAPS))
    rows = [
        f"| {n:.2f} | {e:.4f} | " + " | ".join(f"{result.ratios[s][i]:.3f}" for s in SWAPS) + " |"
        for i, (n, e) in enumerate(zip(result.noise, result.true_error, strict=True))
    ]
    peak = "| peak | | " + " | ".join(f"{result.peak(s):.3f}" for s in SWAPS) + " |"
    return "\n".join([head, rule, *rows, peak])
