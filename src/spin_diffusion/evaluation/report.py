"""``results.md``: the paper's tables (mean, median, best-of-N, win rates) from a results dict."""

from __future__ import annotations

from typing import Any

from spin_diffusion.evaluation.aggregate import AVERAGE

CONVENTIONS = {
    "pickscore": "PickScore: logit_scale.exp() x cosine(text, image) (100 x cosine for the release).",
    "hpsv2": "HPSv2: cosine(text, image), not x100.",
    "imagereward": "ImageReward: (MLP(BLIP text-image features) - 0.1672) / 1.0333.",
    "aesthetic": "Aesthetic: LAION predictor on normalised CLIP ViT-L/14 embeddings (1-10 scale).",
    "toy_fidelity": "toy_fidelity: the toy oracle's prompt-fidelity score in [0, 1].",
    "toy_style": "toy_style: the toy oracle's style/cleanliness score in [0, 1].",
}


def _table(
    rows: dict[str, dict[str, float]], columns: list[str], fmt: str, best: str | None = "max"
) -> list[str]:
    """Markdown table, the best value of each column in bold (``best`` None: no bold)."""
    header = ["Model", *(c if c != AVERAGE else "Average" for c in columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    tops: dict[str, float] = {}
    if best and len(rows) > 1:
        for c in columns:
            vals = [r[c] for r in rows.values() if c in r]
            if vals:
                tops[c] = max(vals) if best == "max" else min(vals)
    for name, row in rows.items():
        cells = []
        for c in columns:
            if c not in row:
                cells.append("-")
                continue
            text = format(row[c], fmt)
            cells.append(f"**{text}**" if c in tops and row[c] == tops[c] else text)
        lines.append("| " + " | ".join([name, *cells]) + " |")
    return lines


def render_markdown(results: dict[str, Any]) -> str:
    """The whole report; every number comes from ``results`` (also written as results.json)."""
    metrics: list[str] = results["metrics"]
    kinds: dict[str, str] = results.get("metric_kinds", {})
    cols = [*metrics, AVERAGE]
    s = results["settings"]
    out = [
        "# Evaluation results",
        "",
        f"{results['n_prompts']} prompts x {s['n_images_per_prompt']} images per prompt; image j of every "
        f"prompt uses the same seed for every model (base seed {s['seed']}); {s['num_inference_steps']} "
        f"{s['scheduler']} steps, guidance {s['guidance_scale']}.",
        "",
    ]
    notes = [CONVENTIONS[kinds.get(m, m)] for m in metrics if kinds.get(m, m) in CONVENTIONS]
    if notes:
        out += ["Conventions: " + " ".join(dict.fromkeys(notes)), ""]
    out += ["Average = plain mean of the metric columns (as in the paper's tables).", ""]
    out += ["## Mean scores (all images)", "", *_table(results["mean"], cols, ".4f"), ""]
    out += ["## Median scores (all images)", "", *_table(results["median"], cols, ".4f"), ""]
    rules = {
        "max": "per metric, the best of the N images of each prompt",
        "zscore": "one image per prompt: highest mean of standardised metrics",
        "mean": "one image per prompt: highest raw mean of the metrics (the paper's rule)",
    }
    for rule, rows in results.get("best_of_n", {}).items():
        out += [f"## Best-of-{s['n_images_per_prompt']} ({rule}: {rules.get(rule, rule)})", ""]
        out += [*_table(rows, cols, ".4f"), ""]
    wr = results.get("win_rate", {})
    baseline = results.get("baseline")
    unit = s.get("win_rate_unit", "prompt")
    unit_text = "per-prompt means of the N images" if unit == "prompt" else "images with the same seed"
    if baseline and wr:
        rows = {m: {k: 100 * v for k, v in wr[m][baseline].items()} for m in wr if baseline in wr[m]}
        if rows:
            out += [f"## Win rate over {baseline} (%)", ""]
            out += [
                f"Compares {unit_text}; a tie counts one half; Average compares the mean of standardised "
                "metrics.",
                "",
            ]
            out += [*_table(rows, cols, ".1f"), ""]
    models = list(results["mean"])
    if wr and len(models) > 1:
        out += ["## Pairwise win rate on the average (%, row over column)", ""]
        out += ["| Model | " + " | ".join(models) + " |", "|" + "---|" * (len(models) + 1)]
        for a in models:
            cells = [
                "-" if a == b or b not in wr.get(a, {}) else f"{100 * wr[a][b][AVERAGE]:.1f}" for b in models
            ]
            out.append("| " + " | ".join([a, *cells]) + " |")
        out.append("")
    dist = results.get("distribution")
    if dist:
        d_cols = ["fid", "kid_mean", "kid_std"]
        rows = {m: {c: v for c, v in dist[m].items() if c in d_cols} for m in dist}
        out += [
            f"## Distribution metrics against {results.get('distribution_reference', 'the reference')}",
            "",
        ]
        out += ["Lower is better; features: " + str(results.get("distribution_feature", "")), ""]
        out += [*_table(rows, d_cols, ".4f", best="min"), ""]
    toy = results.get("toy_set_metrics")
    if toy:
        t_cols = list(dict.fromkeys(k for row in toy.values() for k in row))
        out += ["## Toy oracle set metrics", ""]
        out += [
            "open_tv_*: distance of unprompted attributes from the data's (lower is better); diversity_*: higher; "
            "attr_*: share of the oracle's checks of that kind passed; objects_found_per_asked: objects "
            "detected / prompted; empty_share: images with no object found.",
            "",
        ]
        out += [*_table(toy, t_cols, ".4f", best=None), ""]
    artefacts = results.get("artefacts", {})
    if artefacts:
        out += ["## Files", ""]
        out += [f"- {k}: `{v}`" for k, v in artefacts.items()]
        out.append("")
    return "\n".join(out)
