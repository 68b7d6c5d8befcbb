"""The shard store that real latents, opponent samples and reference-error chunks share."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from spin_diffusion.infra import shards
from spin_diffusion.infra.shards import (
    ShardReader,
    identity_changes,
    read_manifest,
    shard_metadata,
    shard_metadata_or_none,
    shard_name,
    write_shard,
)


def _store(root: Path, counts: list[int]) -> ShardReader:
    """Shards whose row i holds the value i, so every lookup can be checked against its index."""
    files, start = [], 0
    for k, n in enumerate(counts):
        path = root / shard_name(k)
        write_shard(path, {"x": torch.arange(start, start + n).float().unsqueeze(1)}, {"first": str(start)})
        files.append(path)
        start += n
    return ShardReader(files, counts, max_open=2)


def test_names_follow_one_rule_with_a_prefix() -> None:
    assert shard_name(3) == "shard-00003.safetensors"
    assert shard_name(0, "chunk") == "chunk-00000.safetensors"


def test_rows_are_found_across_shards_and_open_handles_stay_bounded(tmp_path: Path) -> None:
    reader = _store(tmp_path, [3, 1, 4, 2])
    assert len(reader) == 10
    assert [reader.locate(i) for i in (0, 2, 3, 4, 9)] == [(0, 0), (0, 2), (1, 0), (2, 0), (3, 1)]
    for i in [9, 0, 5, 3, 1, 8]:
        assert float(reader.row(i, "x")[0]) == i
        assert len(reader._handles) <= 2
    assert list(reader._handles) == [0, 3]  # the two most recently used: shard 3 (row 8), shard 0 (row 1)
    with pytest.raises(IndexError):
        reader.row(10, "x")


def test_a_reader_pickles_without_handles_and_still_reads(tmp_path: Path) -> None:
    reader = _store(tmp_path, [2, 2])
    reader.row(3, "x")
    clone = pickle.loads(pickle.dumps(reader))
    assert clone._handles == {} and float(clone.row(3, "x")[0]) == 3


def test_a_write_is_atomic_and_verified(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / shard_name(0)
    write_shard(path, {"x": torch.ones(2)}, {"ids": "[1, 2]"})
    assert shard_metadata(path) == {"ids": "[1, 2]"}

    import safetensors.torch

    real = safetensors.torch.save_file

    def torn(tensors, filename, metadata=None):  # a writer that loses the metadata
        real(tensors, filename)

    monkeypatch.setattr(safetensors.torch, "save_file", torn)
    with pytest.raises(OSError, match="differs from what was written"):
        write_shard(path, {"x": torch.zeros(2)}, {"ids": "[3]"})
    assert shard_metadata(path) == {"ids": "[1, 2]"}  # the old shard stands, nothing half-written
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_damaged_or_missing_shards_and_manifests_read_as_none(tmp_path: Path) -> None:
    (tmp_path / "torn.safetensors").write_bytes(b"\x10\x00\x00")
    assert shard_metadata_or_none(tmp_path / "torn.safetensors") is None
    assert shard_metadata_or_none(tmp_path / "missing.safetensors") is None
    (tmp_path / "m.json").write_text("{not json")
    assert read_manifest(tmp_path / "m.json") is None and read_manifest(tmp_path / "none.json") is None
    (tmp_path / "m.json").write_text('{"a": 1}')
    assert read_manifest(tmp_path / "m.json") == {"a": 1}


def test_identity_changes_name_every_differing_key() -> None:
    assert identity_changes({"a": 1, "b": 2}, {"a": 1, "b": 3, "c": 0}) == ["b", "c"]
    assert identity_changes({"a": 1}, {"a": 1}) == []
    assert shards.SHARD_SUFFIX == ".safetensors"
