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

import csv
import glob
import hashlib
import json
import os
import re
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from spin_diffusion.config.data import DataConfig
from spin_diffusion.data.images import load_image
from spin_diffusion.data.problems import (
    BAD_CAPTION,
    BAD_LABEL,
    BAD_METADATA,
    EMPTY_CAPTION,
    MISSING_CAPTION,
    BadExample,
    SourceStats,
)
from spin_diffusion.errors import ConfigError, DataError

PICKAPIC_IMAGES = ("jpg_0", "jpg_1")
PICKAPIC_LABELS = ("label_0", "label_1")
_MISSING = object()


@dataclass(frozen=True)
class Example:
    """One usable image-caption pair; ``id`` is stable across runs (file name or file:row)."""

    id: str
    caption: str
    image: Image.Image


@dataclass(frozen=True)
class PairExample:
    """One usable preference pair (Pick-a-Pic): the preferred and the rejected image for a caption."""

    id: str
    caption: str
    image_win: Image.Image
    image_lose: Image.Image


@dataclass
class Record:
    """A row before decoding: enough to identify it, validate its caption and find its image(s)."""

    id: str
    location: str
    caption: Any = _MISSING
    images: tuple[Any, ...] = ()
    base: Path | None = None  # directory that relative image paths are resolved against
    problem: BadExample | None = None  # found without decoding (bad metadata line, bad labels)
    tie: bool = False


# ---------------------------------------------------------------- helpers


def _has_glob(pattern: str) -> bool:
    return any(ch in pattern for ch in "*?[")


def parquet_files(path: str) -> list[Path]:
    """Parquet files named by ``path``: a file, a directory (searched recursively) or a glob."""
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.rglob("*.parquet") if f.is_file())
    elif p.is_file():
        files = [p]
    elif _has_glob(path):
        files = sorted(Path(f) for f in glob.glob(path, recursive=True) if Path(f).is_file())
    else:
        raise DataError(f"data.path {path}: no such file or directory")
    if not files:
        raise DataError(f"data.path {path}: no parquet files found")
    return files


def _walk_files(path: Path, allow_external: bool = False) -> list[Path]:
    """Every file under ``path``, following directory links at most once each.

    A directory link is followed only to a directory not yet visited (so a
    link loop such as ``d/loop -> .`` ends) and, unless outside paths are
    allowed, only when it resolves inside ``path`` (a link to ``/`` does not
    walk the filesystem).
    """
    if path.is_file():
        return [path]
    root = os.path.realpath(path)
    visited = {root}
    out = []
    for dirpath, dirnames, filenames in os.walk(path, followlinks=True):
        keep = []
        for name in sorted(dirnames):
            real = os.path.realpath(os.path.join(dirpath, name))
            inside = real == root or real.startswith(root.rstrip(os.sep) + os.sep)
            if real in visited or not (inside or allow_external):
                continue
            visited.add(real)
            keep.append(name)
        dirnames[:] = keep
        out.extend(Path(dirpath) / f for f in sorted(filenames))
    return out


def source_files(cfg: DataConfig) -> list[Path]:
    """Every file whose content can change what the source yields (for the fingerprint)."""
    if cfg.source in ("parquet", "pickapic"):
        return parquet_files(cfg.path)
    p = Path(cfg.path)
    if not p.exists():
        raise DataError(f"data.path {cfg.path}: no such file or directory")
    return _walk_files(p, cfg.allow_external_paths)


def source_fingerprint(cfg: DataConfig) -> str:
    """Hash of (relative path, size, mtime) of every source file: cheap, and changes when data does.

    Copying a dataset (new mtimes) therefore invalidates caches built from it;
    that errs on the side of rebuilding rather than reusing stale latents.
    """
    files = [Path(os.path.abspath(f)) for f in source_files(cfg)]
    root = Path(os.path.commonpath([str(f) for f in files]))
    if len(files) == 1:
        root = root.parent
    h = hashlib.sha256()
    for f in files:
        try:
            st = f.stat()
        except OSError:  # a dangling or looping file link: its own entry, not a crash
            st = f.lstat()
        h.update(f"{f.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _guarded(rows: Iterable[Any], what: str) -> Iterator[Any]:
    """Iterate a third-party reader, turning its failures into one-line DataErrors."""
    it = iter(rows)
    while True:
        try:
            row = next(it)
        except StopIteration:
            return
        except (DataError, BadExample):
            raise
        except Exception as exc:  # noqa: BLE001 - any reader failure becomes a clean message
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DataError(f"{what}: reading failed: {first}") from None
        yield row


def _missing_column(where: str, column: str, field: str, available: Iterable[str]) -> DataError:
    cols = ", ".join(sorted(available)) or "none"
    return DataError(f"{where}: column '{column}' (data.{field}) not found; available columns: {cols}")


def _decode_off(ds: Any, columns: Iterable[str]) -> Any:
    """Ask ``datasets`` for raw image cells so decoding (and its errors) happens in ``load_image``."""
    import datasets

    features = getattr(ds, "features", None) or {}
    for col in columns:
        if isinstance(features.get(col), datasets.Image):
            ds = ds.cast_column(col, datasets.Image(decode=False))
    return ds


# ---------------------------------------------------------------- imagefolder


def _metadata_file(root: Path, split: str) -> Path:
    for d in (root, root / split):
        for name in ("metadata.jsonl", "metadata.csv"):
            if (d / name).is_file():
                return d / name
    raise DataError(
        f"data.path {root}: no metadata.jsonl (or metadata.csv) in it or in its '{split}' sub-directory"
    )


def _bad_byte(text: str) -> tuple[int, int] | None:
    """``(byte, index)`` of the first undecodable byte in ``text`` read with ``surrogateescape``."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return ord(text[exc.start]) - 0xDC00, exc.start
    return None


def _not_utf8(byte: int, where: str) -> str:
    return f"not UTF-8 text (byte 0x{byte:02x} {where}); save the file as UTF-8"


# An embedded line that starts like a metadata row ("name.png,..."): a quote left open swallowed it.
_ROW_LIKE = re.compile(r"^[^,\n]+\.(?:png|jpe?g|webp|bmp|gif|tiff?)\s*,", re.IGNORECASE | re.MULTILINE)


def _metadata_rows(meta: Path) -> Iterator[tuple[int, dict | BadExample]]:
    """``(line, row)`` per metadata row, ``line`` being where the row starts in the file.

    The file is decoded as UTF-8 with an optional byte-order mark (Windows tools write one), and
    undecodable bytes are kept as surrogates so that only the rows holding them are bad and each
    is reported on its own line (a decode error of the whole read buffer would name a line far
    before the real one).
    """
    try:
        fh = open(meta, encoding="utf-8-sig", errors="surrogateescape", newline="")  # noqa: SIM115
    except OSError as exc:
        raise DataError(f"{meta}: cannot read: {exc.strerror}") from None
    with fh:
        if meta.suffix == ".csv":
            yield from _csv_rows(meta, fh)
            return
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            bad = _bad_byte(line)
            if bad is not None:
                problem = _not_utf8(bad[0], f"at column {bad[1] + 1}")
                yield lineno, BadExample(BAD_METADATA, f"{meta}:{lineno}", problem)
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                yield lineno, BadExample(BAD_METADATA, f"{meta}:{lineno}", f"not valid JSON ({exc.msg})")
                continue
            if not isinstance(row, dict):
                yield lineno, BadExample(BAD_METADATA, f"{meta}:{lineno}", "line is not a JSON object")
                continue
            yield lineno, row


def _csv_rows(meta: Path, fh: Iterable[str]) -> Iterator[tuple[int, dict | BadExample]]:
    """Rows of a ``metadata.csv`` read in strict mode, so a quote left open is an error, not rows
    silently merged into one caption (the lenient reader runs it to the end of the file)."""
    reader = csv.reader(fh, strict=True)
    start = 1
    header: list[str] | None = None
    try:
        for values in reader:
            first, start = start, reader.line_num + 1  # this row's first line; the next row's
            if not values:
                continue
            bad = next(((i, b) for i, v in enumerate(values) if (b := _bad_byte(v))), None)
            if header is None:
                if bad is not None:
                    raise DataError(f"{meta}: line {first}: header is {_not_utf8(bad[1][0], 'in it')}")
                header = values
                continue
            where = f"{meta}:{first}"
            if bad is not None:
                column = header[bad[0]] if bad[0] < len(header) else f"#{bad[0] + 1}"
                yield first, BadExample(BAD_METADATA, where, _not_utf8(bad[1][0], f"in column {column!r}"))
                continue
            if reader.line_num > first and any(_ROW_LIKE.search(v) for v in values if "\n" in v):
                detail = (
                    f"a quoted field runs over lines {first}-{reader.line_num} and holds what look like "
                    "more rows: an unclosed quote?"
                )
                yield first, BadExample(BAD_METADATA, where, detail)
                continue
            yield first, {h: values[i] if i < len(values) else None for i, h in enumerate(header)}
    except csv.Error as exc:
        hint = (
            "a quote opened in this row is never closed"
            if "end of data" in str(exc)
            else "look for an unclosed or stray quote"
        )
        raise DataError(
            f"{meta}: line {start}: malformed CSV in the row starting here ({exc}); {hint}"
        ) from None


def _imagefolder_records(cfg: DataConfig) -> Iterator[Record]:
    root = Path(cfg.path)
    if not root.is_dir():
        raise DataError(
            f"data.path {cfg.path}: not a directory (source imagefolder needs a dir with metadata.jsonl)"
        )
    meta = _metadata_file(root, cfg.split)
    seen: dict[str, int] = {}
    first = True
    for lineno, row in _metadata_rows(meta):
        if isinstance(row, BadExample):
            yield Record(id=f"line-{lineno}", location=row.location, problem=row)
            continue
        if first and cfg.caption_column not in row:
            raise _missing_column(f"{meta} (first row)", cfg.caption_column, "caption_column", row)
        first = False
        name = row.get("file_name")
        if not isinstance(name, str) or not name:
            problem = BadExample(BAD_METADATA, f"{meta}:{lineno}", "row has no 'file_name' string")
            yield Record(id=f"line-{lineno}", location=problem.location, problem=problem)
            continue
        n = seen.get(name, 0)
        seen[name] = n + 1
        yield Record(
            id=name if n == 0 else f"{name}#{n}",
            location=f"{meta}:{lineno} ({name})",
            caption=row.get(cfg.caption_column, _MISSING),
            images=(name,),
            base=meta.parent,
        )


# ---------------------------------------------------------------- parquet / pickapic


def _stream_parquet(f: Path, columns: list[str], batch_size: int = 256) -> Iterator[dict]:
    """Rows of the wanted columns, a small batch at a time, through Arrow's dataset scanner.

    ``datasets``' own parquet streaming (5.2) held memory proportional to the
    file (550 MB of Arrow buffers for a 600 MB file, measured); a fragment scan
    with pre-buffering off stays flat (~50 MB) and is several times faster.
    """
    import pyarrow.dataset as pds
    import pyarrow.fs as pfs

    fmt = pds.ParquetFileFormat(
        default_fragment_scan_options=pds.ParquetFragmentScanOptions(pre_buffer=False)
    )
    fragment = fmt.make_fragment(str(f.resolve()), filesystem=pfs.LocalFileSystem())
    wanted = list(dict.fromkeys(columns))

    def rows() -> Iterator[dict]:
        for batch in fragment.to_batches(
            batch_size=batch_size, columns=wanted, batch_readahead=0, fragment_readahead=0
        ):
            yield from batch.to_pylist()

    return _guarded(rows(), str(f))


def _parquet_columns(f: Path) -> list[str]:
    import pyarrow.parquet as pq

    try:
        return list(pq.read_schema(f).names)
    except Exception as exc:  # noqa: BLE001 - arrow raises several types for non-parquet files
        raise DataError(f"{f}: not a readable parquet file ({str(exc).splitlines()[0]})") from None


def _file_ids(files: list[Path]) -> dict[Path, str]:
    if len(files) == 1:
        return {files[0]: files[0].name}
    root = Path(os.path.commonpath([str(f.resolve()) for f in files]))
    return {f: f.resolve().relative_to(root).as_posix() for f in files}


def _parquet_records(cfg: DataConfig) -> Iterator[Record]:
    files = parquet_files(cfg.path)
    names = _file_ids(files)
    for f in files:
        cols = _parquet_columns(f)
        for col, field in ((cfg.image_column, "image_column"), (cfg.caption_column, "caption_column")):
            if col not in cols:
                raise _missing_column(str(f), col, field, cols)
    for f in files:
        for i, row in enumerate(_stream_parquet(f, [cfg.caption_column, cfg.image_column])):
            yield Record(
                id=f"{names[f]}:{i}",
                location=f"{f} row {i}",
                caption=row.get(cfg.caption_column),
                images=(row.get(cfg.image_column),),
                base=f.parent,
            )


def pickapic_winner(label_0: Any, label_1: Any, location: str) -> int | None:
    """Index (0 or 1) of the preferred image, or None for a tie; BadExample for invalid labels."""
    try:
        l0, l1 = float(label_0), float(label_1)
    except (TypeError, ValueError):
        raise BadExample(BAD_LABEL, location, f"labels ({label_0!r}, {label_1!r}) are not numbers") from None
    if l0 not in (0.0, 0.5, 1.0) or l1 not in (0.0, 0.5, 1.0):
        raise BadExample(BAD_LABEL, location, f"labels ({l0:g}, {l1:g}) must each be 0, 0.5 or 1")
    if l0 + l1 != 1.0:
        raise BadExample(BAD_LABEL, location, f"labels ({l0:g}, {l1:g}) must sum to 1")
    if l0 == 0.5:
        return None
    return 0 if l0 == 1.0 else 1


def _pickapic_records(cfg: DataConfig, pairs: bool) -> Iterator[Record]:
    files = parquet_files(cfg.path)
    names = _file_ids(files)
    needed = [cfg.caption_column, *PICKAPIC_IMAGES, *PICKAPIC_LABELS]
    for f in files:
        cols = _parquet_columns(f)
        for col in needed:
            if col not in cols:
                field = "caption_column" if col == cfg.caption_column else "source pickapic"
                raise _missing_column(str(f), col, field, cols)
    for f in files:
        for i, row in enumerate(_stream_parquet(f, needed)):
            rec = Record(id=f"{names[f]}:{i}", location=f"{f} row {i}", base=f.parent)
            try:
                win = pickapic_winner(row.get("label_0"), row.get("label_1"), rec.location)
            except BadExample as bad:
                rec.problem = bad
                yield rec
                continue
            if win is None:
                rec.tie = True
                yield rec
                continue
            rec.caption = row.get(cfg.caption_column)
            winner, loser = row.get(PICKAPIC_IMAGES[win]), row.get(PICKAPIC_IMAGES[1 - win])
            rec.images = (winner, loser) if pairs else (winner,)
            yield rec


# ---------------------------------------------------------------- Hugging Face datasets


def _check_columns(where: str, available: Iterable[str], cfg: DataConfig) -> None:
    available = list(available)
    for col, field in ((cfg.image_column, "image_column"), (cfg.caption_column, "caption_column")):
        if col not in available:
            raise _missing_column(where, col, field, available)


def _hf_disk_records(cfg: DataConfig) -> Iterator[Record]:
    import datasets

    p = Path(cfg.path)
    if not p.is_dir():
        raise DataError(f"data.path {cfg.path}: not a directory saved with datasets' save_to_disk")
    try:
        ds = datasets.load_from_disk(str(p))
    except Exception as exc:  # noqa: BLE001 - datasets raises FileNotFoundError/ValueError/...
        raise DataError(
            f"data.path {cfg.path}: not a dataset saved with save_to_disk ({str(exc).splitlines()[0]})"
        ) from None
    where = str(p)
    if isinstance(ds, datasets.DatasetDict):
        if cfg.split not in ds:
            raise DataError(
                f"data.path {cfg.path}: no split '{cfg.split}' (data.split); available: {', '.join(ds)}"
            )
        ds, where = ds[cfg.split], f"{p} ({cfg.split})"
    _check_columns(where, ds.column_names, cfg)
    ds = _decode_off(ds.select_columns([cfg.caption_column, cfg.image_column]), [cfg.image_column])
    for i, row in enumerate(_guarded(ds, where)):
        yield Record(
            id=f"{cfg.split}:{i}",
            location=f"{where} row {i}",
            caption=row.get(cfg.caption_column),
            images=(row.get(cfg.image_column),),
            base=p,
        )


_FILE_BUILDERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv", ".arrow": "arrow"}


def _hf_records(cfg: DataConfig) -> Iterator[Record]:
    import datasets

    p = Path(cfg.path)
    if not p.exists():
        raise DataError(
            f"data.path {cfg.path}: not found (source hf loads local paths only, never from the Hub)"
        )
    try:
        if p.is_file():
            builder = _FILE_BUILDERS.get(p.suffix.lower())
            if builder is None:
                raise DataError(f"data.path {cfg.path}: unsupported file type '{p.suffix}' for source hf")
            ds = datasets.load_dataset(
                builder, data_files={cfg.split: str(p)}, split=cfg.split, streaming=True
            )
        else:
            ds = datasets.load_dataset(str(p), split=cfg.split, streaming=True)
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - unknown split, no data files, bad layout...
        raise DataError(
            f"data.path {cfg.path}: datasets cannot load it ({str(exc).splitlines()[0]})"
        ) from None
    where = f"{p} ({cfg.split})"
    features = getattr(ds, "features", None)
    if features is not None:
        _check_columns(where, features.keys(), cfg)
    ds = _decode_off(ds, [cfg.image_column])
    base = p if p.is_dir() else p.parent
    for i, row in enumerate(_guarded(ds, where)):
        if i == 0 and features is None:
            _check_columns(where, row.keys(), cfg)
        yield Record(
            id=f"{cfg.split}:{i}",
            location=f"{where} row {i}",
            caption=row.get(cfg.caption_column),
            images=(row.get(cfg.image_column),),
            base=base,
        )


# ---------------------------------------------------------------- public API


def iter_records(cfg: DataConfig, pairs: bool = False) -> Iterator[Record]:
    """Undecoded rows of the source in a fixed order; fatal problems (missing column...) raise DataError."""
    if pairs and cfg.source != "pickapic":
        raise ConfigError(f"data.source {cfg.source}: preference pairs (DPO) need source 'pickapic'")
    if cfg.source == "imagefolder":
        return _imagefolder_records(cfg)
    if cfg.source == "parquet":
        return _parquet_records(cfg)
    if cfg.source == "pickapic":
        return _pickapic_records(cfg, pairs)
    if cfg.source == "hf_disk":
        return _hf_disk_records(cfg)
    return _hf_records(cfg)


def clean_caption(value: Any, location: str, column: str) -> str:
    """Caption as a stripped string (first non-empty entry of a list); BadExample if absent or blank."""
    if value is _MISSING or value is None:
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
