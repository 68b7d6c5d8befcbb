"""The imagefolder source: images beside a metadata.jsonl (or metadata.csv), read line by line."""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from spin_diffusion.config.data import DataConfig
from spin_diffusion.data.problems import (
    BAD_METADATA,
    BadExample,
)
from spin_diffusion.data.readers import missing_column
from spin_diffusion.data.records import MISSING, Record
from spin_diffusion.errors import DataError

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


def imagefolder_records(cfg: DataConfig) -> Iterator[Record]:
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
            raise missing_column(f"{meta} (first row)", cfg.caption_column, "caption_column", row)
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
            caption=row.get(cfg.caption_column, MISSING),
            images=(name,),
            base=meta.parent,
            label=row.get(cfg.label_column, MISSING) if cfg.label_column else MISSING,
        )
