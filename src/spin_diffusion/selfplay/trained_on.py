"""What an iteration was trained on: its opponent samples, its steps, its base model.

The samples of an iteration can be deleted and made again (the error for
changed sampling settings says so). Checkpoints trained on the old samples
must then not be resumed on the new ones: that would finish one model on two
sample sets. The sampler identity is recorded beside the checkpoints before
training starts, and a resume with another one is refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from spin_diffusion.config.sampling import SamplingConfig
from spin_diffusion.errors import CheckpointError
from spin_diffusion.infra.atomic import write_json_atomic
from spin_diffusion.infra.run_layout import CHECKPOINTS, RunLayout
from spin_diffusion.training.checkpoints import list_checkpoints

RECORD = "trained_on_samples.json"


def sampler_identity(settings: SamplingConfig, seed: int, opponent_fingerprint: str) -> dict[str, Any]:
    """What decides the opponent's samples: the sampler settings, the seed and the opponent's weights."""
    return {
        "sampler": settings.model_dump(mode="json", exclude={"batch_size", "num_previews"}),
        "seed": seed,
        "opponent_fingerprint": opponent_fingerprint,
    }


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def check_and_record(iter_dir: Path, identity: dict[str, Any], write: bool) -> None:
    """Refuse to resume checkpoints made on other samples; record ``identity`` for this iteration's training."""
    path = iter_dir / RECORD
    checkpoints = list_checkpoints(iter_dir / CHECKPOINTS)
    recorded = _read(path) if path.is_file() else None
    if checkpoints and recorded is not None and recorded != identity:
        changed = sorted(k for k in set(recorded["sampler"]) | set(identity["sampler"])
                         if recorded["sampler"].get(k) != identity["sampler"].get(k))  # fmt: skip
        changed += [k for k in ("seed", "opponent_fingerprint") if recorded.get(k) != identity.get(k)]
        raise CheckpointError(
            f"{iter_dir / CHECKPOINTS} was trained on opponent samples made with different "
            f"{', '.join(f'sampling.{k}' if k in identity['sampler'] else k for k in changed)}; resuming it "
            f"would mix two sample sets: restore those settings, or delete {iter_dir / CHECKPOINTS} "
            "too so the iteration trains from its start"
        )
    if write and recorded != identity:
        write_json_atomic(path, identity)


def recorded_steps(run_dir: Path, k: int) -> int | None:
    """The optimizer steps finished iteration ``k`` ran, from its iteration.json (None if not finished)."""
    summary = _read(RunLayout(run_dir).iteration(k).done)
    steps = None if summary is None else summary.get("steps")
    return steps if isinstance(steps, int) and not isinstance(steps, bool) else None


def check_same_base(run_dir: Path, base_unet: Any, pretrained: str) -> None:
    """Refuse to continue a run on another base model than iteration 1 started from.

    Run identity compares model paths by where they lead (a moved checkout
    resumes); the weights decide whether it is the same model.
    """
    from spin_diffusion.model.weights import fingerprint_module

    summary = _read(RunLayout(run_dir).iteration(1).done)
    recorded = None if summary is None else summary.get("opponent_fingerprint")
    if recorded is None:
        return
    base_fingerprint = fingerprint_module(base_unet)  # hashed only when there is a record to compare
    if recorded != base_fingerprint:
        raise CheckpointError(
            f"model.pretrained {pretrained} holds other weights than the base {run_dir} was trained from "
            f"(fingerprint {base_fingerprint[:12]}, recorded {str(recorded)[:12]} in iter-1/iteration.json); "
            "point it at the original base model, or use a new run name"
        )
