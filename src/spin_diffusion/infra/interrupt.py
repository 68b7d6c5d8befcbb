"""Ctrl-C and SIGTERM as a request to stop at the next safe point, not a kill.

Long stages (opponent sampling, training) install :class:`StopFlag` and check it
between units of work (a sampling batch, an optimizer step); they then keep
what is complete and raise an :class:`Interrupted` error, which the CLI turns
into one line and exit code 130.
"""

from __future__ import annotations

import contextlib
import signal
from typing import Any

from spin_diffusion.errors import UserError


class Interrupted(UserError):
    """SIGINT/SIGTERM stopped a stage at a safe point; the same command resumes."""

    exit_code = 130


class StopFlag:
    """Turns SIGINT/SIGTERM into a flag that the running stage checks at its safe points."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: no handler
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __call__(self) -> bool:
        """True once a stop was requested."""
        return self.signal is not None

    def _handle(self, signum: int, frame: Any) -> None:
        self.signal = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
