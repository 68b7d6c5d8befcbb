"""One SPIN iteration end to end on the toy world, split into encode / sample / reference / train / evaluate.

Runs the real command (``spin-diffusion train``) on the shipped toy config with
a small budget, then reads the phase times the run records
(``results.json: phase_seconds`` and ``iter-1/iteration.json: seconds``).

    .venv/bin/python benchmarks/bench_iteration.py [--examples 500] [--steps 60] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def _cli(*args: str, stdout=subprocess.DEVNULL) -> None:
    """Run a project command; its own output is not part of this benchmark's table."""
    subprocess.run(
        [sys.executable, "-m", "spin_diffusion.cli", *args],
        check=True,
        stdout=stdout,
        stderr=subprocess.DEVNULL,
    )


def run(work: Path, examples: int, steps: int, eval_prompts: int) -> dict:
    from spin_diffusion.toy import base_model_path

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    _cli("toy", "dataset", str(work / "curated"), "--n", str(examples))
    with open(work / "eval_prompts.txt", "w") as f:
        _cli("toy", "prompts", "eval", "--n", str(eval_prompts), stdout=f)
    cfg = yaml.safe_load((REPO / "configs" / "toy-spin.yaml").read_text())
    cfg["model"]["pretrained"] = str(base_model_path())
    cfg["data"]["path"] = str(work / "curated")
    cfg["evaluation"]["prompts"]["path"] = str(work / "eval_prompts.txt")
    cfg["evaluation"]["n_images_per_prompt"] = 2
    cfg["iterations"] = [{"beta": 200, "max_steps": steps}]
    cfg["training"].update(precompute_reference=True, trackers=[], checkpointing_steps=steps)
    cfg["output_dir"] = str(work / "runs")
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))
    _cli("train", str(work / "config.yaml"))
    run_dir = next((work / "runs").iterdir())
    results = json.loads((run_dir / "results.json").read_text())
    iteration = json.loads((run_dir / "iter-1" / "iteration.json").read_text())
    phases = {
        "encode real images": results["phase_seconds"]["encode"],
        **{f"{k}": v for k, v in iteration["seconds"].items()},
        "evaluate (base + iteration 1)": results["phase_seconds"]["evaluate"],
    }
    return {"examples": examples, "steps": steps, "eval_images": 2 * eval_prompts, "phases": phases,
            "total": results["seconds"], "global_batch": iteration["global_batch"]}  # fmt: skip


def render(r: dict) -> str:
    total = sum(r["phases"].values())
    lines = [
        f"{r['examples']} examples, {r['steps']} steps of global batch {r['global_batch']}, "
        f"evaluation on {r['eval_images']} images per model.",
        "",
        "| phase | seconds | share |",
        "|---|---:|---:|",
    ]
    for name, sec in r["phases"].items():
        lines.append(f"| {name} | {sec:.1f} | {sec / total:.0%} |")
    lines.append(f"| total (command wall time {r['total']:.1f} s, start-up included) | {total:.1f} | 100% |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=500)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--eval-prompts", type=int, default=48)
    parser.add_argument("--work", type=Path, default=Path("/tmp/spin-bench-iteration"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    r = run(args.work, args.examples, args.steps, args.eval_prompts)
    if args.json:
        args.json.write_text(json.dumps(r, indent=2))
    print(render(r))


if __name__ == "__main__":
    main()
