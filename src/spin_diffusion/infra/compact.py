"""Per-example strings (ids, captions) and an id index in flat arrays.

A Python list of a million short strings costs ~100 bytes per entry in object
headers and pointers, a dict of them twice that: at Pick-a-Pic scale that is
most of the memory the data path holds. Here each string costs its UTF-8
bytes plus an 8-byte offset, and the id index 16 bytes per id, so memory stays
flat as the data grows (see ``benchmarks/bench_scale.py``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import overload

import numpy as np


class CompactStrings(Sequence[str]):
    """An immutable sequence of strings stored as one UTF-8 buffer plus offsets."""

    def __init__(self, strings: Iterable[str] = ()) -> None:
        encoded = [s.encode("utf-8") for s in strings]
        self._offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(b) for b in encoded], out=self._offsets[1:])
        self._buffer = b"".join(encoded)

    @classmethod
    def concat(cls, parts: Iterable[Sequence[str]]) -> CompactStrings:
        """Build from several sequences (e.g. one per shard) without one big list of all strings."""
        builder = CompactStringsBuilder()
        for part in parts:
            builder.extend(part)
        return builder.build()

    def __len__(self) -> int:
        return len(self._offsets) - 1

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> list[str]: ...

    def __getitem__(self, index: int | slice) -> str | list[str]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"index {index} out of range for {n} strings")
        start, end = int(self._offsets[index]), int(self._offsets[index + 1])
        return self._buffer[start:end].decode("utf-8")

    def __iter__(self) -> Iterator[str]:
        for i in range(len(self)):
            yield self[i]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, CompactStrings):
            return self._buffer == other._buffer and np.array_equal(self._offsets, other._offsets)
        if isinstance(other, Sequence) and not isinstance(other, str):
            return len(other) == len(self) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    def __repr__(self) -> str:
        return f"CompactStrings({len(self)} strings, {len(self._buffer)} bytes)"

    @property
    def nbytes(self) -> int:
        return len(self._buffer) + self._offsets.nbytes


class StringIndex:
    """Position of each string of a :class:`CompactStrings` by value: sorted hashes, no dict.

    ``hash()`` of a str is only stable within a process, which is all an
    in-memory index needs; equal hashes of different strings are resolved by
    comparing the strings themselves.
    """

    def __init__(self, strings: CompactStrings) -> None:
        self._strings = strings
        hashes = np.fromiter((hash(s) for s in strings), dtype=np.int64, count=len(strings))
        self._order = np.argsort(hashes, kind="stable")
        self._sorted = hashes[self._order]

    def __len__(self) -> int:
        return len(self._strings)

    @property
    def nbytes(self) -> int:
        return self._order.nbytes + self._sorted.nbytes

    def find(self, value: str) -> int | None:
        """The first position holding ``value``, or None."""
        h = np.int64(hash(value))
        k = int(np.searchsorted(self._sorted, h, side="left"))
        while k < len(self._sorted) and self._sorted[k] == h:
            pos = int(self._order[k])
            if self._strings[pos] == value:
                return pos
            k += 1
        return None

    def distinct(self) -> int:
        """How many different strings there are (duplicates share a value)."""
        n = len(self._sorted)
        if n < 2:
            return n
        same = self._sorted[1:] == self._sorted[:-1]
        if not same.any():
            return n
        count = n - int(same.sum())  # distinct hashes; equal hashes may still be different strings
        for h in np.unique(self._sorted[1:][same]):
            lo, hi = (
                np.searchsorted(self._sorted, h, side="left"),
                np.searchsorted(self._sorted, h, side="right"),
            )
            count += len({self._strings[int(p)] for p in self._order[lo:hi]}) - 1
        return count


class CompactStringsBuilder:
    """Collects strings part by part (each part's list can be dropped as soon as it is added)."""

    def __init__(self) -> None:
        self._blobs: list[bytes] = []
        self._lengths: list[np.ndarray] = []

    def extend(self, strings: Sequence[str]) -> None:
        encoded = [s.encode("utf-8") for s in strings]
        self._blobs.append(b"".join(encoded))
        self._lengths.append(np.fromiter((len(b) for b in encoded), dtype=np.int64, count=len(encoded)))

    def build(self) -> CompactStrings:
        out = CompactStrings()
        sizes = np.concatenate(self._lengths) if self._lengths else np.zeros(0, dtype=np.int64)
        out._offsets = np.zeros(len(sizes) + 1, dtype=np.int64)
        np.cumsum(sizes, out=out._offsets[1:])
        out._buffer = b"".join(self._blobs)
        self._blobs, self._lengths = [], []
        return out
