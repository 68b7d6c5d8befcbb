"""The run directory's guards: one writer at a time, and no resume onto different data or settings.

A run directory is only meaningful if everything in it came from one config
and one data set. These checks run before anything is written into it, so a
refused start leaves the directory exactly as it was.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from spin_diffusion.config.base import read_yaml
from spin_diffusion.config.run import RunConfig, dump_config, identity_changes, validate_config
from spin_diffusion.errors import ConfigError
from spin_diffusion.infra.atomic import write_json_atomic, write_text_atomic
from spin_diffusion.infra.dirlock import directory_lock
from spin_diffusion.infra.run_layout import RunLayout


def iteration_done(run_dir: Path, k: int) -> bool:
    return RunLayout(run_dir).iteration(k).done.is_file()


def has_progress(run_dir: Path) -> bool:
    """True once any iteration has started: samples, checkpoints or a finished model exist."""
    return any(any(it.root.iterdir()) for it in RunLayout(run_dir).iterations())


def check_resumable(cfg: RunConfig) -> None:
    """Refuse to resume a run directory that was started with a different identity (writes nothing)."""
    run_dir = cfg.run_dir
    saved_path = RunLayout(run_dir).config
    if not saved_path.is_file():
        return
    saved = validate_config(read_yaml(saved_path), str(saved_path))
    changed = identity_changes(saved, cfg)
    if changed:
        raise ConfigError(
            f"{run_dir} was started with a different {', '.join(changed)}; "
            "use a new run name (or delete the run directory) instead of mixing results"
        )
    if len(cfg.iterations) < len(saved.iterations) and iteration_done(run_dir, len(cfg.iterations) + 1):
        raise ConfigError(f"{run_dir} already has more iterations than this config asks for")


def write_run_config(cfg: RunConfig) -> Path:
    """Save the resolved config as run (main process only, after every check has passed)."""
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(RunLayout(cfg.run_dir).config, dump_config(cfg))
    return cfg.run_dir


def check_data_unchanged(
    run_dir: Path, fingerprint: dict[str, Any], also_accept: tuple[str, ...] = ()
) -> None:
    """Refuse to continue a started run on data whose content differs from what it started on.

    ``fingerprint`` identifies the real-latent cache (source files, VAE,
    transforms); ``also_accept`` are keys the same data had under an earlier
    cache format. A small data set's ``content_key`` (its bytes, not its mtimes)
    also matches a copy of it. A run with no progress yet simply records the new one.
    """
    path = RunLayout(run_dir).data_record
    if path.is_file() and has_progress(run_dir):
        recorded = read_data_record(path)
        content = recorded.get("content_key")
        same_content = content is not None and content == fingerprint.get("content_key")  # a copy: new mtimes
        same_files = recorded.get("latent_cache_key") in (fingerprint.get("latent_cache_key"), *also_accept)
        if not (same_files or same_content):
            raise ConfigError(
                f"the data under data.path changed since {run_dir} started (its images, captions or "
                "encoding settings differ from the recorded fingerprint in "
                f"{path}){format_change_note(recorded, fingerprint)}; use a new run name instead of mixing data"
            )


def read_data_record(path: Path) -> dict[str, Any]:
    """The recorded data fingerprint; a damaged record is one clear error, not a JSON traceback."""
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        recorded = exc
    if not isinstance(recorded, dict):
        raise ConfigError(
            f"{path} is damaged (not the JSON record of the data {path.parent} started on), so the data "
            "cannot be checked; restore it, or start a new run name"
        )
    return recorded


def format_change_note(recorded: dict[str, Any], fingerprint: dict[str, Any]) -> str:
    """Why the key differs when it is this program's cache format, not the data, that changed."""
    old, new = recorded.get("latent_cache_format"), fingerprint.get("latent_cache_format")
    if old == new:
        return ""
    return (
        f"; the latent cache format also changed ({old or 'older'} -> {new}: this version encodes images "
        "differently, see docs/data.md), so finish this run with the version that started it"
    )


def record_data(run_dir: Path, fingerprint: dict[str, Any]) -> None:
    write_json_atomic(RunLayout(run_dir).data_record, fingerprint)


@contextlib.contextmanager
def run_lock(run_dir: Path, enabled: bool = True) -> Iterator[None]:
    """An exclusive advisory lock on ``run_dir/.lock`` for the whole run (see ``infra.dirlock``).

    Only the main process of a multi-process launch takes it.
    """
    if not enabled:
        yield
        return
    with directory_lock(run_dir, "training process", "choose another output_dir"):
        yield
