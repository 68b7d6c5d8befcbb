"""Pickled weight files are checked before loading: plain tensors pass, a pickle with code is refused.

A pickle (``.bin``, ``.pt``, ``.ckpt``...) can carry code. The libraries we
load through already refuse to run it (``torch.load(weights_only=True)``),
but they say so deep inside a traceback, or after other work was done, or in
words that read like advice to disable the protection. Reading each pickled
weight file the same safe way first (memory-mapped, so cheap) gives one line,
at the start, that says what was refused and why. Folders with safetensors
weights are not looked into: the loaders prefer those.
"""

from __future__ import annotations

from pathlib import Path

from spin_diffusion.errors import CheckpointError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def pickled_files(directory: Path) -> list[Path]:
    """The pickled weight files the loaders would read in ``directory`` (none if it has safetensors)."""
    if not directory.is_dir() or any(directory.glob("*.safetensors")):
        return []
    return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix in PICKLE_SUFFIXES)


def refusal(path: Path, what: str) -> CheckpointError:
    return CheckpointError(
        f"{what} {path} is a pickle that carries code (not only tensors), so it was refused; "
        "use safetensors weights (save_pretrained(..., safe_serialization=True) where you trust the file)"
    )


def check_pickle(path: Path, what: str) -> None:
    """Read ``path`` as ``torch.load(weights_only=True)`` would; a refused pickle is one line."""
    import torch

    try:
        try:
            torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:  # the legacy (non-zip) format cannot be memory-mapped
            if is_refused_pickle(exc):
                raise
            torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a refused pickle is ours to word; anything else is the loader's
        if is_refused_pickle(exc):
            raise refusal(path, what) from None


def refuse_pickled_weights(directory: Path, what: str, *, components: bool = False) -> None:
    """Check every pickled weight file in ``directory`` (and with ``components`` its sub-folders)."""
    directory = Path(directory)
    folders = [directory]
    if components and directory.is_dir():
        folders += sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))
    for folder in folders:
        for path in pickled_files(folder):
            check_pickle(path, what)


def is_refused_pickle(exc: BaseException) -> bool:
    """True for the error torch raises when ``weights_only`` loading meets a pickle with code in it."""
    text = str(exc)
    # torch words every weights_only failure alike; a pickle with code names the global it wanted
    return "Weights only load failed" in text and "global" in text.lower()


def unpickling_reason(exc: BaseException) -> str:
    """The reason torch gives after its advice (for files that are simply not tensor pickles)."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:
        reason = text.split("WeightsUnpickler error:", 1)[1].strip().splitlines()[0].strip()
        return f"not a tensor file ({reason or 'unreadable pickle'})"
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return first[:200]
