"""Small on-disk inputs for end-to-end runs: coloured-square image folders and tiny SPIN configs."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30)}


def colour_squares(root: Path, names: Sequence[str]) -> Path:
    """An imagefolder with one 16x16 image of a centred square per colour name, captioned "a NAME square"."""
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, name in enumerate(names):
        img = np.full((16, 16, 3), 255, np.uint8)
        img[4:12, 4:12] = COLOURS[name]
        Image.fromarray(img).save(root / f"{i}.png")
        rows.append(json.dumps({"file_name": f"{i}.png", "text": f"a {name} square"}))
    (root / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    return root


def tiny_spin_config(
    out: Path,
    pipeline: Path,
    data: Path,
    *,
    training: dict[str, Any],
    iterations: list[dict[str, Any]],
    **top: Any,
) -> Path:
    """``out/config.yaml`` for a SPIN run named "run" under ``out/runs`` with 2-step sampling at 16 px."""
    cfg = {
        "name": "run",
        "output_dir": str(out / "runs"),
        "method": "spin",
        "model": {"pretrained": str(pipeline)},
        "data": {"source": "imagefolder", "path": str(data), "resolution": 16},
        "sampling": {"num_inference_steps": 2, "guidance_scale": 2.0, "batch_size": 4, "shard_size": 4},
        "training": training,
        "iterations": iterations,
        **top,
    }
    path = out / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path
