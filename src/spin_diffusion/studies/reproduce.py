"""``spin-diffusion toy reproduce``: the paper's Table 1 and Figure 5 on the toy world, several seeds.

For each seed one fixed curated set (one image per prompt) is written, and on it, from the shipped
base: SFT (with a model saved every ``sft.eval_every`` steps, so its curve and its best checkpoint
are reported), Diffusion-DPO on curated-winner vs web-loser pairs for the same prompts, SPIN
iterations 1..K, and the Figure 5 ablation (iteration 1 continued for as many steps as iterations
1 and 2 used together, against its first opponent). Every model of a seed is judged by the exact
oracle on the same held-out prompts and image seeds in one evaluation, so win rates compare like
with like. Every stage is an ordinary run directory (resumable, cached), so re-running the command
continues where it stopped and a finished study only re-renders its tables.

Training runs one at a time through :func:`spin_diffusion.selfplay.driver.run`: the same code path as a
Stable Diffusion run.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from spin_diffusion.infra.atomic import write_json_atomic, write_text_atomic
from spin_diffusion.infra.run_layout import RunLayout
from spin_diffusion.studies.compare_report import plot_comparison, win_matrix_lines
from spin_diffusion.studies.model_names import ModelName, sft_step
from spin_diffusion.studies.runs import (
    check_methods,
    evaluation_config,
    examples_seen,
    models_of,
    prepare_data,
    run_configs,
)
from spin_diffusion.studies.settings import FAMILY, METRICS, ReproduceConfig
from spin_diffusion.studies.tables import REPRODUCTION_TITLE, across_seeds, render_report, save_png
from spin_diffusion.toy.diagnostics import BREAKDOWN_COLUMNS


def run_seed(cfg: ReproduceConfig, seed: int, out: Path, prompts_file: Path, show_progress: bool) -> dict:
    """Train every method of one seed (resuming), then judge all its models together."""
    from spin_diffusion.config.evaluation import EvaluationConfig
    from spin_diffusion.config.run import validate_config
    from spin_diffusion.evaluation.runner import evaluate_models
    from spin_diffusion.selfplay.driver import run
    from spin_diffusion.studies.image_reuse import link_images_by_weights, study_eval_dirs
    from spin_diffusion.studies.reuse import share_opponent_samples
    from spin_diffusion.studies.timing import seed_seconds, timed

    seed_dir = out / f"seed-{seed}"
    prepare_data(cfg, seed, seed_dir)
    for method, raw in run_configs(cfg, seed, seed_dir).items():
        print(f"[seed {seed}] {method}", flush=True)
        run_cfg = validate_config(raw, f"reproduce seed {seed} {method}")
        if method == "spin-continued":  # iteration 1's samples of theta_0, the same ones: reuse them
            share_opponent_samples(seed_dir / "spin", run_cfg)
        run(run_cfg, show_progress=show_progress)
    models = models_of(cfg, seed_dir)
    print(f"[seed {seed}] evaluating {len(models)} models", flush=True)
    eval_cfg = EvaluationConfig.model_validate(evaluation_config(cfg, prompts_file))
    with timed(seed_dir, "evaluation"):  # images of the same weights judged elsewhere in the study: linked
        link_images_by_weights(
            seed_dir / "eval", models, eval_cfg.sampling_fingerprint(), study_eval_dirs(out)
        )
        evaluation = evaluate_models(models, eval_cfg, seed_dir / "eval", baseline="base")
    summary = summarize_seed(cfg, seed_dir, evaluation)
    summary["seconds"] = seed_seconds(seed_dir, list(run_configs(cfg, seed, seed_dir)))
    write_json_atomic(seed_dir / "summary.json", summary)
    return summary


def recorded_examples(cfg: ReproduceConfig, seed_dir: Path, name: str) -> int:
    """:func:`examples_seen`, with SPIN's steps as its iterations recorded them (stop_when may end one early)."""
    model = ModelName.parse(name)
    if model.method != "spin" or model.iteration is None:
        return examples_seen(cfg, name)
    layout = RunLayout(seed_dir / "spin")
    records = [layout.iteration(k).done for k in range(1, model.iteration + 1)]
    if not all(r.is_file() for r in records):
        return examples_seen(cfg, name)
    return sum(json.loads(r.read_text())["steps"] for r in records) * cfg.batch_size


def _prompt_means(seed_dir: Path) -> dict[str, dict[str, Any]]:
    """Per model and metric, the per-prompt means of the stored scores (for standard errors)."""
    import numpy as np
    import pyarrow.parquet as pq

    table = pq.read_table(seed_dir / "eval" / "scores.parquet").to_pydict()
    out: dict[str, dict[str, Any]] = {}
    for metric in METRICS:
        groups: dict[tuple[str, str], list[float]] = {}
        for model, pid, v in zip(table["model"], table["prompt_id"], table[metric], strict=True):
            groups.setdefault((model, pid), []).append(v)
        for (model, _), vals in groups.items():
            out.setdefault(model, {}).setdefault(metric, []).append(float(np.mean(vals)))
    return out


def drift(run_dir: Path, k: int) -> dict[str, float] | None:
    """Means over the last quarter of iteration k's logged steps: the model's and reference's errors."""
    log = RunLayout(run_dir).iteration(k).train_log
    if not log.is_file():
        return None
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    tail = rows[-max(1, len(rows) // 4) :]
    keys = ("loss", "implicit_acc", "model_err_real", "ref_err_real", "model_err_gen", "ref_err_gen")
    out = {key: sum(r[key] for r in tail) / len(tail) for key in keys if all(key in r for r in tail)}
    record = RunLayout(run_dir).iteration(k).done
    if record.is_file():  # how long the iteration ran, and why it ended (stop_when may end it early)
        saved = json.loads(record.read_text())
        out["steps"] = saved["steps"]
        out["ended_early"] = float((saved.get("ended") or {}).get("reason", "max_steps") != "max_steps")
    return out


def summarize_seed(cfg: ReproduceConfig, seed_dir: Path, evaluation: dict[str, Any]) -> dict[str, Any]:
    """The numbers of one seed that the cross-seed tables need (also written as summary.json)."""
    import numpy as np

    means = evaluation["mean"]
    sets = evaluation.get("toy_set_metrics", {})
    wins = evaluation["win_rate"]
    bon = evaluation["best_of_n"]["max"]
    per_prompt = _prompt_means(seed_dir)
    sft_names = [n for n in means if sft_step(n) is not None]
    sft_best = max(sft_names, key=lambda n: means[n]["average"]) if sft_names else None
    models: dict[str, dict[str, Any]] = {}
    for name, row in means.items():
        entry = {m: row[m] for m in METRICS}
        entry["average"] = row["average"]
        for m in METRICS:
            vals = np.asarray(per_prompt[name][m])
            entry[f"{m}_se"] = float(vals.std(ddof=1) / math.sqrt(len(vals))) if len(vals) > 1 else 0.0
        entry.update({k: sets.get(name, {}).get(k) for k in BREAKDOWN_COLUMNS})  # fidelity by attribute
        entry["open_tv"] = sets.get(name, {}).get("open_tv")
        entry["diversity"] = sets.get(name, {}).get("diversity_attr")
        entry["best_of_n_fidelity"] = bon[name]["toy_fidelity"]
        entry["examples"] = recorded_examples(cfg, seed_dir, name)
        entry["wins"] = {other: rates["average"] for other, rates in wins.get(name, {}).items()}
        for other in ("base", sft_best, "dpo"):
            if other is not None and other in wins.get(name, {}):
                key = "sft_best" if other == sft_best else other
                entry[f"win_vs_{key}"] = wins[name][other]["average"]
        models[name] = entry
    drifts = {}
    for k in range(1, len(cfg.spin.iterations) + 1):
        d = drift(seed_dir / "spin", k)
        if d is not None:
            drifts[ModelName("spin", iteration=k).name] = d
    summary = {"seed_dir": str(seed_dir), "sft_best": sft_best, "models": models, "drift": drifts}
    write_json_atomic(seed_dir / "summary.json", summary)
    return summary


def plot_curves(cfg: ReproduceConfig, summaries: dict[int, dict[str, Any]], path: Path) -> None:
    """Each oracle metric against training examples seen: SFT's curve, SPIN's iterations, DPO, Figure 5."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = next(iter(summaries.values()))["models"]
    groups = {
        "SFT": ["base"] + sorted((n for n in first if sft_step(n) is not None), key=sft_step),
        "SPIN": ["base"] + _by_iteration(first, "spin"),
        "DPO": ["base", "dpo"] if "dpo" in first else [],
        "SPIN-1 continued": ["spin-1", "spin-1-continued"] if "spin-1-continued" in first else [],
        "SPIN exact": ["base"] + exact if (exact := _by_iteration(first, "spin-exact")) else [],
        **{name: ["base", name] for name in FAMILY if name in first},
    }
    fig, axes = plt.subplots(1, len(METRICS), figsize=(5 * len(METRICS), 3.6))
    for ax, metric in zip(axes, METRICS, strict=True):
        for label, names in groups.items():
            if not names:
                continue
            xs = [examples_seen(cfg, n) for n in names]
            stats = [across_seeds(summaries, n, metric) for n in names]
            ax.errorbar(xs, [m for m, _, _ in stats], yerr=[sd for _, sd, _ in stats], marker="o", capsize=3,
                        label=label, linestyle="--" if "continued" in label else "-")  # fmt: skip
        ax.set_xlabel("training examples seen")
        ax.set_title(metric.replace("toy_", "oracle "))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    save_png(fig, path)


def _by_iteration(names: Any, method: str) -> list[str]:
    """The names of ``method``'s iterations among ``names``, in order of iteration."""
    models = [m for m in map(ModelName.parse, names) if m.method == method and m.iteration is not None]
    return [m.name for m in sorted(models, key=lambda m: m.iteration)]


def reproduce(
    cfg: ReproduceConfig,
    out: Path,
    command: str,
    show_progress: bool = True,
    report: str = "results",
    title: str = REPRODUCTION_TITLE,
) -> dict[str, Any]:
    """Run (or resume) the whole study and write ``{report}.md``, ``{report}.json`` and a plot into ``out``.

    The comparison (``toy compare``) is this study with more methods and ``report="compare"``: in the
    reproduction's directory it reuses every run already trained there and adds only the new ones.
    """
    from spin_diffusion.toy.datasets import eval_prompts

    check_methods(cfg)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    saved = out / "reproduce.json"
    if saved.is_file():
        previous = ReproduceConfig.model_validate_json(saved.read_text())
        _check_compatible(previous, cfg, out)
    write_text_atomic(saved, cfg.model_dump_json(indent=2) + "\n")
    prompts_file = out / "eval_prompts.txt"
    write_text_atomic(prompts_file, "\n".join(eval_prompts(cfg.eval_prompts, seed=0)) + "\n")
    summaries = {seed: run_seed(cfg, seed, out, prompts_file, show_progress) for seed in cfg.seeds}
    text = render_report(cfg, summaries, command, title)
    plot = "curves.png" if report == "results" else f"{report}.png"
    if report == "results":
        plot_curves(cfg, summaries, out / "plots" / plot)
    else:  # a dozen methods at one data budget: where each lands, and who beats whom
        text = text.rstrip("\n") + "\n\n" + "\n".join(win_matrix_lines(cfg, summaries)) + "\n"
        plot_comparison(cfg, summaries, out / "plots" / plot)
    write_text_atomic(out / f"{report}.md", text)
    write_json_atomic(out / f"{report}.json", {"settings": cfg.model_dump(mode="json"), "seeds": summaries})
    return {"report": text, "seeds": summaries, "plot": out / "plots" / plot}


def _check_compatible(previous: ReproduceConfig, current: ReproduceConfig, out: Path) -> None:
    """Seeds and methods may be added; anything that changes what a finished run means may not."""
    from spin_diffusion.errors import ConfigError

    fixed = ("base", "pairs", "guidance_scale", "sample_steps", "opponent_sample_steps", "pair_noise", "batch_size", "warmup_steps", "spin", "spin_exact", "sft", "dpo",
             "family", "eval_prompts", "images_per_prompt", "eval_seed")  # fmt: skip
    changed = [k for k in fixed if getattr(previous, k) != getattr(current, k)]
    if changed:
        raise ConfigError(
            f"{out} holds a study with different {', '.join(changed)}; use another --out directory"
        )
