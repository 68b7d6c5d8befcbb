"""Flat string storage and the hash index that replace per-example lists and dicts."""

from __future__ import annotations

import pytest

from spin_diffusion.infra.compact import CompactStrings, StringIndex


def test_strings_round_trip_unicode_empty_and_slices() -> None:
    items = ["a red circle", "", "café ☕", "ex-0001", "a red circle"]
    s = CompactStrings.concat([items[:2], [], items[2:]])
    assert len(s) == 5 and list(s) == items
    assert s[2] == "café ☕" and s[-1] == "a red circle" and s[1] == ""
    assert s[1:4] == items[1:4] and s[::2] == items[::2]
    assert s == items and s == CompactStrings(items) and s != items[:-1]
    assert s.nbytes == sum(len(x.encode()) for x in items) + 8 * 6
    with pytest.raises(IndexError, match="index 5 out of range for 5 strings"):
        s[5]


def test_index_finds_first_position_and_counts_distinct() -> None:
    ids = CompactStrings([f"ex-{i}" for i in range(1000)] + ["ex-7"])
    index = StringIndex(ids)
    assert index.find("ex-0") == 0 and index.find("ex-999") == 999
    assert index.find("ex-7") == 7  # the first of the duplicates
    assert index.find("ex-1000") is None
    assert index.distinct() == 1000


def test_index_resolves_equal_hashes_by_comparing_strings(monkeypatch: pytest.MonkeyPatch) -> None:
    import spin_diffusion.infra.compact as compact

    monkeypatch.setattr(compact, "hash", lambda value: len(value), raising=False)  # many collisions
    ids = CompactStrings(["ab", "cd", "ef", "abc", "cd"])
    index = StringIndex(ids)
    assert [index.find(x) for x in ("ab", "cd", "ef", "abc")] == [0, 1, 2, 3]
    assert index.find("zz") is None and index.find("zzzz") is None
    assert index.distinct() == 4
