"""Where ``toy reproduce``'s wall time goes: a small study measured, the default study projected.

Runs the reproduction on one seed at a small budget (the default solver steps, guidance and batch,
fewer pairs, steps and held-out prompts), reads the split the study reports (each run's
opponent sampling, reference, training and set-up from its records; the evaluation timed around
it), turns it into costs per unit (per opponent sample, per optimizer step of each run, per
evaluation image) and multiplies them by the default study's counts. The projection assumes the
per-unit costs do not depend on the budget (fixed start-up costs make the small run's units
dearer), so read its shares, not its seconds.

    .venv/bin/python benchmarks/bench_study.py [--pairs 64] [--eval-prompts 16] [--scale 0.1] [--json OUT]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
from pathlib import Path

from spin_diffusion.studies.reproduce import reproduce
from spin_diffusion.studies.runs import models_of, run_configs
from spin_diffusion.studies.settings import ReproduceConfig


def small_study(pairs: int, eval_prompts: int, scale: float) -> ReproduceConfig:
    """The default study on seed 0 with ``pairs`` pairs and every step count times ``scale``."""
    d = ReproduceConfig().model_dump()

    def steps(n: int) -> int:
        return max(1, round(n * scale))

    for it in d["spin"]["iterations"]:
        it["max_steps"] = steps(it["max_steps"])
    d["sft"]["max_steps"] = steps(d["sft"]["max_steps"])
    d["sft"]["eval_every"] = steps(d["sft"]["eval_every"])
    d["dpo"]["max_steps"] = steps(d["dpo"]["max_steps"])
    return ReproduceConfig.model_validate(
        {**d, "seeds": [0], "pairs": pairs, "eval_prompts": eval_prompts, "methods": ["sft", "dpo", "spin", "spin-continued"]}
    )  # fmt: skip


def workload(cfg: ReproduceConfig, seed_dir: Path) -> dict[str, dict[str, int]]:
    """Per run: opponent samples it draws (0 for a run that links another's) and optimizer steps."""
    out = {}
    for name, run in run_configs(cfg, 0, seed_dir).items():
        its = run["iterations"]
        samples = cfg.pairs * cfg.spin.num_samples_per_prompt * len(its) if run["method"] == "spin" else 0
        if name == "spin-continued":
            samples = 0  # linked from SPIN iteration 1
        out[name] = {"samples": samples, "steps": sum(it["max_steps"] for it in its)}
    out["evaluation"] = {"images": len(models_of(cfg, seed_dir)) * cfg.eval_prompts * cfg.images_per_prompt}
    return out


def project(small: dict, small_work: dict, full_work: dict) -> dict[str, float]:
    """Seconds per phase of the full workload from the small run's seconds per unit."""
    proj: dict[str, float] = {}
    for run, split in small.items():
        for phase, seconds in split.items():
            if phase == "evaluation":
                unit = seconds / max(1, small_work["evaluation"]["images"])
                proj[phase] = proj.get(phase, 0.0) + unit * full_work["evaluation"]["images"]
            elif phase == "opponent sampling":
                n_small, n_full = small_work[run]["samples"], full_work[run]["samples"]
                proj[phase] = proj.get(phase, 0.0) + (seconds / n_small * n_full if n_small else 0.0)
            else:  # reference, training, set-up: per optimizer step of this run
                unit = seconds / max(1, small_work[run]["steps"])
                proj[phase] = proj.get(phase, 0.0) + unit * full_work[run]["steps"]
    return proj


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=64)
    ap.add_argument("--eval-prompts", type=int, default=16)
    ap.add_argument("--scale", type=float, default=0.1, help="step counts times this")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    cfg = small_study(args.pairs, args.eval_prompts, args.scale)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "study"
        with contextlib.redirect_stdout(sys.stderr):  # its progress lines are not the table
            result = reproduce(cfg, out, "bench_study", show_progress=False)
        small = result["seeds"][0]["seconds"]
        small_work = workload(cfg, out / "seed-0")
        full = ReproduceConfig()
        full_work = workload(full, out / "seed-0")
    measured = {}
    for split in small.values():
        for phase, s in split.items():
            measured[phase] = measured.get(phase, 0.0) + s
    proj = project(small, small_work, full_work)
    total_m, total_p = sum(measured.values()) or 1.0, sum(proj.values()) or 1.0
    print(
        f"small study: seed 0, {cfg.pairs} pairs, steps x {args.scale}, {cfg.eval_prompts} held-out prompts"
    )
    print("| phase | small study (s) | share | default study, projected share |")
    print("|---|---:|---:|---:|")
    for phase in measured:
        print(f"| {phase} | {measured[phase]:.0f} | {100 * measured[phase] / total_m:.0f}% "
              f"| {100 * proj.get(phase, 0.0) / total_p:.0f}% |")  # fmt: skip
    print(f"default study per seed, projected: {total_p / 60:.1f} min on one core")
    if args.json:
        args.json.write_text(json.dumps({"small": small, "small_work": small_work, "full_work": full_work,
                                         "projected_seconds": proj}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
