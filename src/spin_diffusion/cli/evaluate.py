"""``spin-diffusion evaluate CONFIG.yaml``: the standalone benchmark job.

Only typer and the config module are imported at start-up; torch, diffusers and
transformers load when the job runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def evaluate_command(
    config: Annotated[Path, typer.Argument(help="evaluate job configuration (YAML)")],
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            help="only resolve models, fine-tuned weights, prompt and scorer files; generate nothing",
        ),
    ] = False,
) -> None:
    """Generate images for each model, score them, and write results.md/results.json, a grid and plots."""
    from spin_diffusion.config.evaluation import load_job_config

    job = load_job_config(config)
    if check:
        from spin_diffusion.evaluation.checks import check_evaluation

        lines, _ = check_evaluation(job.models, job.model_entries(), job.evaluation)
        for line in lines:
            typer.echo(f"  {line}")
        typer.echo(f"{config}: ok (nothing generated; output would go to {job.output_dir})")
        return
    from spin_diffusion.evaluation.runner import evaluate_models

    results = evaluate_models(job.models, job.evaluation, Path(job.output_dir), baseline=job.baseline)
    out = Path(job.output_dir)
    typer.echo(f"{len(results['mean'])} models x {results['n_prompts']} prompts evaluated")
    typer.echo(f"report: {out / 'results.md'}")
    typer.echo((out / "results.md").read_text().split("## Median")[0].rstrip())
