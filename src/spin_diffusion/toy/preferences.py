"""Toy preference pairs in the Pick-a-Pic v2 schema, for the Diffusion-DPO baseline.

For each fine-tuning prompt the winner is the scene in the curated house style
and the loser the same scene rendered the "web" way (degraded, off-style), so
the preference is exactly what SFT/SPIN learn from the curated images alone.
Positions are shuffled and a share of rows are ties, as in the real data.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from spin_diffusion.errors import DataError
from spin_diffusion.infra.atomic import atomic_file
from spin_diffusion.toy.datasets import curated_example, curated_rng
from spin_diffusion.toy.render import render_scene

_STREAM = 4  # distinct from the streams in toy.datasets


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def preference_rows(n: int, seed: int = 0, size: int = 32, tie_fraction: float = 0.1) -> dict[str, list]:
    """Columns ``caption, jpg_0, jpg_1, label_0, label_1`` for ``n`` rows; row i depends only on (seed, i)."""
    if n < 1:
        raise DataError(f"number of preference rows must be >= 1, got {n}")
    cols: dict[str, list] = {"caption": [], "jpg_0": [], "jpg_1": [], "label_0": [], "label_1": []}
    for i in range(n):
        rng = np.random.default_rng([_STREAM, seed, i])
        text, scene = curated_example(rng)
        winner = _png(render_scene(scene, size, "curated", rng))
        loser = _png(render_scene(scene, size, "web", rng))
        tie = rng.random() < tie_fraction
        swap = rng.random() < 0.5
        first, second = (loser, winner) if swap else (winner, loser)
        label_0 = 0.5 if tie else (0.0 if swap else 1.0)
        cols["caption"].append(text)
        cols["jpg_0"].append(first)
        cols["jpg_1"].append(second)
        cols["label_0"].append(label_0)
        cols["label_1"].append(1.0 - label_0)
    return cols


def matched_preference_rows(n: int, seed: int = 0, size: int = 32) -> dict[str, list]:
    """Rows for exactly the prompts of ``generate_pairs(n, seed, "curated")``, without ties.

    The winner is the very image of that curated set and the loser the same scene rendered the web
    way, so DPO, SFT and SPIN see the same prompts and the same real images (an equal-data
    comparison); DPO additionally gets a loser per prompt, which the other two never see.
    """
    if n < 1:
        raise DataError(f"number of preference rows must be >= 1, got {n}")
    cols: dict[str, list] = {"caption": [], "jpg_0": [], "jpg_1": [], "label_0": [], "label_1": []}
    for i in range(n):
        rng = curated_rng(seed, i)
        text, scene = curated_example(rng)
        winner = _png(render_scene(scene, size, "curated", rng))
        loser_rng = np.random.default_rng([_STREAM, seed, i, 1])
        loser = _png(render_scene(scene, size, "web", loser_rng))
        swap = loser_rng.random() < 0.5
        cols["caption"].append(text)
        cols["jpg_0"].append(loser if swap else winner)
        cols["jpg_1"].append(winner if swap else loser)
        cols["label_0"].append(0.0 if swap else 1.0)
        cols["label_1"].append(1.0 if swap else 0.0)
    return cols


def write_preference_parquet(
    path: str | os.PathLike[str], n: int, seed: int = 0, size: int = 32, matched: bool = False
) -> Path:
    """Write the rows as one parquet file (atomically); returns its path.

    ``matched``: the prompts and winners of the curated imagefolder with the same ``n`` and ``seed``.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    rows = matched_preference_rows(n, seed, size) if matched else preference_rows(n, seed, size)
    table = pa.table(rows)
    with atomic_file(path) as tmp:
        pq.write_table(table, tmp)
    return path
