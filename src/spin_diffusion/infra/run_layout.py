"""Where everything lives in a run directory: one object owns every ``iter-k`` path.

Pure path arithmetic, no I/O policy: the guards (lock, resume checks) are in
``selfplay.rundir``. It sits in ``infra`` rather than ``selfplay`` because the
layers below the driver need the same names: the trainer writes checkpoints,
snapshots and its log into an iteration directory, evaluation recognises
``RUN/iter-k/model`` in a user's config, and export and the studies read
finished iterations. ``selfplay`` is above ``evaluation`` and ``training``, so a
layout kept there could not be imported by them.

    runs/NAME/
      config.yaml  data.json  .lock  real_latents/  logs/  eval/  results.json  results.md
      iter-k/
        samples/  checkpoints/step-N/  snapshots/step-N/  model/
        iteration.json  train_log.jsonl  train_summary.json
        reference_errors.safetensors  reference_errors/
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ITERATION_DONE = "iteration.json"
CHECKPOINTS = "checkpoints"
SNAPSHOTS = "snapshots"
MODEL = "model"
SAMPLES = "samples"
TRAIN_LOG = "train_log.jsonl"
REFERENCE_TABLE = "reference_errors.safetensors"
REFERENCE_CHUNKS = "reference_errors"

_ITERATION_NAME = re.compile(r"^iter-(\d+)$")


def iteration_name(k: int) -> str:
    """The directory name of iteration ``k`` (``iter-k``), also the model's name in a run's evaluation."""
    return f"iter-{k}"


def parse_iteration_name(name: str) -> int | None:
    """``k`` of a directory named ``iter-k``; None for any other name."""
    match = _ITERATION_NAME.match(name)
    return int(match.group(1)) if match else None


@dataclass(frozen=True)
class IterationLayout:
    """The paths of one iteration ``k`` of a run."""

    root: Path
    k: int

    @property
    def samples(self) -> Path:
        return self.root / SAMPLES

    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINTS

    @property
    def snapshots(self) -> Path:
        return self.root / SNAPSHOTS

    def snapshot(self, step: int) -> Path:
        """The diffusers-format model saved at ``step`` (``training.save_model_every``)."""
        return self.snapshots / f"step-{step}"

    @property
    def model(self) -> Path:
        return self.root / MODEL

    @property
    def done(self) -> Path:
        """``iteration.json``: written last, so its presence means the iteration finished."""
        return self.root / ITERATION_DONE

    @property
    def train_log(self) -> Path:
        return self.root / TRAIN_LOG

    @property
    def reference_table(self) -> Path:
        return self.root / REFERENCE_TABLE

    @property
    def reference_chunks(self) -> Path:
        return self.root / REFERENCE_CHUNKS


@dataclass(frozen=True)
class RunLayout:
    """The paths of a run directory ``runs/NAME``."""

    root: Path

    def iteration(self, k: int) -> IterationLayout:
        return IterationLayout(self.root / iteration_name(k), k)

    def iterations(self) -> list[IterationLayout]:
        """Every ``iter-k`` directory present, in order of k (whether finished or not)."""
        found = [(parse_iteration_name(p.name), p) for p in self.root.glob("iter-*") if p.is_dir()]
        return [IterationLayout(p, k) for k, p in sorted((k, p) for k, p in found if k is not None)]

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def data_record(self) -> Path:
        return self.root / "data.json"

    @property
    def lock(self) -> Path:
        return self.root / ".lock"

    @property
    def real_latents(self) -> Path:
        return self.root / "real_latents"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def eval(self) -> Path:
        return self.root / "eval"

    @property
    def results_json(self) -> Path:
        return self.root / "results.json"

    @property
    def results_md(self) -> Path:
        return self.root / "results.md"
