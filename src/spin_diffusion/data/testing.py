"""Small on-disk datasets in every supported format, generated offline.

Used by the test-suite and handy for demos: images are drawn with numpy from
a seed, so the files are identical on every machine.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image


def make_image(seed: int, size: tuple[int, int] = (48, 40), mode: str = "RGB") -> Image.Image:
    """A deterministic noisy-gradient image of ``size`` (width, height) in ``mode``."""
    rng = np.random.default_rng(seed)
    w, h = size
    base = np.linspace(0, 255, w, dtype=np.float32)[None, :, None] * rng.uniform(0.2, 1.0, size=(1, 1, 3))
    noise = rng.integers(0, 64, size=(h, w, 3)).astype(np.float32)
    arr = np.clip(base + noise, 0, 255).astype(np.uint8)
    img = Image.fromarray(arr, "RGB")
    return img if mode == "RGB" else img.convert(mode)


def image_bytes(img: Image.Image, fmt: str = "PNG") -> bytes:
    """Encoded bytes of ``img`` (PNG by default, JPEG for Pick-a-Pic-like files)."""
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def make_imagefolder(root: Path, captions: Sequence[str], size: tuple[int, int] = (48, 40)) -> Path:
    """``root/img_XXX.png`` + ``metadata.jsonl`` with ``file_name`` and ``text``; returns root."""
    root.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, caption in enumerate(captions):
        name = f"img_{i:03d}.png"
        make_image(i, size).save(root / name)
        lines.append(json.dumps({"file_name": name, "text": caption}))
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def write_parquet(path: Path, columns: dict[str, list]) -> Path:
    """Write plain columns (str, bytes, floats) to a parquet file; returns the path."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)
    return path


def make_parquet(
    path: Path, captions: Sequence[str], *, seed: int = 0, size: tuple[int, int] = (48, 40)
) -> Path:
    """Parquet with ``image`` (PNG bytes) and ``text`` columns."""
    images = [image_bytes(make_image(seed + i, size)) for i in range(len(captions))]
    return write_parquet(path, {"image": images, "text": list(captions)})


def make_pickapic(
    path: Path,
    labels: Sequence[tuple[float, float]],
    *,
    captions: Sequence[str] | None = None,
    size: tuple[int, int] = (48, 40),
) -> Path:
    """Parquet in the Pick-a-Pic v2 schema; row i's images are make_image(2i) and make_image(2i+1)."""
    n = len(labels)
    captions = list(captions) if captions is not None else [f"prompt {i}" for i in range(n)]
    return write_parquet(
        path,
        {
            "caption": captions,
            "jpg_0": [image_bytes(make_image(2 * i, size), "JPEG") for i in range(n)],
            "jpg_1": [image_bytes(make_image(2 * i + 1, size), "JPEG") for i in range(n)],
            "label_0": [float(a) for a, _ in labels],
            "label_1": [float(b) for _, b in labels],
            "best_image_uid": [f"uid-{i}" for i in range(n)],
        },
    )
