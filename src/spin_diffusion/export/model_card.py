"""The README.md of an exported model: what it was trained from, how, on what, and how it scored.

A pure function of what the run directory records (its config, each
``iteration.json``, the evaluation report), so the card says exactly what the
run did and nothing that was not measured.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from spin_diffusion.config.run import SELF_PLAY_METHODS, RunConfig
from spin_diffusion.infra.run_layout import iteration_name
from spin_diffusion.model.loading import looks_like_local_path

METHODS = {
    "spin": "SPIN-Diffusion self-play: in iteration k the model is trained to tell the real images from the "
    "samples of iteration k-1's model, with iteration k-1's model as the reference",
    "spin-exact": "SPIN-Diffusion self-play with the exact trajectory objective (paper eq. 4.8): in iteration k "
    "the model is trained to tell the real images' forward trajectories from the sampling trajectories of "
    "iteration k-1's model, with iteration k-1's model as the reference",
    "sft": "supervised fine-tuning on the real images (the denoising loss)",
    "dpo": "Diffusion-DPO on preference pairs, with the base model as the reference",
}
PAIRWISE_FAMILY = "the {method} objective of the Diffusion-DPO family on preference pairs (docs/methods.md)"


def method_description(method: str) -> str:
    """One phrase per method; the Diffusion-DPO family members share one."""
    return METHODS.get(method, PAIRWISE_FAMILY.format(method=method))


@dataclass
class CardInputs:
    """What the card is made from (read from the run directory by the exporter)."""

    cfg: RunConfig
    iteration: int
    iterations: list[dict[str, Any]]  # each finished iteration's iteration.json
    evaluation_md: str | None = None  # runs/NAME/eval/results.md, when the run was evaluated
    has_grid: bool = False
    lora_file: str | None = None  # path of the adapter inside the export, when there is one
    notes: list[str] = field(default_factory=list)


def _front_matter(inp: CardInputs) -> list[str]:

    cfg = inp.cfg
    tags = ["text-to-image", "diffusers", "spin-diffusion", cfg.method] + (["lora"] if inp.lora_file else [])
    lines = ["---", "library_name: diffusers", "pipeline_tag: text-to-image"]
    if not looks_like_local_path(cfg.model.pretrained):  # the hub validates base_model as a repo id
        lines.append(f"base_model: {cfg.model.pretrained}")
    lines += ["tags:", *(f"- {t}" for t in tags), "---", ""]
    return lines


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _iteration_table(inp: CardInputs) -> list[str]:
    lines = [
        "| iteration | steps | beta | learning rate | warm-up | schedule | global batch | mixed precision "
        "| samples per prompt | final loss | implicit acc |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for it in inp.iterations:
        k, t, m = it["iteration"], it.get("training", {}), it.get("final_metrics", {})
        samples = (
            inp.cfg.sampling_for(k).num_samples_per_prompt if inp.cfg.method in SELF_PLAY_METHODS else None
        )
        label = f"**{k}** (exported)" if k == inp.iteration else str(k)
        cells = [
            label,
            it.get("steps"),
            t.get("beta") if inp.cfg.method != "sft" else None,
            t.get("learning_rate"),
            t.get("warmup_steps"),
            t.get("lr_scheduler"),
            it.get("global_batch"),
            t.get("mixed_precision"),
            samples,
            m.get("loss"),
            m.get("implicit_acc"),
        ]
        lines.append("| " + " | ".join(_fmt(c) for c in cells) + " |")
    return lines


def _demote(markdown: str) -> list[str]:
    """The evaluation report under this card's own section: headings one level down, no title, and
    no list of the evaluation directory's files (they are not part of the export)."""
    out: list[str] = []
    skipping = False
    for line in markdown.strip().splitlines():
        if line.startswith("# "):
            continue
        if line.startswith("## "):
            skipping = line.strip() == "## Files"
        if not skipping:
            out.append("#" + line if line.startswith("#") else line)
    while out and not out[0].strip():
        out.pop(0)
    while out and not out[-1].strip():
        out.pop()
    return out


def render_model_card(inp: CardInputs) -> str:
    """The model card (README.md with hub front matter) of one exported iteration."""
    cfg = inp.cfg
    lora = cfg.model.lora
    data = cfg.data
    total = len(cfg.iterations)
    lines = _front_matter(inp)
    lines += [
        f"# {cfg.name}: iteration {inp.iteration} of {total} ({cfg.method})",
        "",
        f"A text-to-image model fine-tuned from `{cfg.model.pretrained}`"
        + (f" (revision `{cfg.model.revision}`)" if cfg.model.revision else "")
        + f" with spin-diffusion by {method_description(cfg.method)}.",
        "",
        "## Use",
        "",
        "```python",
        "from diffusers import DiffusionPipeline",
        "",
        'pipe = DiffusionPipeline.from_pretrained("PATH_OR_REPO_OF_THIS_MODEL")',
        "```",
        "",
        "This directory is a complete diffusers pipeline (the fine-tuned UNet"
        + (" with the LoRA fused in" if lora.enabled else "")
        + "; the other components are the base model's).",
    ]
    if inp.lora_file:
        lines += [
            f"`{inp.lora_file}` is the same change as one LoRA adapter relative to the base model "
            f"(every iteration up to {inp.iteration} in one file): "
            f'`DiffusionPipeline.from_pretrained("{cfg.model.pretrained}")` followed by '
            f'`pipe.load_lora_weights("PATH/{inp.lora_file.rsplit("/", 1)[0]}")` gives this model.',
        ]
    lines += [
        "",
        "## Training",
        "",
        f"- Base model: `{cfg.model.pretrained}`",
        f"- Method: {cfg.method} ({total} iteration{'s' if total > 1 else ''}; this is iteration {inp.iteration})",
        "- Weights: "
        + (
            f"LoRA rank {lora.rank}, alpha {lora.alpha}, on {', '.join(lora.target_modules)}"
            if lora.enabled
            else "full fine-tune of the UNet"
        ),
        f"- Data: {data.source} `{data.path}`, resolution {data.resolution}",
        f"- Seed: {cfg.seed}; objective {cfg.training.loss_type}"
        + (f", EMA {cfg.training.ema_decay}" if cfg.training.use_ema else ""),
        "",
        "### Per-iteration settings",
        "",
        *_iteration_table(inp),
        "",
        "The full resolved configuration is `spin_diffusion_config.yaml` next to this file.",
        "",
        "## Evaluation",
        "",
    ]
    if inp.evaluation_md:
        lines += [
            f"This model is `{iteration_name(inp.iteration)}` in the tables; `base` is `{cfg.model.pretrained}`.",
            "",
        ]
        lines += _demote(inp.evaluation_md)
    else:
        lines.append("The run was not evaluated (its config has no `evaluation` block).")
    if inp.has_grid:
        lines += ["", "![samples of every model, same prompts and seeds](grid.png)"]
    if inp.notes:
        lines += ["", "## Notes", "", *(f"- {n}" for n in inp.notes)]
    return "\n".join(lines) + "\n"
