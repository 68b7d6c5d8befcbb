"""One shard store: safetensors files written atomically, read memory-mapped, looked up by row.

Real latents (``real_latents/shard-*.safetensors``), opponent samples
(``iter-k/samples/shard-*.safetensors``) and precomputed reference errors
(``iter-k/reference_errors/chunk-*.safetensors``) all use it. A shard is the
unit of resume: it is written under a temporary name, its header is read
back, and only then is it renamed into place, so a file that exists is a
complete shard. Each user keeps its own manifest; :func:`identity_changes`
is the one check that a stored identity matches the current one.
"""

from __future__ import annotations

import json
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spin_diffusion.infra.atomic import atomic_file

if TYPE_CHECKING:
    import torch

SHARD_SUFFIX = ".safetensors"


def shard_name(index: int, prefix: str = "shard") -> str:
    """The file name of shard ``index``: ``shard-00003.safetensors`` (``chunk-...`` for reference errors)."""
    return f"{prefix}-{index:05d}{SHARD_SUFFIX}"


def open_shard(path: Path) -> Any:
    """A memory-mapped view of one shard (nothing is read until a slice is asked for)."""
    from safetensors import safe_open

    return safe_open(str(path), framework="pt")


def shard_metadata(path: Path) -> dict[str, str]:
    """The shard's header metadata; raises if the file is missing or torn."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def shard_metadata_or_none(path: Path) -> dict[str, str] | None:
    """The header metadata, or None for a missing or damaged shard (which resume then writes again)."""
    try:
        return shard_metadata(path)
    except Exception:  # noqa: BLE001 - safetensors reports a torn file as a header error
        return None


def read_shard(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of one shard, loaded into memory."""
    from safetensors.torch import load_file

    return load_file(str(path))


def write_shard(path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> None:
    """Write one shard atomically, verified: its header is read back before it is renamed into place."""
    from safetensors.torch import save_file

    with atomic_file(Path(path)) as tmp:
        save_file(dict(tensors), str(tmp), metadata=dict(metadata))
        with open_shard(tmp) as f:
            stored = f.metadata() or {}
            if set(f.keys()) != set(tensors) or any(stored.get(k) != v for k, v in metadata.items()):
                raise OSError(f"{path}: the shard read back differs from what was written")


def identity_changes(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """The keys whose values differ between a stored identity and the current one (sorted)."""
    return sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))


def read_manifest(path: Path) -> dict | None:
    """A manifest's JSON object, or None when it is missing, unreadable or not an object."""
    if not Path(path).is_file():
        return None
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class ShardReader:
    """Rows across a list of shards: ``row(i, name)`` finds shard and offset, opening it on first use.

    At most ``max_open`` shards stay memory-mapped (least recently used closes
    first), so memory does not grow with the number of shards. Picklable for
    DataLoader workers: handles do not cross process boundaries, each worker
    reopens what it reads.
    """

    def __init__(self, files: Sequence[Path], counts: Sequence[int], max_open: int = 64) -> None:
        if len(files) != len(counts):
            raise ValueError("one row count per shard file")
        self.files = [Path(f) for f in files]
        self.starts = [0]
        for n in counts:
            self.starts.append(self.starts[-1] + int(n))
        self.max_open = max_open
        self._handles: OrderedDict[int, Any] = OrderedDict()

    def __len__(self) -> int:
        return self.starts[-1]

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handles"] = OrderedDict()
        return state

    def locate(self, i: int) -> tuple[int, int]:
        """(shard number, row in that shard) of global row ``i``."""
        if not 0 <= i < len(self):
            raise IndexError(f"row {i} out of range (size {len(self)})")
        s = bisect_right(self.starts, i) - 1
        return s, i - self.starts[s]

    def is_open(self, s: int) -> bool:
        return s in self._handles

    def handle(self, s: int) -> Any:
        """The memory-mapped shard ``s`` (opened now if needed; the least recently used may close)."""
        if s in self._handles:
            self._handles.move_to_end(s)
            return self._handles[s]
        self._handles[s] = open_shard(self.files[s])
        if len(self._handles) > self.max_open:
            self._handles.popitem(last=False)
        return self._handles[s]

    def row(self, i: int, name: str) -> torch.Tensor:
        """Tensor ``name`` at global row ``i``, as stored."""
        s, j = self.locate(i)
        return self.handle(s).get_slice(name)[j : j + 1][0]
