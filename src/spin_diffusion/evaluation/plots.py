"""Pictures of an evaluation: the image grid and metric plots (matplotlib Agg, PNG)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spin_diffusion.evaluation.aggregate import AVERAGE
from spin_diffusion.infra.atomic import atomic_file

if TYPE_CHECKING:
    from PIL import Image

CELL = 256  # grid cells are shown at most this big
MIN_CELL = 96  # and tiny (toy) images are enlarged to at least this
CAPTIONED_MIN_CELL = 128  # with prompts under the images: room for a readable line of text
CAPTION_FONT_PX = 11


def labelled_grid(
    rows: dict[str, Sequence[Image.Image]],
    cell: int = CELL,
    min_cell: int = MIN_CELL,
    captions: Sequence[str] | None = None,
) -> Image.Image:
    """One row per model (same prompts and seeds in each column), model names on the left.

    ``captions`` (one per column, the prompt) are written under every image, wrapped to the
    cell's width; tiny images are then enlarged to at least ``CAPTIONED_MIN_CELL`` pixels
    (nearest-neighbour, so the toy's 32x32 pixels stay sharp) to leave room for the text.
    """
    from PIL import Image, ImageDraw, ImageFont

    if not rows or not any(rows.values()):
        raise ValueError("no images for the grid")
    if captions is not None:
        min_cell = max(min_cell, CAPTIONED_MIN_CELL)
    first = next(im for ims in rows.values() for im in ims)
    w, h = first.size
    scale = min(cell / max(w, h), max(1.0, min_cell / max(w, h)))
    cw, ch = max(1, round(w * scale)), max(1, round(h * scale))
    font = ImageFont.load_default(size=CAPTION_FONT_PX)
    wrapped = [_wrap(text, font, cw) for text in captions] if captions is not None else []
    line_h = CAPTION_FONT_PX + 2
    text_h = (max(len(lines) for lines in wrapped) * line_h + 4) if wrapped else 0
    label_w = 8 + 7 * max(len(n) for n in rows)
    cols = max(len(ims) for ims in rows.values())
    gap = 2
    row_h = ch + text_h + gap
    grid = Image.new("RGB", (label_w + cols * (cw + gap), len(rows) * row_h), "white")
    draw = ImageDraw.Draw(grid)
    resample = Image.Resampling.NEAREST if scale > 1 else Image.Resampling.BICUBIC
    for r, (name, ims) in enumerate(rows.items()):
        top = r * row_h
        draw.text((4, top + ch // 2 - 5), name, fill="black")
        for c, im in enumerate(ims):
            left = label_w + c * (cw + gap)
            grid.paste(im.convert("RGB").resize((cw, ch), resample), (left, top))
            for i, line in enumerate(wrapped[c] if c < len(wrapped) else []):
                draw.text((left + 1, top + ch + 2 + i * line_h), line, fill="black", font=font)
    return grid


def _wrap(text: str, font: Any, width: int) -> list[str]:
    """``text`` broken at spaces into lines no wider than ``width`` pixels (a long word stands alone)."""
    lines: list[str] = []
    for word in text.split():
        candidate = f"{lines[-1]} {word}" if lines else word
        if lines and font.getlength(candidate) <= width - 2:
            lines[-1] = candidate
        else:
            lines.append(word)
    return lines or [""]


def _save_fig(fig: Any, path: Path) -> None:
    with atomic_file(path, ".png") as tmp:
        fig.savefig(tmp, dpi=100, bbox_inches="tight")


def plot_metrics(results: dict[str, Any], path: Path) -> Path:
    """Mean (and median) of each metric across models in table order: one panel per metric.

    With models named base, iter-1, iter-2, ... this is the paper's metric-vs-iteration plot.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [*results["metrics"], AVERAGE]
    models = list(results["mean"])
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.0), squeeze=False)
    x = list(range(len(models)))
    for ax, m in zip(axes[0], metrics, strict=True):
        ax.plot(x, [results["mean"][n][m] for n in models], marker="o", label="mean")
        ax.plot(x, [results["median"][n][m] for n in models], marker="s", linestyle="--", label="median")
        ax.set_title(m)
        ax.set_xticks(x)
        ax.set_xticklabels(models, rotation=30, ha="right", fontsize=8)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    _save_fig(fig, path)
    plt.close(fig)
    return path


def plot_win_rates(results: dict[str, Any], baseline: str, path: Path) -> Path:
    """Grouped bars: each model's win rate (%) over ``baseline`` per metric and on the average."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    metrics = [*results["metrics"], AVERAGE]
    wr = results["win_rate"]
    models = [m for m in results["mean"] if m != baseline and baseline in wr.get(m, {})]
    fig, ax = plt.subplots(figsize=(1.2 + 1.3 * len(metrics), 3.2))
    width = 0.8 / max(1, len(models))
    x = np.arange(len(metrics))
    for i, name in enumerate(models):
        ax.bar(x + i * width, [100 * wr[name][baseline][m] for m in metrics], width, label=name)
    ax.axhline(50, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xticks(x + width * (len(models) - 1) / 2)
    ax.set_xticklabels(metrics, fontsize=8)
    ax.set_ylim(0, 100)
    ax.set_ylabel(f"win rate over {baseline} (%)")
    if models:
        ax.legend(fontsize=8)
    fig.tight_layout()
    _save_fig(fig, path)
    plt.close(fig)
    return path
