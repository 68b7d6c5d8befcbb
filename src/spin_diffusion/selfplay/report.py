"""``results.md`` of a run: training diagnostics per iteration, then the evaluation harness's tables."""

from __future__ import annotations

from typing import Any

from spin_diffusion.infra.atomic import write_json_atomic, write_text_atomic
from spin_diffusion.infra.run_layout import RunLayout


def render_results_md(results: dict[str, Any], evaluation_md: str | None = None) -> str:
    """Training diagnostics per iteration, followed by the evaluation harness's tables when there are any."""
    lines = [f"# {results['name']} ({results['method']})", ""]
    lines += [
        "| iteration | steps | ended by | loss | implicit acc | d_real / d_win | d_gen / d_lose |",
        "|---|---|---|---|---|---|---|",
    ]
    for it in results["iterations"]:
        m = it.get("final_metrics", {})
        d_a = m.get("d_real", m.get("d_win"))
        d_b = m.get("d_gen", m.get("d_lose"))
        lines.append(
            f"| {it['iteration']} | {it['steps']} | {(it.get('ended') or {}).get('reason', '-')} "
            f"| {_fmt(m.get('loss'))} | {_fmt(m.get('implicit_acc'))} "
            f"| {_fmt(d_a)} | {_fmt(d_b)} |"
        )
    if evaluation_md:
        lines += ["", "## Evaluation", "", evaluation_md.strip()]
    return "\n".join(lines) + "\n"


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.4g}"


def write_results(layout: RunLayout, results: dict[str, Any], evaluated: bool) -> None:
    """``results.json`` and ``results.md``, the latter with the evaluation's tables when it ran."""
    write_json_atomic(layout.results_json, results)
    eval_md = layout.eval / "results.md"
    write_text_atomic(
        layout.results_md,
        render_results_md(results, eval_md.read_text() if evaluated and eval_md.is_file() else None),
    )
