"""What a run tells its trackers and its log: the flat config, run-wide step numbers, phase times, start-up.

One curve over the whole run needs run-wide step numbers (wandb drops steps
that go backwards), and every tracker's hparams accept only flat scalars.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from spin_diffusion.config.run import RunConfig
from spin_diffusion.errors import ConfigError
from spin_diffusion.infra.run_layout import RunLayout
from spin_diffusion.selfplay.rundir import iteration_done
from spin_diffusion.selfplay.trained_on import recorded_steps

log = logging.getLogger(__name__)


class PhaseClock:
    """Wall seconds of consecutive phases: ``lap(name)`` ends the phase that began at the previous lap."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(self.laps.get(name, 0.0) + now - self._last, 2)
        self._last = now


def global_step_offset(cfg: RunConfig, k: int) -> int:
    """Optimizer steps of iterations 1..k-1: iteration k's step n is run-wide step offset + n.

    A finished iteration counts the steps it ran (recorded in its iteration.json), which exceed
    its ``max_steps`` when that was lowered below a checkpoint it resumed.
    """
    return sum(recorded_steps(cfg.run_dir, j) or cfg.training_for(j).max_steps for j in range(1, k))


def tracker_config(cfg: RunConfig) -> dict[str, Any]:
    """The resolved config as flat ``section.key`` values, the only types every tracker's hparams accept."""
    out: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(f"{prefix}{key}.", value)
        elif isinstance(node, bool | int | float | str):
            out[prefix[:-1]] = node
        else:  # lists and null: their JSON text
            out[prefix[:-1]] = json.dumps(node)

    walk("", cfg.model_dump(mode="json"))
    return out


def log_startup_summary(cfg: RunConfig, accelerator: Any, num_examples: int) -> None:
    """One block saying what this invocation will do, and where it picks up if the run was started before."""
    from spin_diffusion.training.checkpoints import list_checkpoints

    layout = RunLayout(cfg.run_dir)
    n = len(cfg.iterations)
    steps = [cfg.training_for(k).max_steps for k in range(1, n + 1)]
    accumulation = cfg.training.accumulation_steps(accelerator.num_processes)
    log.info(
        "%s: %s, %d examples, %d iteration(s) of %s optimizer steps (%d in all); global batch %d "
        "(batch_size %d x %d processes x %d accumulation); mixed precision %s; run directory %s",
        cfg.name,
        cfg.method,
        num_examples,
        n,
        "/".join(map(str, steps)),
        sum(steps),
        cfg.training.batch_size * accelerator.num_processes * accumulation,
        cfg.training.batch_size,
        accelerator.num_processes,
        accumulation,
        cfg.training.mixed_precision,
        cfg.run_dir,
    )
    done = [k for k in range(1, n + 1) if iteration_done(cfg.run_dir, k)]
    if len(done) == n:
        log.info("%s: all %d iteration(s) are finished; nothing to train", cfg.name, n)
        return
    if not done and not layout.iteration(1).root.exists():
        return
    k = len(done) + 1
    saved = list_checkpoints(layout.iteration(k).checkpoints)
    where = f"its checkpoint {saved[-1][1].name}" if saved else "its start"
    log.info(
        "%s: resuming: iteration(s) %s finished; iteration %d continues from %s (run-wide step %d)",
        cfg.name,
        ", ".join(map(str, done)) or "none",
        k,
        where,
        global_step_offset(cfg, k) + (saved[-1][0] if saved else 0),
    )


def trackers(names: list[str]) -> list[str] | None:
    """The trackers accelerate should log with (None for none); one clear line for one not installed."""
    import importlib.util

    for name in names:
        if importlib.util.find_spec(name) is None:
            raise ConfigError(
                f"training.trackers: {name} is not installed (pip install {name}, or remove it)"
            )
    return list(names) or None
