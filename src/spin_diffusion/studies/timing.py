"""Where a study's wall time goes: opponent sampling, reference errors, training, evaluation.

Training stages come from each run's own records (``iter-k/iteration.json: seconds``, written
when the iteration ran, so a resumed or re-rendered study still reports them). Evaluation time
is measured around each evaluation call and ``seed-S/timing.json`` keeps the longest one: the
call that generated the images, not a re-render's few seconds of cached scoring (so a re-rendered
report is unchanged). Nothing here changes a result.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from spin_diffusion.infra.atomic import write_json_atomic
from spin_diffusion.infra.run_layout import RunLayout

#: Report rows: a phase and the iteration-record laps it sums (evaluation is measured by the study).
PHASES: dict[str, tuple[str, ...]] = {
    "opponent sampling": ("sample",),
    "reference errors": ("reference",),
    "training": ("train",),
    "set-up, validation images, saving": ("setup", "validation", "save"),
}
TIMING = "timing.json"


def run_seconds(run_dir: Path) -> dict[str, float]:
    """One run's seconds per phase, summed over its finished iterations (empty if none finished)."""
    out = dict.fromkeys(PHASES, 0.0)
    for iteration in RunLayout(Path(run_dir)).iterations():
        if not iteration.done.is_file():
            continue
        laps = json.loads(iteration.done.read_text()).get("seconds", {})
        for phase, keys in PHASES.items():
            out[phase] += sum(float(laps.get(k, 0.0)) for k in keys)
    return out


@contextmanager
def timed(seed_dir: Path, stage: str) -> Iterator[None]:
    """Record the block's wall seconds as ``stage`` in ``seed_dir/timing.json`` if longer than before."""
    start = time.time()
    yield
    path = Path(seed_dir) / TIMING
    saved = json.loads(path.read_text()) if path.is_file() else {}
    took = round(time.time() - start, 1)
    if took > saved.get(stage, 0.0):
        saved[stage] = took
        write_json_atomic(path, saved)


def seed_seconds(seed_dir: Path, runs: list[str]) -> dict[str, dict[str, float]]:
    """Per run its phases, plus ``evaluation`` from ``timing.json``: what one seed of the study took."""
    out = {name: run_seconds(Path(seed_dir) / name) for name in runs}
    path = Path(seed_dir) / TIMING
    saved = json.loads(path.read_text()) if path.is_file() else {}
    out["evaluation"] = {"evaluation": float(saved.get("evaluation", 0.0))}
    return out


def time_split_lines(per_seed: dict[int, dict[str, dict[str, float]]]) -> list[str]:
    """The study's wall time by phase and by run, summed over seeds, with shares."""
    phases: dict[str, float] = {}
    runs: dict[str, float] = {}
    for seconds in per_seed.values():
        for run, split in seconds.items():
            for phase, s in split.items():
                phases[phase] = phases.get(phase, 0.0) + s
                runs[run] = runs.get(run, 0.0) + s
    total = sum(phases.values()) or 1.0

    def rows(values: dict[str, float]) -> list[str]:
        return [f"| {k} | {v:.0f} | {100 * v / total:.0f}% |" for k, v in values.items() if v > 0]

    return [
        "| phase | seconds | share |",
        "|---|---:|---:|",
        *rows(phases),
        f"| total | {total:.0f} | 100% |",
        "",
        "| run | seconds | share |",
        "|---|---:|---:|",
        *rows(runs),
    ]
