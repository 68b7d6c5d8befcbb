"""A content fingerprint of a small data set, so that a copy of it counts as the same data.

The cheap fingerprint (``sources.source_fingerprint``: names, sizes, mtimes)
changes when a data set is copied, since a copy gets new mtimes. For data sets
up to ``CONTENT_LIMIT`` bytes the run also records a hash of the files'
contents; a resume whose cheap fingerprint differs is accepted when the
contents are the same. Larger data sets are not read twice: a copy of one is
still taken for changed data.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from spin_diffusion.config.data import DataConfig
from spin_diffusion.data.files import source_files

CONTENT_LIMIT = 256 * 2**20  # bytes read at each start, at most


def content_fingerprint(cfg: DataConfig, limit: int = CONTENT_LIMIT) -> str | None:
    """sha256 of (relative path, content) of every source file; None when they exceed ``limit`` bytes."""
    files = [Path(os.path.abspath(f)) for f in source_files(cfg)]
    root = Path(os.path.commonpath([str(f) for f in files]))
    if len(files) == 1:
        root = root.parent
    sizes = []
    for f in files:
        try:
            sizes.append(f.stat().st_size)
        except OSError:  # a dangling or looping link: named, with no content
            sizes.append(None)
    if sum(s for s in sizes if s is not None) > limit:
        return None
    h = hashlib.sha256()
    for f, size in zip(files, sizes, strict=True):
        h.update(f"{f.relative_to(root)}\0".encode())
        if size is None:
            h.update(b"unreadable link\n")
            continue
        with open(f, "rb") as fh:
            for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                h.update(block)
        h.update(b"\n")
    return h.hexdigest()
