"""Whether two path strings in run configs name the same place, for resuming a run.

A run's identity includes its data and model paths. Compared as strings, the
same run resumed with a relative instead of an absolute path, or from a
checkout that was moved, looked like a different run. Paths are compared by
where they lead instead; a path that no longer exists is taken to have moved
when a path with the same final name exists now. That is safe because the
content is checked after this: the data by its fingerprint (``data.json``),
the base model by its weights' fingerprint against iteration 1's record.
"""

from __future__ import annotations

import os
from pathlib import Path


def _normal(path: str) -> str:
    """``path`` made absolute with its directory part resolved (the last part may be a glob)."""
    text = os.path.expanduser(path).rstrip("/\\") or path
    head, tail = os.path.split(text)
    return os.path.join(os.path.realpath(head or "."), tail)


def same_location(saved: str | None, current: str | None) -> bool:
    """True when ``saved`` and ``current`` lead to the same file or directory (or ``saved`` moved there)."""
    if saved == current:
        return True
    if not isinstance(saved, str) or not isinstance(current, str):
        return False
    if _normal(saved) == _normal(current):
        return True
    a, b = Path(saved).expanduser(), Path(current).expanduser()
    if a.exists() and b.exists():
        return os.path.realpath(a) == os.path.realpath(b)
    return not a.exists() and b.exists() and a.name == b.name  # moved; the content checks decide


def path_insensitive(saved: dict, current: dict) -> dict:
    """``current`` with its ``path`` replaced by ``saved``'s when both name the same place."""
    if (
        isinstance(saved, dict)
        and isinstance(current, dict)
        and same_location(saved.get("path"), current.get("path"))
    ):
        return {**current, "path": saved.get("path")}
    return current
