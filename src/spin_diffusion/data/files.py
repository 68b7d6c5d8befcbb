"""Which files a data source reads, and the fingerprint that tells a resumed run its data changed."""

from __future__ import annotations

import glob
import hashlib
import os
from pathlib import Path

from spin_diffusion.config.data import DataConfig
from spin_diffusion.errors import DataError


def _has_glob(pattern: str) -> bool:
    return any(ch in pattern for ch in "*?[")


def parquet_files(path: str) -> list[Path]:
    """Parquet files named by ``path``: a file, a directory (searched recursively) or a glob."""
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.rglob("*.parquet") if f.is_file())
    elif p.is_file():
        files = [p]
    elif _has_glob(path):
        files = sorted(Path(f) for f in glob.glob(path, recursive=True) if Path(f).is_file())
    else:
        raise DataError(f"data.path {path}: no such file or directory")
    if not files:
        raise DataError(f"data.path {path}: no parquet files found")
    return files


def _walk_files(path: Path, allow_external: bool = False) -> list[Path]:
    """Every file under ``path``, following directory links at most once each.

    A directory link is followed only to a directory not yet visited (so a
    link loop such as ``d/loop -> .`` ends) and, unless outside paths are
    allowed, only when it resolves inside ``path`` (a link to ``/`` does not
    walk the filesystem).
    """
    if path.is_file():
        return [path]
    root = os.path.realpath(path)
    visited = {root}
    out = []
    for dirpath, dirnames, filenames in os.walk(path, followlinks=True):
        keep = []
        for name in sorted(dirnames):
            real = os.path.realpath(os.path.join(dirpath, name))
            inside = real == root or real.startswith(root.rstrip(os.sep) + os.sep)
            if real in visited or not (inside or allow_external):
                continue
            visited.add(real)
            keep.append(name)
        dirnames[:] = keep
        out.extend(Path(dirpath) / f for f in sorted(filenames))
    return out


def source_files(cfg: DataConfig) -> list[Path]:
    """Every file whose content can change what the source yields (for the fingerprint)."""
    if cfg.source in ("parquet", "pickapic"):
        return parquet_files(cfg.path)
    p = Path(cfg.path)
    if not p.exists():
        raise DataError(f"data.path {cfg.path}: no such file or directory")
    return _walk_files(p, cfg.allow_external_paths)


def source_fingerprint(cfg: DataConfig) -> str:
    """Hash of (relative path, size, mtime) of every source file: cheap, and changes when data does.

    Copying a dataset (new mtimes) therefore invalidates caches built from it;
    that errs on the side of rebuilding rather than reusing stale latents.
    """
    files = [Path(os.path.abspath(f)) for f in source_files(cfg)]
    root = Path(os.path.commonpath([str(f) for f in files]))
    if len(files) == 1:
        root = root.parent
    h = hashlib.sha256()
    for f in files:
        try:
            st = f.stat()
        except OSError:  # a dangling or looping file link: its own entry, not a crash
            st = f.lstat()
        h.update(f"{f.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()
