"""Training checkpoints on disk: listing, verifying, pruning, and the log they resume with.

A checkpoint counts only once its complete marker (size and hash of every
file) is written; a resume verifies it and skips a torn or damaged one.
"""

from __future__ import annotations

import errno
import hashlib
import json
import re
import shutil
from pathlib import Path

from spin_diffusion.infra.atomic import write_json_atomic, write_text_atomic
from spin_diffusion.infra.run_layout import TRAIN_LOG

TRAIN_STATE = "train_state.json"

_STEP_DIR = re.compile(r"^step-(\d+)$")
COMPLETE = "complete.json"
LOG = TRAIN_LOG


def list_checkpoints(ckpt_root: Path) -> list[tuple[int, Path]]:
    """Checkpoints whose save finished (they hold the complete marker), oldest first."""
    return [(step, p) for step, p in _step_dirs(ckpt_root) if (p / COMPLETE).is_file()]


def _step_dirs(ckpt_root: Path) -> list[tuple[int, Path]]:
    found = []
    if ckpt_root.is_dir():
        for p in ckpt_root.iterdir():
            m = _STEP_DIR.match(p.name)
            if m and p.is_dir():
                found.append((int(m.group(1)), p))
    return sorted(found)


def prune_checkpoints(ckpt_root: Path, keep: int | None) -> None:
    if keep is None:
        return
    for _, path in list_checkpoints(ckpt_root)[:-keep]:
        shutil.rmtree(path, ignore_errors=True)


def _file_digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def write_complete_marker(ckpt: Path) -> None:
    """Written after every other file: size and hash of each, so a resume can tell a torn save."""
    files = {
        p.relative_to(ckpt).as_posix(): {"size": p.stat().st_size, "blake2b": _file_digest(p)}
        for p in sorted(ckpt.rglob("*"))
        if p.is_file() and p.name != COMPLETE
    }
    write_json_atomic(ckpt / COMPLETE, {"files": files})


def checkpoint_problem(ckpt: Path) -> str | None:
    """Why ``ckpt`` cannot be resumed from, or None when every file is as it was written."""
    marker = ckpt / COMPLETE
    if not marker.is_file():
        return f"it has no {COMPLETE} (its save did not finish)"
    try:
        files = json.loads(marker.read_text())["files"]
        expected = {name: (int(v["size"]), str(v["blake2b"])) for name, v in files.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return f"its {COMPLETE} is unreadable"
    if TRAIN_STATE not in expected:
        return f"it has no {TRAIN_STATE}"
    for name, (size, digest) in expected.items():
        path = ckpt / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, {size} were written"
        if _file_digest(path) != digest:
            return f"{name} does not match the hash recorded when it was written"
    return None


def newest_resumable(ckpt_root: Path) -> tuple[tuple[int, Path] | None, list[tuple[Path, str]]]:
    """The newest checkpoint that verifies, and the newer ones skipped with the reason for each."""
    skipped: list[tuple[Path, str]] = []
    for step, path in reversed(_step_dirs(ckpt_root)):
        problem = checkpoint_problem(path)
        if problem is None:
            return (step, path), skipped
        skipped.append((path, problem))
    return None, skipped


def remove_stray_temporaries(ckpt_root: Path) -> None:
    """Drop ``.step-N.tmp`` directories a failed or killed save left behind."""
    if ckpt_root.is_dir():
        for tmp in ckpt_root.glob(".step-*.tmp"):
            shutil.rmtree(tmp, ignore_errors=True)


_DISK_FULL_WORDS = ("No space left", "StorageFull", "Disk quota exceeded")


def is_disk_full(exc: BaseException, where: Path) -> bool:
    """Whether a failed save ran out of disk (call before the partial files are removed).

    An OSError says so by errno. safetensors and torch.save wrap the OS error in
    their own exceptions: safetensors keeps the OS text, torch.save only says
    "file write failed", so that one counts when the disk is nearly full.
    """
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(seen)
        if any(word in text for word in _DISK_FULL_WORDS):
            return True
        if "write failed" in text and _nearly_full(where):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _nearly_full(where: Path) -> bool:
    try:
        usage = shutil.disk_usage(where)
    except OSError:
        return False
    return usage.free < max(256 * 2**20, usage.total // 100)


def truncate_log(path: Path, step: int) -> None:
    """Keep only log lines up to ``step``: later ones were written after the checkpoint resumed from.

    Lines torn by a kill are dropped too. Rewritten atomically, and only when something changes.
    """
    if not path.is_file():
        return
    text = path.read_text(encoding="utf-8", errors="replace")
    kept = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
            kept.append(line + "\n")
    if "".join(kept) != text:
        write_text_atomic(path, "".join(kept))
