"""imagefolder metadata files: byte-order marks, non-UTF-8 captions and broken CSV quoting are
reported on the right line instead of breaking row 1, stopping at the wrong line, or passing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from spin_diffusion.config.data import DataConfig
from spin_diffusion.data.problems import BAD_METADATA
from spin_diffusion.data.sources import open_source, scan_source
from spin_diffusion.data.testing import make_image
from spin_diffusion.errors import DataError

BOM = b"\xef\xbb\xbf"


def _cfg(root: Path, **kw) -> DataConfig:
    return DataConfig(source="imagefolder", path=str(root), resolution=32, **kw)


def _folder(tmp_path: Path, n: int) -> Path:
    root = tmp_path / "ds"
    root.mkdir()
    for i in range(n):
        make_image(i, (32, 32)).save(root / f"{i}.png")
    return root


def _jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


# ------------------------------------------------------------------ metadata.jsonl


def test_jsonl_with_a_byte_order_mark_reads_row_one(tmp_path: Path) -> None:
    root = _folder(tmp_path, 3)
    rows = [{"file_name": f"{i}.png", "text": f"caption {i}"} for i in range(3)]
    (root / "metadata.jsonl").write_bytes(BOM + _jsonl(rows))
    stats = scan_source(_cfg(root))
    assert (stats.usable, stats.bad) == (3, 0), stats.shown
    assert [e.caption for e in open_source(_cfg(root))] == ["caption 0", "caption 1", "caption 2"]


def test_non_utf8_caption_in_jsonl_is_reported_on_its_own_line(tmp_path: Path) -> None:
    # Long captions so the bad byte sits several read buffers (8 KiB) past the last good line read.
    n, bad_line = 60, 41
    root = _folder(tmp_path, n)
    lines = [
        json.dumps({"file_name": f"{i}.png", "text": f"caption {i} " + "x" * 500}).encode() + b"\n"
        for i in range(n)
    ]
    lines[bad_line - 1] = b'{"file_name": "40.png", "text": "caf\xe9 au lait"}\n'  # latin-1 byte
    (root / "metadata.jsonl").write_bytes(b"".join(lines))
    stats = scan_source(_cfg(root))
    assert (stats.usable, stats.bad) == (n - 1, 1)
    shown = stats.shown[BAD_METADATA][0]
    assert f"metadata.jsonl:{bad_line}: not UTF-8 text (byte 0xe9" in shown, shown
    with pytest.raises(DataError, match=rf"metadata\.jsonl:{bad_line}: not UTF-8 text"):
        list(open_source(_cfg(root)))


# ------------------------------------------------------------------ metadata.csv


def _csv(root: Path, text: bytes | str) -> None:
    (root / "metadata.csv").write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))


def test_csv_with_a_byte_order_mark_finds_file_name(tmp_path: Path) -> None:
    root = _folder(tmp_path, 2)
    _csv(root, BOM + b"file_name,text\n0.png,a red cube\n1.png,a blue ball\n")
    stats = scan_source(_cfg(root))
    assert (stats.usable, stats.bad) == (2, 0), stats.shown


def test_csv_unclosed_quote_to_the_end_of_the_file_is_an_error_naming_the_line(tmp_path: Path) -> None:
    root = _folder(tmp_path, 4)
    _csv(root, 'file_name,text\n0.png,fine\n1.png,"never closed\n2.png,swallowed\n3.png,swallowed too\n')
    with pytest.raises(DataError) as info:
        scan_source(_cfg(root))
    message = str(info.value)
    assert f"{root / 'metadata.csv'}: line 3: malformed CSV" in message and "quote" in message
    assert "\n" not in message


def test_csv_quote_closed_rows_later_is_reported_as_swallowed_rows(tmp_path: Path) -> None:
    root = _folder(tmp_path, 4)
    _csv(root, 'file_name,text\n0.png,fine\n1.png,"opened here\n2.png,swallowed"\n3.png,fine too\n')
    stats = scan_source(_cfg(root))
    assert (stats.usable, stats.bad) == (2, 1), stats.shown
    shown = stats.shown[BAD_METADATA][0]
    assert "metadata.csv:3" in shown and "lines 3-4" in shown and "unclosed quote" in shown


def test_csv_stray_quote_is_an_error_naming_the_row(tmp_path: Path) -> None:
    root = _folder(tmp_path, 3)
    _csv(root, 'file_name,text\n0.png,fine\n1.png,"half"quoted\n2.png,fine\n')
    with pytest.raises(DataError, match=r"metadata\.csv: line 3: malformed CSV"):
        scan_source(_cfg(root))


def test_csv_multi_line_caption_is_fine_and_numbered_by_its_first_line(tmp_path: Path) -> None:
    root = _folder(tmp_path, 3)
    _csv(root, 'file_name,text\n0.png,"two\nlines"\n1.png,one line\n2.png,\n')
    stats = scan_source(_cfg(root))
    assert (stats.usable, stats.bad) == (2, 1)
    assert [e.caption for e in open_source(_cfg(root, skip_bad_examples=True))] == ["two\nlines", "one line"]
    assert "metadata.csv:5" in next(iter(stats.shown.values()))[0]  # the empty caption's line


def test_non_utf8_caption_in_csv_is_reported_on_its_own_line(tmp_path: Path) -> None:
    n, bad_line = 40, 31
    root = _folder(tmp_path, n)
    rows = [f"{i}.png,caption {i} {'y' * 500}\n".encode() for i in range(n)]
    rows[bad_line - 2] = b"29.png,na\xefve\n"
    _csv(root, b"file_name,text\n" + b"".join(rows))
    stats = scan_source(_cfg(root))
    assert (stats.usable, stats.bad) == (n - 1, 1)
    assert f"metadata.csv:{bad_line}: not UTF-8 text (byte 0xef" in stats.shown[BAD_METADATA][0]
