"""``spin-diffusion demo``: self-play fine-tuning of the shipped toy model, judged by the exact oracle.

The run is an ordinary :func:`spin_diffusion.selfplay.run` on a config built
here, so the demo exercises the same code path as a real Stable Diffusion
run. Around it the demo writes the curated fine-tuning set and the held-out
evaluation prompts, scores the curated data itself with the oracle (the
ceiling the fine-tuned models approach), and prints a table like the paper's
Table 1.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from spin_diffusion.errors import UserError

# Sizes chosen so the whole demo takes a few minutes on 2 CPU cores.
FULL = {
    "examples": 1000,
    "eval_prompts": 48,
    "images_per_prompt": 4,
    "steps": (60, 60, 60),
    "sample_steps": 20,
}
QUICK = {"examples": 48, "eval_prompts": 8, "images_per_prompt": 2, "steps": (4, 4, 4), "sample_steps": 8}


def demo_config(output_dir: Path, iterations: int, quick: bool) -> dict[str, Any]:
    """The run configuration of the demo (also a worked example of a full config)."""
    from spin_diffusion.toy import base_model_path

    size = QUICK if quick else FULL
    data_dir = output_dir / "demo-data"
    steps = [size["steps"][min(k, len(size["steps"]) - 1)] for k in range(iterations)]
    # The toy's per-sample errors are larger than SD-1.5's, so the paper's beta (2000, 5000) saturates
    # the logistic loss within a few steps here; these values were chosen by one comparison run.
    betas = [200.0] + [500.0] * (iterations - 1)
    return {
        "name": "demo-quick" if quick else "demo",
        "output_dir": str(output_dir),
        "method": "spin",
        "seed": 0,
        "model": {"pretrained": str(base_model_path())},
        "data": {"source": "imagefolder", "path": str(data_dir / "curated"), "resolution": 32},
        "sampling": {
            "num_inference_steps": size["sample_steps"],
            "guidance_scale": 3.0,
            "batch_size": 128,
            "shard_size": 256,
            "num_previews": 16,
        },
        "training": {
            "batch_size": 16,
            "learning_rate": 5e-5,
            "warmup_steps": 5,
            "checkpointing_steps": 20,
            "trackers": ["tensorboard"],
        },
        "iterations": [{"beta": b, "max_steps": s} for b, s in zip(betas, steps, strict=True)],
        "evaluation": {
            "prompts": {"kind": "text", "path": str(data_dir / "eval_prompts.txt")},
            "n_images_per_prompt": size["images_per_prompt"],
            "scorers": [{"kind": "toy_fidelity"}, {"kind": "toy_style"}],
            "num_inference_steps": size["sample_steps"],
            "guidance_scale": 3.0,
            "batch_size": 128,
            "grid_prompts": 8,
        },
    }


def prepare_demo_data(output_dir: Path, quick: bool) -> Path:
    """Curated fine-tuning images and held-out evaluation prompts (written once, then reused)."""
    from spin_diffusion.toy.datasets import eval_prompts, write_imagefolder

    size = QUICK if quick else FULL
    data_dir = output_dir / "demo-data"
    curated = data_dir / "curated"
    if not (curated / "metadata.jsonl").is_file():
        write_imagefolder(curated, size["examples"], 0, "curated", 32, True)
    prompts_file = data_dir / "eval_prompts.txt"
    if not prompts_file.is_file():
        prompts_file.write_text("\n".join(eval_prompts(size["eval_prompts"], seed=0)) + "\n")
    return data_dir


def curated_reference(data_dir: Path, limit: int = 200) -> dict[str, float]:
    """Oracle scores of the curated images themselves: the data the fine-tuning imitates."""
    from PIL import Image

    from spin_diffusion.toy.oracle import OracleScorer

    rows = [json.loads(line) for line in (data_dir / "curated" / "metadata.jsonl").read_text().splitlines()]
    rows = rows[:limit]
    images = [Image.open(data_dir / "curated" / r["file_name"]).convert("RGB") for r in rows]
    prompts = [r["text"] for r in rows]
    return {
        "toy_fidelity": float(OracleScorer("fidelity").score(images, prompts).mean()),
        "toy_style": float(OracleScorer("style").score(images, prompts).mean()),
    }


def demo_table(evaluation: dict[str, Any], curated: dict[str, float]) -> str:
    """Markdown table: curated data, base and each iteration; oracle metrics and win rates vs base.

    ``open TV`` is the total-variation distance between the attributes a prompt leaves open in the
    model's images and in the curated data (lower is better); ``diversity`` is the share of distinct
    open-attribute combinations among a prompt's images.
    """
    mean = evaluation["mean"]
    sets = evaluation.get("toy_set_metrics", {})
    wins = evaluation.get("win_rate", {})
    lines = [
        "| model | fidelity | style | open TV | diversity | win rate vs base (fidelity) | win rate vs base (average) |",
        "|---|---|---|---|---|---|---|",
        f"| curated data | {curated['toy_fidelity']:.3f} | {curated['toy_style']:.3f} | - | - | - | - |",
    ]
    for name, row in mean.items():
        s = sets.get(name, {})
        vs_base = wins.get(name, {}).get("base", {})
        lines.append(
            f"| {name} | {row.get('toy_fidelity', float('nan')):.3f} | {row.get('toy_style', float('nan')):.3f} "
            f"| {_num(s.get('open_tv'))} | {_num(s.get('diversity_attr'))} "
            f"| {_pct(vs_base.get('toy_fidelity'))} | {_pct(vs_base.get('average'))} |"
        )
    return "\n".join(lines) + "\n"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def run_demo(output_dir: Path = Path("runs"), iterations: int = 2, quick: bool = False) -> dict[str, Any]:
    """Prepare data, run self-play with evaluation, print and save the table."""
    from spin_diffusion.config import validate_config
    from spin_diffusion.selfplay import run
    from spin_diffusion.toy import base_model_path

    if not (base_model_path() / "model_index.json").is_file():
        raise UserError(
            f"the shipped toy model is missing at {base_model_path()}; rebuild it with `spin-diffusion toy pretrain`"
        )
    output_dir = Path(output_dir)
    data_dir = prepare_demo_data(output_dir, quick)
    cfg = validate_config(demo_config(output_dir, iterations, quick), "demo config")
    results = run(cfg)
    evaluation = results.get("evaluation")
    if evaluation is None:
        raise UserError("the demo run produced no evaluation")
    table = demo_table(evaluation, curated_reference(data_dir))
    (cfg.run_dir / "demo_table.md").write_text(table)
    print()
    print(f"SPIN-Diffusion on the toy world ({iterations} iterations), judged by the exact oracle:")
    print(table)
    print(f"run directory: {cfg.run_dir}  (grid: {cfg.run_dir / 'eval' / 'grid.png'})")
    return results
