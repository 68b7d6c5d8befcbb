"""The parts of ``toy compare``'s report that the reproduction's does not have.

With a dozen methods at the same data budget, a curve against examples seen piles every preference
method onto one x value; what a reader needs instead is where each method lands on the two oracle
metrics and how often each beats each other, both over seeds.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from spin_diffusion.studies.settings import METRICS, ReproduceConfig
from spin_diffusion.studies.tables import across_seeds, mean_sd, save_png, seed_model, table_names


def pairwise_win(summaries: dict[int, dict[str, Any]], row: str, col: str) -> tuple[float, float, int]:
    """Mean, sample sd and count over seeds of ``row``'s win rate against ``col`` (nan when absent)."""
    vals = []
    for s in summaries.values():
        a, b = seed_model(s, row), seed_model(s, col)
        v = s["models"].get(a, {}).get("wins", {}).get(b) if a and b else None
        if v is not None:
            vals.append(float(v))
    return mean_sd(vals)


def win_matrix_lines(cfg: ReproduceConfig, summaries: dict[int, dict[str, Any]]) -> list[str]:
    """Markdown: every table model's win rate against every other, mean over seeds, and the spread."""
    names = table_names(cfg, summaries)
    lines = [
        "## Win rates between methods (row beats column, mean over seeds)",
        "",
        "Share of held-out prompts on which the row model's standardised average of the two oracle "
        "metrics is higher than the column model's (ties count one half), from the same evaluation.",
        "",
        "| row beats column | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    sds = []
    for row in names:
        cells = []
        for col in names:
            if row == col:
                cells.append("-")
                continue
            mean, sd, n = pairwise_win(summaries, row, col)
            cells.append("-" if n == 0 else f"{100 * mean:.0f}%")
            if n > 1:
                sds.append(sd)
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    if sds:
        sds.sort()
        lines += [
            "",
            f"Spread over seeds (sample sd of one cell): median {100 * sds[len(sds) // 2]:.1f} points, "
            f"largest {100 * sds[-1]:.1f}.",
        ]
    return lines


def plot_comparison(cfg: ReproduceConfig, summaries: dict[int, dict[str, Any]], path: Path) -> None:
    """Style against fidelity per method, and each method's win rate against the base, over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = table_names(cfg, summaries)
    fig, (scatter, bars) = plt.subplots(1, 2, figsize=(12, 4.6))
    for name in names:
        (fm, fsd, _), (sm, ssd, _) = (across_seeds(summaries, name, m) for m in METRICS)
        if math.isnan(fm) or math.isnan(sm):
            continue
        scatter.errorbar(sm, fm, xerr=ssd, yerr=fsd, marker="o", capsize=3)
        scatter.annotate(name, (sm, fm), textcoords="offset points", xytext=(4, 4), fontsize=8)
    scatter.set_xlabel("oracle style (mean ± sd over seeds)")
    scatter.set_ylabel("oracle fidelity")
    scatter.grid(alpha=0.3)
    rows = [(n, *across_seeds(summaries, n, "win_vs_base")) for n in names if n != "base"]
    rows = [r for r in rows if r[3] > 0]
    bars.barh([r[0] for r in rows], [100 * r[1] for r in rows], xerr=[100 * r[2] for r in rows], capsize=3)
    bars.axvline(50, color="grey", linewidth=0.8)
    bars.invert_yaxis()
    bars.set_xlabel("win rate against the base, % of held-out prompts")
    bars.grid(alpha=0.3, axis="x")
    fig.suptitle(f"Seeds {', '.join(map(str, sorted(summaries)))}, {cfg.pairs} pairs each", fontsize=10)
    fig.tight_layout()
    save_png(fig, path)
