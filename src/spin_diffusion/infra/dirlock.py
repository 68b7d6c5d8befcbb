"""One writer per output directory: an exclusive ``flock`` on ``DIR/.lock`` while a job writes there.

``flock`` is released by the kernel when its holder dies, so a lock file left
by a killed process never blocks a restart: only a live holder does. The
holder's pid is written into the file so the refusal can name it.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

from spin_diffusion.errors import UserError

LOCK = ".lock"


class DirectoryBusy(UserError):
    """Another live process holds the directory's lock."""


@contextlib.contextmanager
def directory_lock(directory: Path, holder: str, writable_hint: str) -> Iterator[None]:
    """Hold ``directory/.lock`` exclusively; ``holder`` names the other job in the refusal
    ("training process"), ``writable_hint`` says what to change when the lock cannot be created."""
    import fcntl

    path = Path(directory) / LOCK
    try:
        Path(directory).mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise UserError(
            f"cannot create the lock file {path} ({exc.strerror or exc}); the directory must be "
            f"writable by this user: fix its permissions or {writable_hint}"
        ) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            pid = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise DirectoryBusy(
                f"{directory} is in use by another {holder} (pid {pid}); "
                "wait for it to finish or stop it, then run the command again"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
