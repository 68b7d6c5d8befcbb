"""Turn an image cell (bytes, {bytes, path} dict, path string or PIL image) into a checked RGB image.

All decoding goes through here so every source applies the same rules for what
counts as unusable (see docs/data.md) and reports it with the row's location.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps, UnidentifiedImageError

from spin_diffusion.data.problems import (
    MISSING_IMAGE,
    PATH_ESCAPE,
    TOO_SMALL,
    UNREADABLE_IMAGE,
    UNSUPPORTED_MODE,
    BadExample,
)

# Modes PIL converts to RGB without guessing a value range; alpha is composited on white.
_CONVERTIBLE = {"RGB", "L", "1", "P", "CMYK", "YCbCr", "LAB", "HSV"}
_WITH_ALPHA = {"RGBA", "LA", "PA", "RGBa", "La"}


def safe_join(root: Path, name: str, location: str) -> Path:
    """``root / name`` if ``name`` is a relative path that stays inside ``root``.

    The check is lexical (absolute paths and ``..`` that climb out are refused);
    symlinks placed inside the dataset by its owner are followed.
    """
    if not name or not name.strip():
        raise BadExample(MISSING_IMAGE, location, "empty file name")
    norm = os.path.normpath(name.replace("\\", "/"))
    if os.path.isabs(norm) or Path(norm).drive or norm == ".." or norm.startswith("../"):
        raise BadExample(PATH_ESCAPE, location, f"file name '{name}' escapes the dataset root {root}")
    return root / norm


EXTERNAL_HINT = "set data.allow_external_paths: true to read images outside the dataset root"


def check_inside(path: Path, base: Path | None, location: str, allow_external: bool) -> Path:
    """``path`` if it resolves (symlinks followed) inside ``base``, or if outside paths are allowed.

    Decided on the resolved path before the file is opened or even looked at,
    so a refused path says nothing about whether such a file exists.
    """
    if allow_external or base is None:
        return path
    root = os.path.realpath(base)
    real = os.path.realpath(path)
    if real != root and not real.startswith(root.rstrip(os.sep) + os.sep):
        raise BadExample(
            PATH_ESCAPE,
            location,
            f"image path '{path}' resolves outside the dataset root {base}; {EXTERNAL_HINT}",
        )
    return path


def _open(cell: Any, base: Path | None, location: str, allow_external: bool = False) -> Image.Image:
    if cell is None:
        raise BadExample(MISSING_IMAGE, location, "image is empty (null)")
    if isinstance(cell, Image.Image):
        return cell
    if isinstance(cell, dict):
        data, path = cell.get("bytes"), cell.get("path")
        if data:
            return _open(bytes(data), base, location)
        if path:
            # datasets' Image feature stores absolute paths it resolved itself; they, like relative
            # ones (ours to resolve), must lead inside the dataset root unless outside paths are allowed.
            if os.path.isabs(path) or base is None:
                return _open_path(check_inside(Path(path), base, location, allow_external), location)
            joined = safe_join(base, path, location)
            return _open_path(check_inside(joined, base, location, allow_external), location)
        raise BadExample(MISSING_IMAGE, location, "image cell has neither bytes nor path")
    if isinstance(cell, (bytes, bytearray, memoryview)):
        if len(cell) == 0:
            raise BadExample(MISSING_IMAGE, location, "image bytes are empty")
        return _decode(io.BytesIO(bytes(cell)), location, "image bytes")
    if isinstance(cell, str):
        if base is None:
            raise BadExample(
                MISSING_IMAGE, location, f"image path '{cell}' has no dataset root to resolve it"
            )
        return _open_path(
            check_inside(safe_join(base, cell, location), base, location, allow_external), location
        )
    raise BadExample(UNREADABLE_IMAGE, location, f"image cell has unsupported type {type(cell).__name__}")


def _open_path(path: Path, location: str) -> Image.Image:
    if not path.is_file():
        raise BadExample(MISSING_IMAGE, location, f"image file {path} not found")
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise BadExample(
            UNREADABLE_IMAGE, location, f"cannot read image file {path}: {exc.strerror}"
        ) from None
    return _decode(io.BytesIO(data), location, f"image file {path}")


def _decode(fh: io.BytesIO, location: str, what: str) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(fh)
            img.load()  # force a full decode so truncated files fail here, not in training
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadExample(UNREADABLE_IMAGE, location, f"{what} is not a readable image ({exc})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadExample(UNREADABLE_IMAGE, location, f"{what} is corrupt ({exc})") from None
    return upright(img)


_ORIENTATION = 0x0112  # the EXIF tag cameras use instead of rotating the pixels


def upright(img: Image.Image) -> Image.Image:
    """``img`` rotated/flipped as its EXIF Orientation says (what viewers and ``datasets.Image`` show)."""
    try:
        orientation = img.getexif().get(_ORIENTATION, 1)
    except (OSError, SyntaxError, ValueError):  # unreadable EXIF: the pixels as stored
        return img
    if orientation in (None, 1):
        return img
    return ImageOps.exif_transpose(img)


def to_rgb(img: Image.Image, location: str) -> Image.Image:
    """RGB copy of ``img``; alpha is composited on white, high-bit-depth modes are refused."""
    mode = img.mode
    if mode == "P" and "transparency" in img.info:
        img, mode = img.convert("RGBA"), "RGBA"
    if mode in _WITH_ALPHA:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode in _CONVERTIBLE:
        return img if mode == "RGB" else img.convert("RGB")
    raise BadExample(
        UNSUPPORTED_MODE,
        location,
        f"image mode {mode} (e.g. 16-bit or float) has no unambiguous RGB conversion",
    )


def load_image(
    cell: Any, base: Path | None, location: str, min_size: int, allow_external: bool = False
) -> Image.Image:
    """Decode, convert to RGB and size-check one image cell; raises BadExample on any problem.

    Paths must resolve inside ``base`` (the dataset root) unless ``allow_external``.
    """
    img = to_rgb(_open(cell, base, location, allow_external), location)
    w, h = img.size
    if min(w, h) < min_size:
        raise BadExample(TOO_SMALL, location, f"image is {w}x{h}, shorter side below the minimum {min_size}")
    return img
