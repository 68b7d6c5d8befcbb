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


def labelled_grid(
    rows: dict[str, Sequence[Image.Image]], cell: int = CELL, min_cell: int = MIN_CELL
) -> Image.Image:
    """One row per model (same prompts and seeds in each column), model names on the left."""
    from PIL import Image, ImageDraw

    if not rows or not any(rows.values()):
        raise ValueError("no images for the grid")
    first = next(im for ims in rows.values() for im in ims)
    w, h = first.size
    scale = min(cell / max(w, h), max(1.0, min_cell / max(w, h)))
    cw, ch = max(1, round(w * scale)), max(1, round(h * scale))
    label_w = 8 + 7 * max(len(n) for n in rows)
    cols = max(len(ims) for ims in rows.values())
    gap = 2
    grid = Image.new("RGB", (label_w + cols * (cw + gap), len(rows) * (ch + gap)), "white")
    draw = ImageDraw.Draw(grid)
    for r, (name, ims) in enumerate(rows.items()):
        draw.text((4, r * (ch + gap) + ch // 2 - 5), name, fill="black")
        for c, im in enumerate(ims):
            resample = Image.Resampling.NEAREST if scale > 1 else Image.Resampling.BICUBIC
            grid.paste(
                im.convert("RGB").resize((cw, ch), resample), (label_w + c * (cw + gap), r * (ch + gap))
            )
    return grid


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
