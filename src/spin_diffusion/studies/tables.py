"""The cross-seed numbers, tables and figures of the toy studies, shared by the reproduction, the comparison and Figure 5."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from spin_diffusion.studies.model_names import ModelName, sft_step
from spin_diffusion.studies.settings import FAMILY, ReproduceConfig
from spin_diffusion.toy.diagnostics import BREAKDOWN_COLUMNS, breakdown_cells


def across_seeds(summaries: dict[int, dict[str, Any]], name: str, key: str) -> tuple[float, float, int]:
    """Mean, sample standard deviation and count of one number over seeds (nan when absent).

    ``sft-best`` stands for each seed's own best SFT checkpoint.
    """
    vals = []
    for s in summaries.values():
        model = seed_model(s, name)
        v = s["models"].get(model, {}).get(key) if model else None
        if v is not None:
            vals.append(float(v))
    return mean_sd(vals)


def seed_model(summary: dict[str, Any], name: str) -> str | None:
    """The model of one seed a table row stands for: ``sft-best`` is that seed's best SFT checkpoint."""
    return summary["sft_best"] if name == "sft-best" else name


def mean_sd(vals: list[float]) -> tuple[float, float, int]:
    """Mean, sample standard deviation and count (nan, nan, 0 for none; sd 0 for one value)."""
    if not vals:
        return float("nan"), float("nan"), 0
    mean = sum(vals) / len(vals)
    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return mean, sd, len(vals)


def table_names(cfg: ReproduceConfig, summaries: dict[int, dict[str, Any]]) -> list[str]:
    first = next(iter(summaries.values()))
    names = ["base"]
    if first["sft_best"]:
        names.append("sft-best")
    trained = ("dpo", *FAMILY, "spin", "spin-exact", "spin-continued")
    names += [n for n in first["models"] if ModelName.parse(n).method in trained]
    return names


def _cell(m: float, sd: float, n: int, digits: int = 3, pct: bool = False) -> str:
    if n == 0 or math.isnan(m):
        return "-"
    scale = 100.0 if pct else 1.0
    unit = "%" if pct else ""
    body = f"{m * scale:.{1 if pct else digits}f}{unit}"
    return body if n == 1 else f"{body} ± {sd * scale:.{1 if pct else digits}f}"


def results_table(
    cfg: ReproduceConfig, summaries: dict[int, dict[str, Any]], extra_rows: list[str] | None = None
) -> list[str]:
    """The Table-1-like markdown table over seeds (``extra_rows`` go right under the header)."""
    lines = [
        "| model | examples | fidelity | style | fidelity SE | open TV | diversity | best-of-N fidelity "
        "| win vs base | win vs SFT-best | win vs DPO |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *(extra_rows or []),
    ]
    for name in table_names(cfg, summaries):

        def c(key: str, pct: bool = False, name: str = name) -> str:
            return _cell(*across_seeds(summaries, name, key), pct=pct)

        ex = across_seeds(summaries, name, "examples")[0]
        se = across_seeds(summaries, name, "toy_fidelity_se")[0]
        lines.append(
            f"| {name} | {int(ex) if not math.isnan(ex) else '-'} | {c('toy_fidelity')} | {c('toy_style')} "
            f"| {se:.3f} | {c('open_tv')} | {c('diversity')} | {c('best_of_n_fidelity')} "
            f"| {c('win_vs_base', True)} | {c('win_vs_sft_best', True)} | {c('win_vs_dpo', True)} |"
        )
    return lines


REPRODUCTION_TITLE = "Toy-world reproduction of SPIN-Diffusion's Table 1 and Figure 5"
COMPARISON_TITLE = "Toy-world method comparison: SFT, DPO, SPIN and the Diffusion-DPO family"


def attribute_table(cfg: ReproduceConfig, summaries: dict[int, dict[str, Any]]) -> list[str]:
    """Where each model's fidelity goes: the oracle's checks by attribute, mean over seeds."""
    lines = [
        "| model | " + " | ".join(BREAKDOWN_COLUMNS.values()) + " |",
        "|---|" + "---|" * len(BREAKDOWN_COLUMNS),
    ]
    for name in table_names(cfg, summaries):
        means = {k: across_seeds(summaries, name, k)[0] for k in BREAKDOWN_COLUMNS}
        lines.append(f"| {name} | " + " | ".join(breakdown_cells(means)) + " |")
    return lines


def _mean_cell(rows: list[dict[str, float]], key: str) -> str:
    vals = [r[key] for r in rows if key in r]
    return f"{sum(vals) / len(vals):.4g}" if vals else "-"


def render_report(
    cfg: ReproduceConfig, summaries: dict[int, dict[str, Any]], command: str, title: str = REPRODUCTION_TITLE
) -> str:
    """results.md of the study: the cross-seed table, the SFT curve, the drift and what it took."""
    seeds = sorted(summaries)
    lines = [
        f"# {title}",
        "",
        f"Command: `{command}`",
        "",
        f"Seeds {', '.join(map(str, seeds))}; {cfg.pairs} curated pairs per seed (one image per prompt); "
        f"{cfg.eval_prompts} held-out prompts x {cfg.images_per_prompt} images, judged by the oracle. "
        "Cells are mean ± standard deviation over seeds. `fidelity SE` is the mean over seeds of the "
        "evaluation's own standard error of the mean fidelity (from per-prompt means, within one seed). "
        "Win rates compare per-prompt mean scores on the average of the standardised oracle metrics "
        "(ties count one half).",
        "",
        *results_table(cfg, summaries),
    ]
    best = {s: summaries[s]["sft_best"] for s in seeds}
    lines += ["", f"SFT-best is the SFT checkpoint with the highest average score in each seed: {best}.", ""]
    lines += [
        "## Prompt fidelity by attribute (oracle checks, mean over seeds)",
        "",
        "The share of the oracle's checks of each kind that pass (count: the image has the asked number "
        "of objects; the others over every prompted object), objects found per object asked, and the "
        "share of images in which no object is found.",
        "",
        *attribute_table(cfg, summaries),
        "",
    ]
    sft_steps = sorted(
        {sft_step(n) for s in summaries.values() for n in s["models"] if sft_step(n) is not None}
    )
    if sft_steps:
        lines += [
            "## SFT curve (held-out, mean over seeds)",
            "",
            "| SFT step | examples | fidelity | style |",
            "|---|---|---|---|",
        ]
        for step in sft_steps:
            n = ModelName("sft", step=step).name
            lines.append(
                f"| {step} | {step * cfg.batch_size} | {_cell(*across_seeds(summaries, n, 'toy_fidelity'))} "
                f"| {_cell(*across_seeds(summaries, n, 'toy_style'))} |"
            )
        lines.append("")
    drift_keys = ("loss", "implicit_acc", "model_err_real", "ref_err_real", "model_err_gen", "ref_err_gen")
    lines += [
        "## Self-play drift per iteration (last quarter of each iteration's steps, mean over seeds)",
        "",
        "`model_err_real - ref_err_real` < 0 means the model got better at denoising the real data than its "
        "opponent; > 0 means it won the game by getting worse on the opponent's samples instead.",
        "",
        "| iteration | steps (mean) | ended early (share of seeds) | " + " | ".join(drift_keys) + " |",
        "|---|---|---|" + "---|" * len(drift_keys),
    ]
    for k in range(1, len(cfg.spin.iterations) + 1):
        vals = [s["drift"].get(ModelName("spin", iteration=k).name) for s in summaries.values()]
        vals = [v for v in vals if v]
        if not vals:
            continue
        cells = [_mean_cell(vals, key) for key in ("steps", "ended_early", *drift_keys)]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    timings = {s: summaries[s]["seconds"] for s in seeds if "seconds" in summaries[s]}
    if timings:
        from spin_diffusion.studies.timing import time_split_lines

        lines += [
            "## Where the time went (wall seconds summed over seeds, from the runs' records)",
            "",
            *time_split_lines(timings),
            "",
        ]
    lines += ["", "Settings (`reproduce.json`):", "", "```json", cfg.model_dump_json(indent=2), "```", ""]
    return "\n".join(lines)


def save_png(fig: Any, path: Path) -> None:
    """Write a study's matplotlib figure atomically as a 110-dpi PNG and release it."""
    import matplotlib.pyplot as plt

    from spin_diffusion.infra.atomic import atomic_file

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
