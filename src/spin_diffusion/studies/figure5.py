"""``spin-diffusion toy figure5``: the paper's Figure 5 ablation as the paper ran it.

The paper starts both arms from the end of an iteration 1 that "reaches its limit quickly": the
comparison is between going on against the same opponent and switching opponents, from a model
that has stopped improving. So, per seed:

1. iteration 1 (theta_0's samples, theta_0 the opponent) runs ``search_steps + arm_steps`` steps
   with a constant learning rate after warm-up, saving a model every ``snapshot_every`` steps;
2. its snapshots up to ``search_steps`` are judged on the held-out prompts, and the plateau is the
   first snapshot whose score is within ``tolerance`` of the best (:func:`plateau_step`);
3. arm (a), iteration 1 continued, is that same run's snapshots after the plateau (a constant
   schedule makes the run past step P exactly "continue from P", optimizer state included);
4. arm (b), iteration 2, starts from the plateau model theta_1 (saved as a full pipeline), samples
   from it and uses it as the reference, for the same ``arm_steps`` with iteration 2's beta and
   learning rate (its draws are those iteration 2 of the seed's run would use);
5. every model of the seed is judged in one evaluation (same prompts and image seeds).

Each stage is an ordinary run directory or evaluation cache, so re-running continues where it
stopped. Nothing here is a claim: the report prints what the oracle measured.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from spin_diffusion.infra.atomic import write_json_atomic, write_text_atomic
from spin_diffusion.infra.run_layout import RunLayout
from spin_diffusion.studies.runs import study_run_config
from spin_diffusion.studies.settings import ReproduceConfig
from spin_diffusion.studies.tables import mean_sd, save_png

METRICS = ("toy_fidelity", "toy_style")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ArmSettings(_Strict):
    beta: float = Field(gt=0)
    learning_rate: float = Field(gt=0)


class Figure5Config(_Strict):
    """Everything the ablation depends on; saved as ``figure5.json`` settings in its directory."""

    seeds: list[int] = Field(default_factory=lambda: [1, 2, 3], min_length=1)
    pairs: int = Field(2000, ge=16, description="curated pairs (the reproduction's data for the same seed)")
    eval_prompts: int = Field(200, ge=1)
    images_per_prompt: int = Field(2, ge=1)
    eval_seed: int = 0
    guidance_scale: float = Field(3.0, ge=0)
    sample_steps: int = Field(20, ge=1)
    batch_size: int = Field(16, ge=1)
    warmup_steps: int = Field(5, ge=0)
    pair_noise: Literal["shared", "independent"] = "shared"
    iteration_1: ArmSettings = Field(default_factory=lambda: ArmSettings(beta=200.0, learning_rate=1e-5))
    iteration_2: ArmSettings = Field(default_factory=lambda: ArmSettings(beta=500.0, learning_rate=1e-5))
    snapshot_every: int = Field(60, ge=1, description="a model is saved and judged every N steps")
    search_steps: int = Field(480, ge=1, description="iteration 1's steps in which the plateau is looked for")
    arm_steps: int = Field(240, ge=1, description="steps each arm runs from the plateau")
    tolerance: float = Field(0.01, ge=0, description="plateau: first snapshot within this of the best")
    plateau_metric: Literal["average", "toy_fidelity", "toy_style"] = "average"

    @model_validator(mode="after")
    def _snapshots_line_up(self) -> Figure5Config:
        for name in ("search_steps", "arm_steps"):
            if getattr(self, name) % self.snapshot_every:
                raise ValueError(f"{name} must be a multiple of snapshot_every {self.snapshot_every}")
        return self

    def as_study(self) -> ReproduceConfig:
        """The reproduction's settings these share (data, sampling, batch, evaluation)."""
        shared = ("seeds", "pairs", "eval_prompts", "images_per_prompt", "eval_seed", "guidance_scale")
        return ReproduceConfig.model_validate(
            {
                **{k: getattr(self, k) for k in shared},
                "methods": ["spin"],
                "sample_steps": self.sample_steps,
                "batch_size": self.batch_size,
                "warmup_steps": self.warmup_steps,
            }
        )


def plateau_step(curve: dict[int, float], tolerance: float) -> int:
    """The first snapshot step whose score is within ``tolerance`` of the curve's best."""
    if not curve:
        raise ValueError("no snapshots to find a plateau in")
    best = max(curve.values())
    return min(step for step, score in curve.items() if score >= best - tolerance)


# --------------------------------------------------------------------------- one seed


def _iteration_1_run(cfg: Figure5Config, seed: int, seed_dir: Path) -> dict[str, Any]:
    curated = {"source": "imagefolder", "path": str(seed_dir / "data" / "curated"), "resolution": 32}
    run = study_run_config(cfg.as_study(), seed, seed_dir, "figure5-iter1", "spin", curated)
    run["training"].update(save_model_every=cfg.snapshot_every, pair_noise=cfg.pair_noise)
    run["iterations"] = [{**cfg.iteration_1.model_dump(), "max_steps": cfg.search_steps + cfg.arm_steps}]
    return run


def _iteration_2_run(cfg: Figure5Config, seed: int, seed_dir: Path, theta_1: Path, plateau: int) -> dict:
    run = _iteration_1_run(cfg, seed, seed_dir)
    run["name"] = f"figure5-iter2-from-{plateau}"
    run["model"]["pretrained"] = str(theta_1)
    run["seed"] = seed + 1000  # iteration_seed(seed + 1000, 1) == iteration_seed(seed, 2)
    run["iterations"] = [{**cfg.iteration_2.model_dump(), "max_steps": cfg.arm_steps}]
    return run


def save_plateau_pipeline(snapshot: Path, out: Path) -> Path:
    """theta_1 as a full pipeline (the shipped base with the plateau snapshot's UNet), once."""
    from spin_diffusion.model.loading import load_pipeline
    from spin_diffusion.model.saving import save_full_pipeline
    from spin_diffusion.toy import base_model_path

    if not (out / "model_index.json").is_file():
        pipe = load_pipeline(base_model_path(), trained=snapshot)
        save_full_pipeline(pipe, pipe.unet, out)
    return out


def _evaluate(cfg: Figure5Config, seed_dir: Path, prompts_file: Path, models: dict[str, Any]) -> dict:
    from spin_diffusion.config.evaluation import EvaluationConfig
    from spin_diffusion.evaluation.runner import evaluate_models
    from spin_diffusion.studies.image_reuse import link_images_by_weights, study_eval_dirs
    from spin_diffusion.studies.runs import evaluation_config

    eval_cfg = EvaluationConfig.model_validate(evaluation_config(cfg.as_study(), prompts_file))
    target = seed_dir / "figure5-eval"  # images of the same weights judged elsewhere in the study: linked
    link_images_by_weights(target, models, eval_cfg.sampling_fingerprint(), study_eval_dirs(seed_dir.parent))
    return evaluate_models(models, eval_cfg, target, baseline="base")


def run_seed(cfg: Figure5Config, seed: int, out: Path, prompts_file: Path, show_progress: bool) -> dict:
    """Iteration 1 with snapshots, its plateau, both arms from it, everything judged together."""
    from spin_diffusion.config.run import validate_config
    from spin_diffusion.selfplay.driver import run
    from spin_diffusion.studies.reuse import share_opponent_samples
    from spin_diffusion.studies.runs import prepare_data
    from spin_diffusion.toy import base_model_path

    seed_dir = out / f"seed-{seed}"
    prepare_data(cfg.as_study(), seed, seed_dir)
    print(f"[seed {seed}] figure 5: iteration 1 with a model every {cfg.snapshot_every} steps", flush=True)
    first_cfg = validate_config(_iteration_1_run(cfg, seed, seed_dir), f"figure5 seed {seed}")
    share_opponent_samples(seed_dir / "spin", first_cfg)  # a reproduction's iteration 1 here: its samples
    run(first_cfg, show_progress)
    base = str(base_model_path())
    first_iteration = RunLayout(first_cfg.run_dir).iteration(1)
    # the model-name record: name -> (arm, step since iteration 1 began, evaluation entry)
    record: dict[str, dict[str, Any]] = {"base": {"arm": "base", "step": 0, "entry": {"path": base}}}
    steps = range(cfg.snapshot_every, cfg.search_steps + cfg.arm_steps + 1, cfg.snapshot_every)
    for s in steps:
        entry = {"path": base, "trained": str(first_iteration.snapshot(s))}
        record[f"iter1-step-{s}"] = {"arm": "iteration 1", "step": s, "entry": entry}
    search = {n: r for n, r in record.items() if r["arm"] == "base" or r["step"] <= cfg.search_steps}
    first = _evaluate(cfg, seed_dir, prompts_file, {n: r["entry"] for n, r in search.items()})
    curve = {r["step"]: _score(first, n, cfg.plateau_metric) for n, r in search.items() if n != "base"}
    plateau = plateau_step(curve, cfg.tolerance)
    print(f"[seed {seed}] plateau of iteration 1 at step {plateau}; iteration 2 from there", flush=True)

    theta_1 = save_plateau_pipeline(
        first_iteration.snapshot(plateau), seed_dir / f"figure5-theta1-step-{plateau}"
    )
    arm_b = validate_config(
        _iteration_2_run(cfg, seed, seed_dir, theta_1, plateau), f"figure5 seed {seed} iteration 2"
    )
    run(arm_b, show_progress)
    second_iteration = RunLayout(arm_b.run_dir).iteration(1)
    for j in range(cfg.snapshot_every, cfg.arm_steps + 1, cfg.snapshot_every):
        entry = {"path": str(theta_1), "trained": str(second_iteration.snapshot(j))}
        record[f"iter2-step-{plateau + j}"] = {"arm": "iteration 2", "step": plateau + j, "entry": entry}
    evaluation = _evaluate(cfg, seed_dir, prompts_file, {n: r["entry"] for n, r in record.items()})
    return summarize_seed(cfg, seed_dir, plateau, curve, record, evaluation)


def _score(evaluation: dict[str, Any], name: str, metric: str) -> float:
    return float(evaluation["mean"][name][metric])


def summarize_seed(
    cfg: Figure5Config,
    seed_dir: Path,
    plateau: int,
    curve: dict[int, float],
    record: dict[str, dict[str, Any]],
    evaluation: dict[str, Any],
) -> dict[str, Any]:
    """Both arms at every offset from the plateau (offset 0 is theta_1 itself), and iteration 1's curve."""
    from spin_diffusion.toy.diagnostics import BREAKDOWN_COLUMNS

    sets = evaluation.get("toy_set_metrics", {})

    def numbers(name: str) -> dict[str, Any]:
        row = {m: evaluation["mean"][name][m] for m in (*METRICS, "average")}
        row.update({k: sets.get(name, {}).get(k) for k in BREAKDOWN_COLUMNS})
        return {"model": name, **row}

    at = {(r["arm"], r["step"]): n for n, r in record.items()}
    arms: dict[str, list[dict[str, Any]]] = {"continued": [], "iteration 2": []}
    for j in range(0, cfg.arm_steps + 1, cfg.snapshot_every):
        start = at[("iteration 1", plateau)]
        arms["continued"].append({"offset": j, **numbers(at[("iteration 1", plateau + j)])})
        arms["iteration 2"].append(
            {"offset": j, **numbers(start if j == 0 else at[("iteration 2", plateau + j)])}
        )
    last_a, last_b = arms["continued"][-1]["model"], arms["iteration 2"][-1]["model"]
    summary = {
        "seed_dir": str(seed_dir),
        "plateau_step": plateau,
        "plateau_curve": {str(k): v for k, v in sorted(curve.items())},
        "iteration_1": [
            numbers(n) | {"step": r["step"]} for n, r in record.items() if r["arm"] != "iteration 2"
        ],
        "arms": arms,
        "win_rate_iteration_2_over_continued": evaluation["win_rate"][last_b][last_a]["average"],
        "models": {n: {"arm": r["arm"], "step": r["step"]} for n, r in record.items()},
    }
    write_json_atomic(seed_dir / "figure5_summary.json", summary)
    return summary


# --------------------------------------------------------------------------- across seeds


def _arm_stat(
    summaries: dict[int, dict[str, Any]], arm: str, index: int, key: str
) -> tuple[float, float, int]:
    vals = [s["arms"][arm][index].get(key) for s in summaries.values()]
    return mean_sd([float(v) for v in vals if v is not None and not math.isnan(v)])


def _cell(stat: tuple[float, float, int]) -> str:
    m, sd, n = stat
    if n == 0:
        return "-"
    return f"{m:.3f}" if n == 1 else f"{m:.3f} ± {sd:.3f}"


def render_report(cfg: Figure5Config, summaries: dict[int, dict[str, Any]], command: str) -> str:
    """figure5.md: the plateau per seed, both arms step by step from it, the end's win rate."""
    seeds = sorted(summaries)
    lines = [
        "# Toy-world Figure 5: iteration 1 continued vs iteration 2, both from iteration 1's plateau",
        "",
        f"Command: `{command}`",
        "",
        f"Seeds {', '.join(map(str, seeds))}; {cfg.pairs} curated pairs; {cfg.eval_prompts} held-out prompts x "
        f"{cfg.images_per_prompt} images judged by the oracle; pair noise {cfg.pair_noise}. Iteration 1 "
        f"(beta {cfg.iteration_1.beta:g}, lr {cfg.iteration_1.learning_rate:g}) saved a model every "
        f"{cfg.snapshot_every} steps; its plateau is the first snapshot within {cfg.tolerance} of the best "
        f"{cfg.plateau_metric} in its first {cfg.search_steps} steps. From there both arms ran "
        f"{cfg.arm_steps} steps: continued (theta_0's samples, theta_0 the opponent) and iteration 2 "
        f"(theta_1's samples and reference; beta {cfg.iteration_2.beta:g}, lr {cfg.iteration_2.learning_rate:g}). "
        "Cells are mean ± standard deviation over seeds.",
        "",
        "| seed | plateau step | iteration 1 curve (step: score) | win rate of iteration 2 over continued at the end |",
        "|---|---|---|---|",
    ]
    for s in seeds:
        sm = summaries[s]
        curve = ", ".join(f"{k}: {v:.3f}" for k, v in sm["plateau_curve"].items())
        lines.append(
            f"| {s} | {sm['plateau_step']} | {curve} | {100 * sm['win_rate_iteration_2_over_continued']:.1f}% |"
        )
    lines += [
        "",
        "| steps from the plateau | continued fidelity | iteration 2 fidelity | continued style | iteration 2 style "
        "| continued empty images | iteration 2 empty images |",
        "|---|---|---|---|---|---|---|",
    ]
    first = next(iter(summaries.values()))
    for i, row in enumerate(first["arms"]["continued"]):
        cells = [
            _cell(_arm_stat(summaries, arm, i, key))
            for key in (*METRICS, "empty_share")
            for arm in ("continued", "iteration 2")
        ]
        lines.append(f"| {row['offset']} | " + " | ".join(cells) + " |")
    lines += ["", "Settings:", "", "```json", cfg.model_dump_json(indent=2), "```", ""]
    return "\n".join(lines)


def plot_arms(cfg: Figure5Config, summaries: dict[int, dict[str, Any]], path: Path) -> None:
    """Each oracle metric against steps from the plateau, both arms, mean ± sd over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = next(iter(summaries.values()))
    offsets = [row["offset"] for row in first["arms"]["continued"]]
    fig, axes = plt.subplots(1, len(METRICS), figsize=(5 * len(METRICS), 3.4))
    for ax, metric in zip(axes, METRICS, strict=True):
        for arm, style in (("continued", "--"), ("iteration 2", "-")):
            stats = [_arm_stat(summaries, arm, i, metric) for i in range(len(offsets))]
            ax.errorbar(offsets, [m for m, _, _ in stats], yerr=[sd for _, sd, _ in stats], marker="o",
                        capsize=3, linestyle=style, label=f"iteration 1 {arm}" if arm == "continued" else arm)  # fmt: skip
        ax.set_xlabel("steps from iteration 1's plateau")
        ax.set_title(metric.replace("toy_", "oracle "))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    save_png(fig, path)


def figure5(cfg: Figure5Config, out: Path, command: str, show_progress: bool = True) -> dict[str, Any]:
    """Run (or resume) the ablation for every seed; writes figure5.md, figure5.json, plots/figure5.png."""
    from spin_diffusion.errors import ConfigError
    from spin_diffusion.toy.datasets import eval_prompts

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    saved = out / "figure5_settings.json"
    if saved.is_file():
        previous = Figure5Config.model_validate_json(saved.read_text())
        changed = [
            k for k in Figure5Config.model_fields if k != "seeds" and getattr(previous, k) != getattr(cfg, k)
        ]
        if changed:
            raise ConfigError(
                f"{out} holds a Figure 5 study with different {', '.join(changed)}; use another --out"
            )
    write_text_atomic(saved, cfg.model_dump_json(indent=2) + "\n")
    prompts_file = out / "eval_prompts.txt"
    write_text_atomic(prompts_file, "\n".join(eval_prompts(cfg.eval_prompts, seed=0)) + "\n")
    summaries = {seed: run_seed(cfg, seed, out, prompts_file, show_progress) for seed in cfg.seeds}
    text = render_report(cfg, summaries, command)
    plot_arms(cfg, summaries, out / "plots" / "figure5.png")
    write_text_atomic(out / "figure5.md", text)
    write_json_atomic(out / "figure5.json", {"settings": cfg.model_dump(mode="json"), "seeds": summaries})
    return {"report": text, "seeds": summaries, "plot": out / "plots" / "figure5.png"}
