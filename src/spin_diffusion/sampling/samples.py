"""Reading the opponent's stored samples: an index from prompt id to shard row, shards checked on first use."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from spin_diffusion.errors import CheckpointError
from spin_diffusion.infra.compact import CompactStrings, StringIndex
from spin_diffusion.infra.shards import ShardReader, open_shard

if TYPE_CHECKING:
    import torch

    from spin_diffusion.sampling.trajectories import SolverSchedule

MANIFEST = "manifest.json"


class OpponentSamples:
    """The opponent's latents for every prompt id, read lazily from a complete sample directory.

    Only the manifest is read up front (an index id -> (shard, row)); a shard is
    memory-mapped the first time one of its prompts is asked for (and checked
    against the manifest then), so memory does not grow with the number of samples.
    """

    max_open_shards = 64

    def __init__(self, out_dir: Path):
        self.dir = Path(out_dir)
        manifest_path = self.dir / MANIFEST
        if not manifest_path.is_file():
            raise CheckpointError(f"{self.dir} has no {MANIFEST}: sampling did not finish")
        manifest = json.loads(manifest_path.read_text())
        shards = manifest.pop("shards")  # the id lists are kept compactly below, not as JSON lists
        self.manifest = manifest
        self._ids = CompactStrings.concat(shard["ids"] for shard in shards)
        self._reader = ShardReader(
            [self.dir / shard["file"] for shard in shards],
            [len(shard["ids"]) for shard in shards],
            max_open=self.max_open_shards,
        )
        del shards
        self._index = StringIndex(self._ids)
        distinct = self._index.distinct()
        if distinct != manifest["num_prompts"]:
            raise CheckpointError(
                f"{self.dir}: manifest lists {manifest['num_prompts']} prompts, shards hold {distinct}"
            )

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def ids(self) -> CompactStrings:
        """The prompt ids, in shard order (the manifest's id lists are not kept)."""
        return self._ids

    def latents(self, prompt_id: str) -> torch.Tensor:
        """All samples for one prompt: ``[n, C, h, w]`` (fp16 as stored)."""
        return self._row(prompt_id, "latents")

    @property
    def schedule(self) -> SolverSchedule | None:
        """The solver schedule of the stored trajectories, or None when only final latents were kept."""
        from spin_diffusion.sampling.trajectories import SolverSchedule

        stored = self.manifest.get("trajectory")
        return None if stored is None else SolverSchedule.from_json(stored)

    def trajectory(self, prompt_id: str) -> torch.Tensor:
        """Every solver point of all samples for one prompt: ``[n, K+1, C, h, w]`` fp32, noise first."""
        if self.schedule is None:
            raise CheckpointError(f"{self.dir} holds no trajectories (sampled for a method that needs none)")
        return self._row(prompt_id, "trajectory")

    def _row(self, prompt_id: str, name: str) -> torch.Tensor:
        pos = self._index.find(prompt_id)
        if pos is None:
            raise CheckpointError(f"{self.dir} has no samples for prompt id {prompt_id!r}")
        s, row = self._reader.locate(pos)
        if not self._reader.is_open(s):
            self._check_shard(s)
        return self._reader.handle(s).get_slice(name)[row : row + 1][0]

    def _check_shard(self, s: int) -> None:
        """Refuse a shard that no longer matches the manifest (missing, truncated, other prompts)."""
        path = self._reader.files[s]
        ids = self._ids[self._reader.starts[s] : self._reader.starts[s + 1]]
        schedule = self.schedule
        points = None if schedule is None else schedule.num_steps + 1
        problem = shard_problem(path, ids, self.manifest.get("samples_per_prompt"), points)
        if problem is not None:
            raise CheckpointError(f"{path} {problem}; run the same command to sample it again")


def shard_problem(
    path: Path, ids: Sequence[str], samples_per_prompt: int | None, trajectory_points: int | None = None
) -> str | None:
    """Why a shard cannot be used (missing, truncated, other prompts or shape), or None.

    The reason reads after the file name: "shard-00003.safetensors is missing".
    With ``trajectory_points`` the shard must also hold trajectories of that many points.
    """
    if not path.is_file():
        return "is missing"
    try:
        handle = open_shard(path)
        stored = json.loads((handle.metadata() or {}).get("ids", "null"))
        shape = handle.get_slice("latents").get_shape()
        traj_shape = handle.get_slice("trajectory").get_shape() if trajectory_points is not None else None
    except Exception as exc:  # noqa: BLE001 - safetensors reports a torn file as a header error
        return f"is unreadable ({exc})"
    if stored != list(ids):
        return "holds other prompts than the manifest lists"
    if shape[0] != len(ids) or (samples_per_prompt is not None and shape[1] != samples_per_prompt):
        return f"has latents of shape {list(shape)} for {len(ids)} prompts"
    if traj_shape is not None and (traj_shape[:2] != shape[:2] or traj_shape[2] != trajectory_points):
        return f"has trajectories of shape {list(traj_shape)}, not {trajectory_points} points per sample"
    return None
