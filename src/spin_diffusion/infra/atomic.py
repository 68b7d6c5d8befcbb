"""Write files and directories so that nothing half-written ever looks complete.

Every output is written under a hidden temporary sibling name and renamed
into place only when complete; a failure removes the temporary. Resume logic
everywhere relies on this: a file that exists is a finished file.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def temp_sibling(final: Path, suffix: str = "") -> Path:
    """``dir/.name.tmp-PID`` (plus ``suffix``, for writers that pick a format by extension)."""
    final = Path(final)
    return final.with_name(f".{final.name}.tmp-{os.getpid()}{suffix}")


@contextlib.contextmanager
def atomic_file(final: Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path to write; it replaces ``final`` only if the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(final, suffix)
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: Path, data: Any, *, sort_keys: bool = False) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=sort_keys, default=str) + "\n")


def save_image_atomic(image: Any, path: Path) -> None:
    """Save a PIL image as PNG."""
    with atomic_file(path, ".png") as tmp:
        image.save(tmp, format="PNG")


@contextlib.contextmanager
def atomic_directory(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling directory that replaces ``final`` only if the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(final)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(final: Path) -> list[Path]:
    """Remove ``.name.tmp-PID`` / ``.name.old-PID`` siblings of ``final`` left by processes that died.

    A killed writer never reaches its cleanup, and a full pipeline's temporary
    can be gigabytes; a live writer's temporaries are left alone.
    """
    final = Path(final)
    removed = []
    if not final.parent.is_dir():
        return removed
    for kind in ("tmp", "old"):
        for path in final.parent.glob(f".{glob.escape(final.name)}.{kind}-*"):
            pid = path.name.rsplit("-", 1)[-1].split(".", 1)[0]
            if not pid.isdigit() or _pid_alive(int(pid)):
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            removed.append(path)
    return removed
