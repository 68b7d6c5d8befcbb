"""Other keys under which a run's recorded data fingerprint still means the same data.

The latent cache key (``latents.latent_cache_key``) is what a run records in
``data.json``. Two kinds of difference do not mean different data: the cache
format moved on (format 2 -> 3), or the data set was copied (new mtimes, same
bytes). These keys let the resume check tell them apart from a real change.
"""

from __future__ import annotations

from typing import Any

from spin_diffusion.config.data import DataConfig
from spin_diffusion.data.content import content_fingerprint
from spin_diffusion.data.latents import _key, _settings


def content_cache_key(cfg: DataConfig, vae: Any, pairs: bool = False) -> str | None:
    """The cache key with the data's content in place of its names, sizes and mtimes (small data only)."""
    content = content_fingerprint(cfg)
    if content is None:
        return None
    return _key({**_settings(cfg, vae, pairs), "source_fingerprint": content})


def previous_format_key(cfg: DataConfig, vae: Any, pairs: bool = False) -> str | None:
    """The key format 2 gave the same data and settings (None if format 2 could not express them).

    A run started under format 2 may resume: its cache is rebuilt under format 3
    (identical latents unless an image carries an EXIF orientation).
    """
    if cfg.allow_external_paths:
        return None
    settings = _settings(cfg, vae, pairs)
    del settings["allow_external_paths"]
    return _key({**settings, "format": 2})


def data_record(cfg: DataConfig, vae: Any, pairs: bool = False) -> dict[str, Any]:
    """What a run records in ``data.json`` about the data it starts on."""
    from spin_diffusion.data.latents import FORMAT_VERSION, latent_cache_key

    return {
        "latent_cache_key": latent_cache_key(cfg, vae, pairs=pairs),
        "data_path": str(cfg.path),
        "latent_cache_format": FORMAT_VERSION,
        "content_key": content_cache_key(cfg, vae, pairs),
    }


def earlier_format_keys(cfg: DataConfig, vae: Any, pairs: bool = False) -> tuple[str, ...]:
    """Recorded keys that mean this same data under an earlier cache format."""
    return tuple(filter(None, [previous_format_key(cfg, vae, pairs)]))
