"""Deterministic renderer: a prompt spec (plus an RNG for what it leaves open) -> an RGB image.

Two styles mirror the two data sources of real fine-tuning: "web" (varied backgrounds, no
house style, blur / colour jitter / noise / clutter) and "curated" (one cream background,
a dark outline around every object, clean pixels). Drawing happens at 4x and is box-filtered
down, so edges are anti-aliased and small objects keep their shape.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from spin_diffusion.toy.world import COLOURS, POSITIONS, SIZES, PromptSpec, complete_spec

Style = Literal["curated", "web"]
CURATED_BACKGROUND: tuple[int, int, int] = (245, 238, 220)
OUTLINE_COLOUR: tuple[int, int, int] = (35, 35, 40)
SUPERSAMPLE = 4
CROSS_ARM = 1 / 3  # arm width of the cross as a fraction of its side


def shape_mask(shape: str, canvas: int, cx: float, cy: float, side: float) -> np.ndarray:
    """Boolean mask of one filled shape on a ``canvas`` x ``canvas`` grid (centre and side in pixels)."""
    img = Image.new("L", (canvas, canvas), 0)
    draw = ImageDraw.Draw(img)
    h = side / 2
    x0, y0, x1, y1 = cx - h, cy - h, cx + h, cy + h
    if shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=255)
    elif shape == "square":
        draw.polygon([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], fill=255)
    elif shape == "triangle":
        draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=255)
    elif shape == "cross":
        a = side * CROSS_ARM / 2
        draw.polygon([(cx - a, y0), (cx + a, y0), (cx + a, y1), (cx - a, y1)], fill=255)
        draw.polygon([(x0, cy - a), (x1, cy - a), (x1, cy + a), (x0, cy + a)], fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return np.asarray(img) > 127


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation by a (2r+1)-square, separable: rows then columns."""
    out = mask.copy()
    for axis in (0, 1):
        src = out.copy()
        for d in range(1, radius + 1):
            if axis == 0:
                out[d:] |= src[:-d]
                out[:-d] |= src[d:]
            else:
                out[:, d:] |= src[:, :-d]
                out[:, :-d] |= src[:, d:]
    return out


def _web_background(rng: np.random.Generator) -> tuple[int, int, int]:
    """A dull, varied background: grey of random lightness with a faint tint (cream 5% of the time)."""
    if rng.random() < 0.05:
        return CURATED_BACKGROUND
    g = rng.uniform(40, 215)
    return tuple(int(np.clip(g + rng.uniform(-15, 15), 0, 255)) for _ in range(3))  # type: ignore[return-value]


def _place(scene: PromptSpec, size: int, rng: np.random.Generator, jitter: float, size_jitter: float):
    """Pixel centre and side of every object; retries jitter that would make boxes overlap."""
    for attempt in range(20):
        j = jitter if attempt < 19 else 0.0
        placed = []
        for o in scene.objects:
            cx, cy = POSITIONS[o.position]
            side = SIZES[o.size] * (1 + rng.uniform(-size_jitter, size_jitter) if attempt < 19 else 1)
            placed.append(((cx + rng.uniform(-j, j)) * size, (cy + rng.uniform(-j, j)) * size, side * size))
        if len(placed) < 2:
            return placed
        (ax, ay, a), (bx, by, b) = placed
        if abs(ax - bx) >= (a + b) / 2 or abs(ay - by) >= (a + b) / 2:
            return placed
    return placed


def render_scene(scene: PromptSpec, size: int, style: Style, rng: np.random.Generator) -> Image.Image:
    """Draw a complete scene; ``rng`` drives jitter and (for "web") the degradations."""
    if style not in ("curated", "web"):
        raise ValueError(f"style must be 'curated' or 'web', got {style!r}")
    web = style == "web"
    s = SUPERSAMPLE
    canvas = size * s
    bg = _web_background(rng) if web else CURATED_BACKGROUND
    outline = (rng.random() < 0.1) if web else True
    pixels = np.empty((canvas, canvas, 3), dtype=np.float32)
    pixels[:] = bg
    placed = _place(scene, size, rng, jitter=0.06 if web else 0.03, size_jitter=0.1 if web else 0.0)
    for obj, (cx, cy, side) in zip(scene.objects, placed, strict=True):
        mask = shape_mask(obj.shape, canvas, cx * s, cy * s, side * s)
        if outline:
            pixels[dilate(mask, s) & ~mask] = OUTLINE_COLOUR
        colour = np.array(COLOURS[obj.colour], dtype=np.float32)
        if web:
            colour = colour + rng.uniform(-10, 10, size=3)
        pixels[mask] = colour
    img = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).resize((size, size), Image.BOX)
    return _degrade(img, rng) if web else img


def _degrade(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Web degradations, each with probability 1/2: clutter, blur, colour jitter, noise."""
    size = img.size[0]
    if rng.random() < 0.5:
        draw = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(1, 6))):
            g = rng.uniform(20, 235)
            c = tuple(int(np.clip(g + rng.uniform(-20, 20), 0, 255)) for _ in range(3))
            x, y = (int(v) for v in rng.integers(0, size, size=2))
            if rng.random() < 0.5:
                w = int(rng.integers(1, 3))
                draw.rectangle((x, y, x + w - 1, y + w - 1), fill=c)
            else:
                dx, dy = rng.uniform(-6, 6, size=2)
                draw.line((x, y, x + dx, y + dy), fill=c, width=1)
    if rng.random() < 0.5:
        img = img.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.4, 1.0)) * size / 32))
    arr = np.asarray(img).astype(np.float32)
    if rng.random() < 0.5:
        arr = arr * rng.uniform(0.9, 1.1, size=3) + rng.uniform(-10, 10, size=3)
    if rng.random() < 0.5:
        arr = arr + rng.normal(0, rng.uniform(4, 14), size=arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).round().astype(np.uint8))


def render(
    spec: PromptSpec,
    size: int = 32,
    style: Style = "curated",
    rng: np.random.Generator | int | None = None,
    exclude: frozenset[tuple[str, str]] = frozenset(),
) -> Image.Image:
    """Draw an image for ``spec``, sampling every attribute it leaves open from ``rng``.

    Same spec, size, style and seed give the same pixels. ``exclude`` bans (colour, shape)
    pairs from the sampled completion (fine-tuning data never shows held-out combinations).
    """
    if size < 16:
        raise ValueError(f"size must be >= 16 pixels, got {size}")
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng or 0)
    return render_scene(complete_spec(spec, gen, exclude), size, style, gen)
