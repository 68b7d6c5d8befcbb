"""Does the toy oracle read blurred house-style objects (dark outlines) worse than the same objects without?

A check on the judge, not a timing: curated renders of the held-out prompts (2 each), drawn with and
without the house style's outline, Gaussian-blurred as an imperfect generator might draw them, and
judged. docs/results.md ("Bench validity") quotes its output.

    .venv/bin/python benchmarks/oracle_outline_readability.py      # about 1 minute on one core
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

from spin_diffusion.toy import render as R
from spin_diffusion.toy.datasets import eval_prompts
from spin_diffusion.toy.oracle import judge
from spin_diffusion.toy.world import PromptSpec, complete_spec, parse_prompt


def draw(scene: PromptSpec, outline: bool, rng: np.random.Generator, size: int = 32) -> Image.Image:
    """The curated renderer's drawing, with the outline optional (its placement jitter kept)."""
    s = R.SUPERSAMPLE
    canvas = size * s
    pixels = np.empty((canvas, canvas, 3), np.float32)
    pixels[:] = R.CURATED_BACKGROUND
    placed = R._place(scene, size, rng, jitter=0.03, size_jitter=0.0)
    for obj, (cx, cy, side) in zip(scene.objects, placed, strict=True):
        mask = R.shape_mask(obj.shape, canvas, cx * s, cy * s, side * s)
        if outline:
            pixels[R.dilate(mask, s) & ~mask] = R.OUTLINE_COLOUR
        pixels[mask] = R.COLOURS[obj.colour]
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).resize((size, size), Image.BOX)


def main() -> None:
    prompts = eval_prompts(200)
    for radius in (0.0, 0.5, 0.8, 1.1):
        cells = []
        for outline in (True, False):
            fid, count, empty = [], [], []
            for i, prompt in enumerate(prompts):
                for k in range(2):
                    rng = np.random.default_rng([i, k])
                    image = draw(complete_spec(parse_prompt(prompt), rng), outline, rng)
                    if radius:
                        image = image.filter(ImageFilter.GaussianBlur(radius))
                    verdict = judge(image, prompt)
                    fid.append(verdict["fidelity"])
                    count.append(verdict["checks"].get("count", True))
                    empty.append(verdict["n_detected"] == 0)
            se = np.std(fid) / np.sqrt(len(fid))
            cells.append(
                f"{'outlined' if outline else 'no outline'}: fidelity {np.mean(fid):.3f} ± {se:.3f}, "
                f"count {np.mean(count):.3f}, empty {np.mean(empty):.3f}"
            )
        print(f"blur {radius}: " + " | ".join(cells))


if __name__ == "__main__":
    main()
