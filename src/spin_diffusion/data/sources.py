"""Read image-caption examples (or preference pairs) from the formats users bring.

Parquet is scanned with Arrow in small batches (flat memory whatever the file
size); Hugging Face datasets are read with ``datasets`` (memory-mapped or
streamed). Reading is split in two steps so that training can validate lazily and the
latent cache can resume cheaply: ``iter_records`` walks rows without decoding
images (stream/memory-map, never the whole table in RAM), ``materialise``
decodes and checks one row. ``open_source`` combines them with the
stop-or-skip policy and a tally of problems.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from typing import Any

from spin_diffusion.config.data import DataConfig
from spin_diffusion.data.imagefolder import imagefolder_records
from spin_diffusion.data.images import load_image
from spin_diffusion.data.problems import (
    BAD_CAPTION,
    EMPTY_CAPTION,
    MISSING_CAPTION,
    BadExample,
    SourceStats,
)
from spin_diffusion.data.records import MISSING, Example, PairExample, Record
from spin_diffusion.data.tables import (
    hf_disk_records,
    hf_records,
    parquet_records,
    pickapic_records,
)
from spin_diffusion.errors import ConfigError, DataError


def iter_records(cfg: DataConfig, pairs: bool = False) -> Iterator[Record]:
    """Undecoded rows of the source in a fixed order; fatal problems (missing column...) raise DataError."""
    if pairs and cfg.source != "pickapic":
        raise ConfigError(f"data.source {cfg.source}: preference pairs (DPO) need source 'pickapic'")
    if cfg.source == "imagefolder":
        return imagefolder_records(cfg)
    if cfg.source == "parquet":
        return parquet_records(cfg)
    if cfg.source == "pickapic":
        return pickapic_records(cfg, pairs)
    if cfg.source == "hf_disk":
        return hf_disk_records(cfg)
    return hf_records(cfg)


def clean_caption(value: Any, location: str, column: str) -> str:
    """Caption as a stripped string (first non-empty entry of a list); BadExample if absent or blank."""
    if value is MISSING or value is None:
        raise BadExample(MISSING_CAPTION, location, f"caption '{column}' is missing")
    if isinstance(value, (list, tuple)):
        texts = [v for v in value if isinstance(v, str)]
        if not texts:
            raise BadExample(MISSING_CAPTION, location, f"caption '{column}' is a list with no text in it")
        value = next((v for v in texts if v.strip()), "")
    if not isinstance(value, str):
        raise BadExample(
            MISSING_CAPTION, location, f"caption '{column}' is a {type(value).__name__}, not text"
        )
    text = value.strip()
    if not text:
        raise BadExample(EMPTY_CAPTION, location, f"caption '{column}' is empty")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise BadExample(
            BAD_CAPTION,
            location,
            f"caption '{column}' is not valid Unicode text ({exc.reason} at {exc.start})",
        ) from None
    return text


def materialise(rec: Record, cfg: DataConfig) -> Example | PairExample:
    """Decode and check one record; raises BadExample naming the row on any problem."""
    if rec.problem is not None:
        raise rec.problem
    caption = clean_caption(rec.caption, rec.location, cfg.caption_column)
    min_size, external = cfg.effective_min_image_size, cfg.allow_external_paths
    if len(rec.images) == 2:
        win = load_image(rec.images[0], rec.base, f"{rec.location} (preferred image)", min_size, external)
        lose = load_image(rec.images[1], rec.base, f"{rec.location} (rejected image)", min_size, external)
        return PairExample(rec.id, caption, win, lose)
    return Example(rec.id, caption, load_image(rec.images[0], rec.base, rec.location, min_size, external))


class DataSource:
    """Iterable of usable examples that stops (or skips and counts) on bad rows.

    ``stats`` describes the most recent pass. Iterating again re-reads the source
    in the same order, so ids and order are stable.
    """

    def __init__(
        self, cfg: DataConfig, pairs: bool = False, *, skip_bad: bool | None = None, limit: int | None = -1
    ) -> None:
        self.cfg = cfg
        self.pairs = pairs
        self.skip_bad = cfg.skip_bad_examples if skip_bad is None else skip_bad
        self.limit = cfg.max_examples if limit == -1 else limit
        self.stats = SourceStats()
        if pairs and cfg.source != "pickapic":
            raise ConfigError(f"data.source {cfg.source}: preference pairs (DPO) need source 'pickapic'")

    def __iter__(self) -> Iterator[Example | PairExample]:
        for _, ex in self.iter_with_skips():
            assert ex is not None
            yield ex

    def iter_with_skips(
        self, done: Collection[str] = (), on_bad: Callable[[BadExample], None] | None = None
    ) -> Iterator[tuple[str, Example | PairExample | None]]:
        """Yield ``(id, example)``; ids in ``done`` are counted as usable but not decoded (example None)."""
        self.stats = stats = SourceStats()
        for rec in iter_records(self.cfg, self.pairs):
            if self.limit is not None and stats.usable >= self.limit:
                return
            stats.rows_read += 1
            if rec.tie:
                stats.ties_dropped += 1
                continue
            if rec.id in done and rec.problem is None:
                stats.usable += 1
                yield rec.id, None
                continue
            try:
                ex = materialise(rec, self.cfg)
            except BadExample as bad:
                if not self.skip_bad:
                    raise DataError(
                        f"{bad} (set data.skip_bad_examples: true to skip such examples)"
                    ) from None
                stats.record(bad)
                if on_bad is not None:
                    on_bad(bad)
                continue
            stats.usable += 1
            yield rec.id, ex


def open_source(cfg: DataConfig, pairs: bool = False) -> DataSource:
    """The configured source as an iterable of ``Example`` (or ``PairExample`` when ``pairs``)."""
    return DataSource(cfg, pairs)


def scan_source(cfg: DataConfig, pairs: bool = False) -> SourceStats:
    """Read the whole source (ignoring max_examples), collecting every problem instead of stopping."""
    src = DataSource(cfg, pairs, skip_bad=True, limit=None)
    for _ in src.iter_with_skips():
        pass
    return src.stats
