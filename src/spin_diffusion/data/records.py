"""What a data source yields: a row before decoding (Record), and decoded examples and pairs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from spin_diffusion.data.problems import (
    BadExample,
)

PICKAPIC_IMAGES = ("jpg_0", "jpg_1")
PICKAPIC_LABELS = ("label_0", "label_1")
#: A row without a caption cell (told apart from a cell holding None).
MISSING = object()


def is_missing(value: Any) -> bool:
    """True for a field a row does not have at all (not the same as a null value)."""
    return value is MISSING


@dataclass(frozen=True)
class Example:
    """One usable image-caption pair; ``id`` is stable across runs (file name or file:row)."""

    id: str
    caption: str
    image: Image.Image


@dataclass(frozen=True)
class PairExample:
    """One usable preference pair (Pick-a-Pic): the preferred and the rejected image for a caption."""

    id: str
    caption: str
    image_win: Image.Image
    image_lose: Image.Image


@dataclass
class Record:
    """A row before decoding: enough to identify it, validate its caption and find its image(s)."""

    id: str
    location: str
    caption: Any = MISSING
    images: tuple[Any, ...] = ()
    base: Path | None = None  # directory that relative image paths are resolved against
    problem: BadExample | None = None  # found without decoding (bad metadata line, bad labels)
    tie: bool = False
    label: Any = MISSING  # imagefolder with data.label_column: the row's per-image label, as written
