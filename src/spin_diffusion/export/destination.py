"""Where an export may be written, and what ``--overwrite`` may replace there.

An export replaces its destination as a whole (the atomic rename of a finished
temporary directory), so the destination must never be the run it reads, a
folder above it or one inside it, and ``--overwrite`` may only replace a folder
that an earlier export wrote: anything else there is the user's, not ours.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from spin_diffusion.errors import ConfigError

log = logging.getLogger(__name__)

CONFIG_COPY = "spin_diffusion_config.yaml"  # written into every export: the mark of one
CARD = "README.md"
GRID = "grid.png"
LORA_DIR = "lora"
PIPELINE_INDEX = "model_index.json"
_EXPORT_EXTRAS = {CONFIG_COPY, CARD, GRID, LORA_DIR, PIPELINE_INDEX}


def check_destination(run_dir: Path, out: Path) -> None:
    """Refuse an OUT that is the run directory, holds it, or lies inside it (compared as resolved paths)."""
    run_real, out_real = Path(run_dir).resolve(), Path(out).resolve()
    if out_real == run_real:
        raise ConfigError(f"{out} is the run directory itself; export to a new directory outside it")
    if run_real.is_relative_to(out_real):
        raise ConfigError(f"{out} contains the run directory {run_dir}; export to a new directory outside it")
    if out_real.is_relative_to(run_real):
        raise ConfigError(f"{out} is inside the run directory {run_dir}; export to a directory outside it")


def _export_entries(out: Path) -> set[str] | None:
    """The top-level names an earlier export wrote into ``out``, or None if ``out`` is not an export."""
    index = out / PIPELINE_INDEX
    if not (out / CONFIG_COPY).is_file() or not index.is_file() or index.is_symlink():
        return None
    try:
        components = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(components, dict):
        return None
    return _EXPORT_EXTRAS | {name for name in components if not name.startswith("_")}


def check_replaceable(out: Path, overwrite: bool) -> None:
    """Refuse to write over anything but an empty folder or, with ``--overwrite``, an earlier export."""
    if not out.exists() and not out.is_symlink():
        return
    if out.is_dir() and not out.is_symlink() and not any(out.iterdir()):
        return
    if not overwrite:
        raise ConfigError(f"{out} already exists; choose a new directory or pass --overwrite")
    entries = _export_entries(out) if out.is_dir() and not out.is_symlink() else None
    if entries is None:
        raise ConfigError(
            f"--overwrite: {out} is not an earlier export (no {CONFIG_COPY} and {PIPELINE_INDEX}), "
            "so nothing in it is replaced; choose a new directory"
        )
    foreign = sorted(p.name for p in out.iterdir() if p.name not in entries)
    if foreign:
        shown = ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else "")
        raise ConfigError(
            f"--overwrite: {out} holds files an export did not write ({shown}); "
            "move them away or choose a new directory"
        )


def copy_regular_file(src: Path, dst: Path) -> bool:
    """Copy ``src`` only if it is a regular file and not a symlink (a link could ship any file on the host)."""
    if src.is_symlink() or not src.is_file():
        if src.is_symlink():
            log.warning("not exporting %s: it is a symbolic link, and only regular files are copied", src)
        return False
    shutil.copyfile(src, dst, follow_symlinks=False)
    return True


def read_regular_text(path: Path) -> str | None:
    """The text of ``path`` when it is a regular file (not a symlink), else None."""
    if path.is_symlink() or not path.is_file():
        return None
    return path.read_text(encoding="utf-8")


def is_regular_file(path: Path) -> bool:
    return path.is_file() and not path.is_symlink() and os.path.isfile(path)
