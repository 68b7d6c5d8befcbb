"""VAE latents of the real images, computed once and reused by every iteration and epoch.

Layout of a cache directory (see docs/data.md)::

    manifest.json             settings key, VAE/source fingerprints, shard list, counts
    shard-00000.safetensors   fp16 tensors [n, C, h, w] + ids/captions in the header, and per
                              image its original size and crop (int32 [n, 6], SDXL's add_time_ids)

Shards are written atomically and listed in the manifest as they complete, so
an interrupted build resumes where it stopped; a manifest whose settings
(VAE, resolution, crop/flip, source fingerprint, columns...) differ from the
current ones makes the whole cache be rebuilt, never reused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from spin_diffusion import __version__
from spin_diffusion.config.data import DataConfig
from spin_diffusion.data.encoding import encode_pixels, example_pixels, latent_scaling, vae_fingerprint
from spin_diffusion.data.files import source_fingerprint
from spin_diffusion.data.sources import DataSource
from spin_diffusion.data.transforms import ImageTransform
from spin_diffusion.errors import DataError
from spin_diffusion.infra.atomic import write_json_atomic
from spin_diffusion.infra.compact import CompactStringsBuilder
from spin_diffusion.infra.shards import (
    ShardReader,
    identity_changes,
    read_manifest,
    shard_metadata,
    shard_metadata_or_none,
    shard_name,
    write_shard,
)

log = logging.getLogger(__name__)

# 2: each image's original size and crop are stored (SDXL's add_time_ids)
# 3: images are turned upright by their EXIF orientation; paths outside the root are refused by default
FORMAT_VERSION = 3
MANIFEST = "manifest.json"
SHARD_PREFIX = "shard-"
ENCODING = "latent_dist.mode()"
SIZE_PREFIX = "size_cond."  # + slot name: (original h, w, crop top, left, target h, w) per example

# ---------------------------------------------------------------- manifest helpers


def _read_manifest(cache_dir: Path) -> dict | None:
    data = read_manifest(cache_dir / MANIFEST)
    if data is None and (cache_dir / MANIFEST).is_file():
        log.warning("latent cache %s: unreadable manifest, rebuilding", cache_dir)
    return data


def _clear(cache_dir: Path) -> None:
    """Delete only files this module writes (the directory may hold other things)."""
    for p in cache_dir.iterdir():
        ours = p.name.startswith(SHARD_PREFIX) or p.name in (MANIFEST, MANIFEST + ".tmp")
        if p.is_file() and ours:
            p.unlink()


def _settings(cfg: DataConfig, vae: Any, pairs: bool) -> dict:
    """Everything that determines the cache's content; any difference forces a rebuild."""
    scale, shift = latent_scaling(vae)
    return {
        "format": FORMAT_VERSION,
        "encoding": ENCODING,
        "vae": vae_fingerprint(vae),
        "scaling_factor": scale,
        "shift_factor": shift,
        "resolution": cfg.resolution,
        "center_crop": cfg.center_crop,
        "crop_seed": None if cfg.center_crop else cfg.seed,
        "random_flip": cfg.random_flip,
        "pairs": pairs,
        "source": cfg.source,
        "source_fingerprint": source_fingerprint(cfg),
        "caption_column": cfg.caption_column,
        "image_column": cfg.image_column,
        "split": cfg.split,
        "max_examples": cfg.max_examples,
        "skip_bad_examples": cfg.skip_bad_examples,
        "min_image_size": cfg.effective_min_image_size,
        "allow_external_paths": cfg.allow_external_paths,
    }


def _key(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def latent_cache_key(cfg: DataConfig, vae: Any, pairs: bool = False) -> str:
    """The fingerprint of the cache ``cfg`` and ``vae`` would give, without building it.

    It changes with the source files, the VAE and every transform setting;
    cheap (file sizes and times, not contents), and a missing ``data.path``
    is reported here as a one-line DataError.
    """
    return _key(_settings(cfg, vae, pairs))


def _slots(pairs: bool, flips: bool) -> list[str]:
    base = ["win", "lose"] if pairs else ["latents"]
    return base + [f"{s}_flip" for s in base] if flips else base


# ---------------------------------------------------------------- the cache


class LatentCache:
    """Read access to a complete cache: ids, captions and per-example latents (lazy, memory-mapped)."""

    def __init__(self, cache_dir: Path, manifest: dict) -> None:
        self.cache_dir = Path(cache_dir)
        self.manifest = manifest
        self.pairs: bool = manifest["settings"]["pairs"]
        self.flips: bool = manifest["settings"]["random_flip"]
        self.encoded_count = 0  # images encoded by the ensure_latent_cache call that returned this
        self.status = "reused"  # reused | built | resumed | rebuilt
        files: list[Path] = []
        counts: list[int] = []
        ids_builder, captions_builder = CompactStringsBuilder(), CompactStringsBuilder()
        for shard in manifest["shards"]:
            path = self.cache_dir / shard["file"]
            header = shard_metadata(path)
            ids, caps = json.loads(header["ids"]), json.loads(header["captions"])
            if len(ids) != shard["count"] or len(caps) != shard["count"]:
                raise DataError(
                    f"latent cache {path}: holds {len(ids)} examples, manifest says {shard['count']}"
                )
            files.append(path)
            counts.append(len(ids))
            ids_builder.extend(ids)
            captions_builder.extend(caps)
        # Flat buffers, not lists of str: memory per example stays a few bytes over its text.
        self.ids = ids_builder.build()
        self.captions = captions_builder.build()
        self._reader = ShardReader(files, counts)  # memory-mapped, bounded handles, picklable

    def __len__(self) -> int:
        return len(self.ids)

    def _row(self, i: int, name: str) -> torch.Tensor:
        if not 0 <= i < len(self.ids):
            raise IndexError(f"latent cache index {i} out of range (size {len(self.ids)})")
        return self._reader.row(i, name)

    def _get(self, i: int, slot: str) -> torch.Tensor:
        return self._row(i, slot).float()

    def _size(self, i: int, slot: str) -> tuple[int, int, int, int, int, int]:
        return tuple(int(v) for v in self._row(i, SIZE_PREFIX + slot).tolist())  # type: ignore[return-value]

    def _slot(self, name: str, flip: bool) -> str:
        if flip and not self.flips:
            raise ValueError("this latent cache was built without random_flip; flipped latents do not exist")
        return f"{name}_flip" if flip else name

    def latents(self, i: int, flip: bool = False) -> torch.Tensor:
        """Scaled latent [C, h, w] (float32) of example ``i``; for a pair cache, the preferred image."""
        return self._get(i, self._slot("win" if self.pairs else "latents", flip))

    def pair_latents(self, i: int, flip: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(preferred, rejected) scaled latents of preference pair ``i``."""
        if not self.pairs:
            raise ValueError("this latent cache holds single images, not preference pairs")
        return self._get(i, self._slot("win", flip)), self._get(i, self._slot("lose", flip))

    def size_cond(self, i: int, flip: bool = False) -> tuple[int, int, int, int, int, int]:
        """(original h, w, crop top, crop left, target h, w) of the image :meth:`latents` returns."""
        return self._size(i, self._slot("win" if self.pairs else "latents", flip))

    def pair_size_cond(
        self, i: int, flip: bool = False
    ) -> tuple[tuple[int, int, int, int, int, int], tuple[int, int, int, int, int, int]]:
        """The size conditioning of both images of preference pair ``i``."""
        if not self.pairs:
            raise ValueError("this latent cache holds single images, not preference pairs")
        return self._size(i, self._slot("win", flip)), self._size(i, self._slot("lose", flip))


# ---------------------------------------------------------------- building


class _ShardWriter:
    """Accumulates encoded examples and writes full shards atomically, updating the manifest."""

    def __init__(self, cache_dir: Path, manifest: dict, slots: list[str], shard_size: int) -> None:
        self.cache_dir = cache_dir
        self.manifest = manifest
        self.slots = slots
        self.shard_size = shard_size
        self.ids: list[str] = []
        self.captions: list[str] = []
        self.tensors: dict[str, list[torch.Tensor]] = {s: [] for s in slots}
        self.sizes: dict[str, list[tuple[int, ...]]] = {s: [] for s in slots}

    def add(
        self, ex_id: str, caption: str, latents: dict[str, torch.Tensor], sizes: dict[str, tuple[int, ...]]
    ) -> None:
        for slot, size in sizes.items():
            self.sizes[slot].append(size)
        for slot, z in latents.items():
            z16 = z.to(torch.float16)
            if not torch.isfinite(z16).all():
                raise DataError(
                    f"example {ex_id}: the VAE produced non-finite latents (or values beyond float16); "
                    "run the VAE in float32"
                )
            self.tensors[slot].append(z16)
        self.ids.append(ex_id)
        self.captions.append(caption)
        if len(self.ids) >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        if not self.ids:
            return
        shards = self.manifest["shards"]
        name = shard_name(len(shards))
        tensors = {s: torch.stack(v).contiguous() for s, v in self.tensors.items()}
        tensors.update({SIZE_PREFIX + s: torch.tensor(v, dtype=torch.int32) for s, v in self.sizes.items()})
        meta = {"ids": json.dumps(self.ids), "captions": json.dumps(self.captions)}
        write_shard(self.cache_dir / name, tensors, meta)
        shards.append({"file": name, "count": len(self.ids)})
        self.manifest["count"] = sum(s["count"] for s in shards)
        self.manifest["latent_shape"] = list(tensors[self.slots[0]].shape[1:])
        write_json_atomic(self.cache_dir / MANIFEST, self.manifest, sort_keys=True)
        self.ids, self.captions = [], []
        self.tensors = {s: [] for s in self.slots}
        self.sizes = {s: [] for s in self.slots}


def _valid_prefix(cache_dir: Path, shards: list[dict]) -> tuple[list[dict], set[str]]:
    """Completed shards that still exist and match the manifest; their ids are not re-encoded."""
    kept: list[dict] = []
    done: set[str] = set()
    for shard in shards:
        header = shard_metadata_or_none(cache_dir / shard["file"])
        if header is None or "ids" not in header:  # missing or damaged shard: stop keeping here
            break
        ids = json.loads(header["ids"])
        if len(ids) != shard["count"]:
            break
        kept.append(shard)
        done.update(ids)
    return kept, done


def ensure_latent_cache(
    cfg: DataConfig,
    vae: Any,
    cache_dir: Path,
    *,
    pairs: bool = False,
    batch_size: int = 16,
    show_progress: bool = True,
    shard_size: int = 1024,
) -> LatentCache:
    """Return the latent cache for ``cfg`` and ``vae`` in ``cache_dir``, building or resuming it if needed.

    ``batch_size`` counts images per ``vae.encode`` call (each example contributes
    1, 2 or 4 images: flips and pair members). In multi-process training call it
    on the main process first (e.g. ``accelerator.main_process_first()``).
    """
    if batch_size < 1 or shard_size < 1:
        raise ValueError("batch_size and shard_size must be >= 1")
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    settings = _settings(cfg, vae, pairs)
    key = _key(settings)
    old = _read_manifest(cache_dir)
    if old is not None and old.get("key") == key:
        kept, done = _valid_prefix(cache_dir, old.get("shards", []))
        if old.get("complete") and len(kept) == len(old.get("shards", [])):
            cache = LatentCache(cache_dir, old)
            log.info("latent cache %s: reusing %d examples", cache_dir, len(cache))
            return cache
        status = "resumed" if kept else "built"
        shard_size = int(old.get("shard_size", shard_size))
    else:
        kept, done, status = [], set(), _why_rebuilt(cache_dir, old, settings)
    _drop_beyond(cache_dir, kept)
    manifest = {
        "key": key,
        "settings": settings,
        "complete": False,
        "shards": kept,
        "count": sum(s["count"] for s in kept),
        "shard_size": shard_size,
        "dtype": "float16",
        "slots": _slots(pairs, cfg.random_flip),
        "data_path": os.path.abspath(cfg.path),
        "spin_diffusion_version": __version__,
    }
    write_json_atomic(cache_dir / MANIFEST, manifest, sort_keys=True)
    source = DataSource(cfg, pairs)
    encoded = _encode_source(
        cfg,
        vae,
        source,
        _ShardWriter(cache_dir, manifest, manifest["slots"], shard_size),
        done,
        batch_size,
        show_progress,
    )
    stats = source.stats
    if stats.usable == 0:
        raise DataError(
            f"data.path {cfg.path}: no usable examples (run `spin-diffusion data check` for details)"
        )
    if stats.bad:
        log.warning("data %s: skipped %d unusable examples: %s", cfg.path, stats.bad, stats.problems)
    manifest.update(complete=True, stats=stats.to_dict())
    write_json_atomic(cache_dir / MANIFEST, manifest, sort_keys=True)
    cache = LatentCache(cache_dir, manifest)
    cache.encoded_count = encoded
    cache.status = status
    log.info("latent cache %s: %s, %d examples, %d images encoded", cache_dir, status, len(cache), encoded)
    return cache


def _why_rebuilt(cache_dir: Path, old: dict | None, settings: dict) -> str:
    """ "built" for a new cache; "rebuilt" (with a warning naming what changed) for one of other settings."""
    if old is None:
        return "built"
    changed = [k for k in identity_changes(old.get("settings", {}), settings) if k in settings]
    log.warning(
        "latent cache %s: settings changed (%s); rebuilding", cache_dir, ", ".join(changed) or "format"
    )
    return "rebuilt"


def _drop_beyond(cache_dir: Path, kept: list[dict]) -> None:
    """Clear the cache (nothing kept) or drop partial leftovers beyond the kept prefix."""
    if not kept:
        _clear(cache_dir)
        return
    keep_files = {s["file"] for s in kept}
    for p in cache_dir.glob(f"{SHARD_PREFIX}*"):
        if p.name not in keep_files:
            p.unlink()


def _encode_source(
    cfg: DataConfig,
    vae: Any,
    source: DataSource,
    writer: _ShardWriter,
    done: set[str],
    batch_size: int,
    show_progress: bool,
) -> int:
    """Encode every example of ``source`` not in ``done`` into ``writer``; returns the images encoded."""
    from tqdm.auto import tqdm

    transform = ImageTransform(cfg)
    encoded = 0
    pending: list[tuple[str, str, dict[str, torch.Tensor], dict[str, tuple[int, ...]]]] = []  # per slot
    n_pending = 0

    def encode_pending() -> None:
        nonlocal encoded, n_pending
        flat = [px for _, _, slots, _ in pending for px in slots.values()]
        outs = [
            encode_pixels(vae, torch.stack(flat[k : k + batch_size])) for k in range(0, len(flat), batch_size)
        ]
        latents = iter(torch.cat(outs)) if outs else iter(())
        for ex_id, caption, slots, sizes in pending:
            writer.add(ex_id, caption, {slot: next(latents) for slot in slots}, sizes)
        encoded += len(flat)
        pending.clear()
        n_pending = 0

    bar = tqdm(total=None, initial=len(done), unit="ex", desc="encoding latents", disable=not show_progress)
    try:
        for ex_id, ex in source.iter_with_skips(done):
            bar.update(1)
            if ex is None:
                continue
            pending.append((ex_id, ex.caption, *example_pixels(ex, transform, cfg.random_flip)))
            n_pending += len(pending[-1][2])
            if n_pending >= batch_size:
                encode_pending()
        encode_pending()
        writer.flush()
    finally:
        bar.close()
    return encoded
