"""Per-image desirability labels of an imagefolder, for Diffusion-KTO on single labelled images.

The labels are a side table keyed by example id (the same ids the latent cache
keeps), read from ``metadata.jsonl`` at training time: they do not change the
cached latents, so changing a label never re-encodes an image.
"""

from __future__ import annotations

from typing import Any

from spin_diffusion.config.data import DataConfig
from spin_diffusion.errors import DataError

_TRUE = (True, 1, "1", "true", "True", "desirable")
_FALSE = (False, 0, "0", "false", "False", "undesirable")


def parse_label(value: Any, location: str, column: str) -> bool:
    """A label as written (true/false, 1/0 or their strings) -> desirable?; anything else is a DataError."""
    if isinstance(value, float) and value in (0.0, 1.0):
        value = int(value)
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise DataError(f"{location}: label '{column}' is {value!r}; expected true/false or 1/0")


def image_labels(cfg: DataConfig) -> dict[str, bool]:
    """Example id -> desirable, for every row of the imagefolder's metadata that has a file name."""
    from spin_diffusion.data.records import is_missing
    from spin_diffusion.data.sources import iter_records

    if cfg.source != "imagefolder" or cfg.label_column is None:
        raise DataError("per-image labels need data.source imagefolder and data.label_column")
    labels: dict[str, bool] = {}
    for rec in iter_records(cfg):
        if rec.problem is not None:
            continue  # the latent cache reports (or skips) it
        if is_missing(rec.label) or rec.label is None:
            raise DataError(f"{rec.location}: no label '{cfg.label_column}'")
        labels[rec.id] = parse_label(rec.label, rec.location, cfg.label_column)
    return labels
