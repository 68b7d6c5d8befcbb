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
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from spin_diffusion.infra.atomic import write_json_atomic, write_text_atomic


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SpinIteration(_Strict):
    beta: float = Field(gt=0)
    learning_rate: float = Field(gt=0)
    max_steps: int = Field(ge=1)


class SpinSettings(_Strict):
    iterations: list[SpinIteration] = Field(
        default_factory=lambda: [
            # chosen on tuning seed 0 (docs/results.md); the last iteration steps the learning rate
            # down, as the paper's iteration 3 does (5e-8 after 2e-5)
            SpinIteration(beta=200.0, learning_rate=1e-5, max_steps=120),
            SpinIteration(beta=500.0, learning_rate=1e-5, max_steps=120),
            SpinIteration(beta=500.0, learning_rate=1e-5, max_steps=120),
            SpinIteration(beta=500.0, learning_rate=3e-6, max_steps=120),
        ],
        min_length=1,
    )
    # raw: on the tuning seed it gave clearly better style than re-encoded samples (docs/results.md)
    latents: Literal["reencoded", "raw"] = "raw"
    loss_type: Literal["logistic", "hinge", "correlation"] = "logistic"
    num_samples_per_prompt: int = Field(1, ge=1)
    lora_rank: int | None = Field(None, ge=1, description="LoRA of this rank instead of full fine-tuning")


class SpinExactSettings(_Strict):
    """The exact objective (eq. 4.8) on the same data: fewer iterations, as a step costs ~16-25x more."""

    iterations: list[SpinIteration] = Field(
        default_factory=lambda: [
            SpinIteration(beta=200.0, learning_rate=1e-5, max_steps=120),
            SpinIteration(beta=500.0, learning_rate=1e-5, max_steps=120),
        ],
        min_length=1,
        description="SPIN's first iterations (the approximate objective's chosen settings, not re-tuned)",
    )
    trajectory_grad_steps: int | None = Field(8, ge=1, description="unbiased subset of the 20 solver steps")
    trajectory_chunk_size: int = Field(32, ge=1)


class SftSettings(_Strict):
    learning_rate: float = Field(3e-4, gt=0, description="the best of 1e-4, 3e-4, 1e-3 on the tuning seed")
    max_steps: int = Field(600, ge=1)
    eval_every: int = Field(150, ge=1, description="a model is saved and judged every N steps")


class DpoSettings(_Strict):
    beta: float = Field(2500.0, gt=0)
    learning_rate: float = Field(1e-5, gt=0)
    max_steps: int = Field(240, ge=1)


class FamilyRun(_Strict):
    """One Diffusion-DPO-family method's toy run: trained once on the study's preference pairs."""

    beta: float = Field(gt=0, description="on our scale (no factor 1/2)")
    learning_rate: float = Field(gt=0)
    max_steps: int = Field(ge=1)
    training: dict[str, Any] = Field(
        default_factory=dict, description="the method's own training.* block, e.g. {'dmpo': {'alpha': 0.01}}"
    )


def family_defaults() -> dict[str, FamilyRun]:
    """The toy settings of every Diffusion-DPO-family method, in one place (docs/results.md, docs/methods.md).

    Learning rate and steps are the toy DPO's (1e-5, 240 steps of 16 pairs): every preference method
    sees the same data budget. beta is each paper's (or official code's) default converted to our
    scale; settings a paper does not give are ours and say so in docs/methods.md. None was tuned.
    """
    dpo_like = {"learning_rate": 1e-5, "max_steps": 240}
    return {
        "dmpo": FamilyRun(beta=1000.0, training={"dmpo": {"alpha": 0.01}}, **dpo_like),  # code: 2000 x 0.5
        "see-dpo": FamilyRun(beta=2500.0, training={"see_dpo": {"entropy_ratio": 0.1}}, **dpo_like),
        "adaptive-dpo": FamilyRun(beta=2500.0, training={"adaptive_dpo": {"margin": 1.0}}, **dpo_like),
        "kto": FamilyRun(
            beta=1000.0, training={"kto": {"lambda_desirable": 1.0, "lambda_undesirable": 1.0}}, **dpo_like
        ),  # fmt: skip
        "inversion-dpo": FamilyRun(
            beta=2500.0, training={"inversion": {"steps": 10}}, **dpo_like
        ),  # 5000 x 0.5
    }


FAMILY = ("dmpo", "see-dpo", "adaptive-dpo", "kto", "inversion-dpo")
Method = Literal[
    "sft",
    "dpo",
    "spin",
    "spin-continued",
    "spin-exact",
    "dmpo",
    "see-dpo",
    "adaptive-dpo",
    "kto",
    "inversion-dpo",
]
REPRODUCTION_METHODS: list[str] = ["sft", "dpo", "spin", "spin-continued"]
ALL_METHODS: list[str] = [*REPRODUCTION_METHODS, "spin-exact", *FAMILY]


class ReproduceConfig(_Strict):
    """Everything the study depends on; saved as ``reproduce.json`` in its directory."""

    seeds: list[int] = Field(default_factory=lambda: [1, 2, 3], min_length=1)
    pairs: int = Field(2000, ge=16, description="curated (prompt, image) pairs, one image per prompt")
    methods: list[Method] = Field(default_factory=lambda: list(REPRODUCTION_METHODS))
    eval_prompts: int = Field(200, ge=1, description="held-out prompts (eval_prompts stream, seed 0)")
    images_per_prompt: int = Field(2, ge=1)
    eval_seed: int = 0
    guidance_scale: float = Field(3.0, ge=0, description="for opponent sampling and evaluation")
    sample_steps: int = Field(20, ge=1)
    batch_size: int = Field(16, ge=1, description="examples (pairs for DPO/SPIN) per optimizer step")
    warmup_steps: int = Field(5, ge=0)
    spin: SpinSettings = Field(default_factory=SpinSettings)
    spin_exact: SpinExactSettings = Field(default_factory=SpinExactSettings)
    sft: SftSettings = Field(default_factory=SftSettings)
    dpo: DpoSettings = Field(default_factory=DpoSettings)
    family: dict[str, FamilyRun] = Field(default_factory=family_defaults)

    @model_validator(mode="after")
    def _family_complete(self) -> ReproduceConfig:
        missing = [m for m in self.methods if m in FAMILY and m not in self.family]
        if missing:
            raise ValueError(f"family has no settings for {', '.join(missing)}")
        return self


METRICS = ("toy_fidelity", "toy_style")


# --------------------------------------------------------------------------- run configs


def _common(cfg: ReproduceConfig, seed: int, out: Path, name: str, method: str, data: dict) -> dict[str, Any]:
    from spin_diffusion.toy import base_model_path

    return {
        "name": name,
        "output_dir": str(out),
        "method": method,
        "seed": seed,
        "model": {"pretrained": str(base_model_path())},
        "data": data,
        "sampling": {
            "num_inference_steps": cfg.sample_steps,
            "guidance_scale": cfg.guidance_scale,
            "batch_size": 128,
            "shard_size": 512,
            "num_previews": 16,
            "latents": cfg.spin.latents,
            "num_samples_per_prompt": cfg.spin.num_samples_per_prompt,
        },
        "training": {
            "batch_size": cfg.batch_size,
            "warmup_steps": cfg.warmup_steps,
            # constant after warm-up: "iteration 1 continued" is then exactly iteration 1, run longer
            "lr_scheduler": "constant",
            "checkpointing_steps": 50,
            "loss_type": cfg.spin.loss_type,
            "trackers": [],
        },
    }


def run_configs(cfg: ReproduceConfig, seed: int, seed_dir: Path) -> dict[str, dict[str, Any]]:
    """The run configs of one seed, by method (plain dicts, validated by the caller)."""
    curated = {"source": "imagefolder", "path": str(seed_dir / "data" / "curated"), "resolution": 32}
    prefs = {"source": "pickapic", "path": str(seed_dir / "data" / "preferences.parquet"), "resolution": 32}
    runs: dict[str, dict[str, Any]] = {}
    spin_iters = [it.model_dump() for it in cfg.spin.iterations]
    if "spin" in cfg.methods:
        c = _common(cfg, seed, seed_dir, "spin", "spin", curated)
        c["iterations"] = spin_iters
        _lora(c, cfg)
        runs["spin"] = c
    if "spin-continued" in cfg.methods and len(spin_iters) >= 2:
        c = _common(cfg, seed, seed_dir, "spin-continued", "spin", curated)
        first = dict(spin_iters[0])
        first["max_steps"] = spin_iters[0]["max_steps"] + spin_iters[1]["max_steps"]
        c["iterations"] = [first]
        _lora(c, cfg)
        runs["spin-continued"] = c
    if "spin-exact" in cfg.methods:
        c = _common(cfg, seed, seed_dir, "spin-exact", "spin-exact", curated)
        c["iterations"] = [it.model_dump() for it in cfg.spin_exact.iterations]
        c["training"].update(
            trajectory_grad_steps=cfg.spin_exact.trajectory_grad_steps,
            trajectory_chunk_size=cfg.spin_exact.trajectory_chunk_size,
        )
        _lora(c, cfg)
        runs["spin-exact"] = c
    if "sft" in cfg.methods:
        c = _common(cfg, seed, seed_dir, "sft", "sft", curated)
        c["training"].update(learning_rate=cfg.sft.learning_rate, save_model_every=cfg.sft.eval_every)
        c["iterations"] = [{"max_steps": cfg.sft.max_steps}]
        runs["sft"] = c
    if "dpo" in cfg.methods:
        c = _common(cfg, seed, seed_dir, "dpo", "dpo", prefs)
        c["training"].update(learning_rate=cfg.dpo.learning_rate, beta=cfg.dpo.beta)
        c["iterations"] = [{"max_steps": cfg.dpo.max_steps}]
        runs["dpo"] = c
    for name in (m for m in FAMILY if m in cfg.methods):
        fam = cfg.family[name]
        c = _common(cfg, seed, seed_dir, name, name, prefs)
        c["training"].update(learning_rate=fam.learning_rate, beta=fam.beta, **fam.training)
        c["iterations"] = [{"max_steps": fam.max_steps}]
        runs[name] = c
    return runs


def _lora(run: dict[str, Any], cfg: ReproduceConfig) -> None:
    if cfg.spin.lora_rank is not None:
        run["model"]["lora"] = {"enabled": True, "rank": cfg.spin.lora_rank, "alpha": cfg.spin.lora_rank}


def evaluation_config(cfg: ReproduceConfig, prompts_file: Path) -> dict[str, Any]:
    return {
        "prompts": {"kind": "text", "path": str(prompts_file)},
        "n_images_per_prompt": cfg.images_per_prompt,
        "seed": cfg.eval_seed,
        "scorers": [{"kind": "toy_fidelity"}, {"kind": "toy_style"}],
        "num_inference_steps": cfg.sample_steps,
        "guidance_scale": cfg.guidance_scale,
        "batch_size": 128,
        "grid_prompts": 8,
    }


# --------------------------------------------------------------------------- one seed


def prepare_data(cfg: ReproduceConfig, seed: int, seed_dir: Path) -> None:
    """The seed's curated imagefolder and, for DPO, preference pairs for exactly those prompts."""
    from spin_diffusion.toy.datasets import write_imagefolder
    from spin_diffusion.toy.preferences import write_preference_parquet

    data = seed_dir / "data"
    if not (data / "curated" / "metadata.jsonl").is_file():
        write_imagefolder(data / "curated", cfg.pairs, seed, "curated", 32, overwrite=True)
    wants_pairs = any(m == "dpo" or m in FAMILY for m in cfg.methods)
    if wants_pairs and not (data / "preferences.parquet").is_file():
        write_preference_parquet(data / "preferences.parquet", cfg.pairs, seed, 32, matched=True)


def models_of(cfg: ReproduceConfig, seed_dir: Path) -> dict[str, dict[str, Any]]:
    """Every model of a seed to judge: name -> evaluation entry, with its training-examples count."""
    from spin_diffusion.toy import base_model_path

    base = str(base_model_path())
    models: dict[str, dict[str, Any]] = {"base": {"path": base}}
    if "sft" in cfg.methods:
        for step in range(cfg.sft.eval_every, cfg.sft.max_steps, cfg.sft.eval_every):
            models[f"sft-{step}"] = {
                "path": base,
                "trained": str(seed_dir / "sft/iter-1/snapshots" / f"step-{step}"),
            }
        models[f"sft-{cfg.sft.max_steps}"] = {"path": base, "trained": str(seed_dir / "sft/iter-1/model")}
    if "dpo" in cfg.methods:
        models["dpo"] = {"path": base, "trained": str(seed_dir / "dpo/iter-1/model")}
    for name in (m for m in FAMILY if m in cfg.methods):
        models[name] = {"path": base, "trained": str(seed_dir / name / "iter-1" / "model")}
    if "spin" in cfg.methods:
        for k in range(1, len(cfg.spin.iterations) + 1):
            models[f"spin-{k}"] = {"path": base, "trained": str(seed_dir / f"spin/iter-{k}/model")}
    if "spin-exact" in cfg.methods:
        for k in range(1, len(cfg.spin_exact.iterations) + 1):
            models[f"spin-exact-{k}"] = {
                "path": base,
                "trained": str(seed_dir / f"spin-exact/iter-{k}/model"),
            }
    if "spin-continued" in cfg.methods and len(cfg.spin.iterations) >= 2:
        models["spin-1-continued"] = {"path": base, "trained": str(seed_dir / "spin-continued/iter-1/model")}
    return models


def sft_step(name: str) -> int | None:
    """The step of an SFT checkpoint's model name (``sft-200``), None for other models."""
    return int(name[4:]) if name.startswith("sft-") and name[4:].isdigit() else None


def examples_seen(cfg: ReproduceConfig, name: str) -> int:
    """Real training examples a model has consumed (steps x batch), the x axis of the curves."""
    if name == "base":
        return 0
    if sft_step(name) is not None:
        return sft_step(name) * cfg.batch_size
    if name == "dpo":
        return cfg.dpo.max_steps * cfg.batch_size
    if name in FAMILY:
        return cfg.family[name].max_steps * cfg.batch_size
    if name.startswith("spin-exact-"):
        k = int(name.rsplit("-", 1)[1])
        return sum(it.max_steps for it in cfg.spin_exact.iterations[:k]) * cfg.batch_size
    its = cfg.spin.iterations
    if name == "spin-1-continued":
        return (its[0].max_steps + its[1].max_steps) * cfg.batch_size
    k = int(name.split("-")[1])
    return sum(it.max_steps for it in its[:k]) * cfg.batch_size


def run_seed(cfg: ReproduceConfig, seed: int, out: Path, prompts_file: Path, show_progress: bool) -> dict:
    """Train every method of one seed (resuming), then judge all its models together."""
    from spin_diffusion.config.evaluation import EvaluationConfig
    from spin_diffusion.config.run import validate_config
    from spin_diffusion.evaluation.runner import evaluate_models
    from spin_diffusion.selfplay.driver import run

    seed_dir = out / f"seed-{seed}"
    prepare_data(cfg, seed, seed_dir)
    for method, raw in run_configs(cfg, seed, seed_dir).items():
        print(f"[seed {seed}] {method}", flush=True)
        run(validate_config(raw, f"reproduce seed {seed} {method}"), show_progress=show_progress)
    models = models_of(cfg, seed_dir)
    print(f"[seed {seed}] evaluating {len(models)} models", flush=True)
    evaluation = evaluate_models(
        models,
        EvaluationConfig.model_validate(evaluation_config(cfg, prompts_file)),
        seed_dir / "eval",
        baseline="base",
    )
    return summarize_seed(cfg, seed_dir, evaluation)


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
    log = run_dir / f"iter-{k}" / "train_log.jsonl"
    if not log.is_file():
        return None
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    tail = rows[-max(1, len(rows) // 4) :]
    keys = ("loss", "implicit_acc", "model_err_real", "ref_err_real", "model_err_gen", "ref_err_gen")
    return {key: sum(r[key] for r in tail) / len(tail) for key in keys if all(key in r for r in tail)}


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
        entry["open_tv"] = sets.get(name, {}).get("open_tv")
        entry["diversity"] = sets.get(name, {}).get("diversity_attr")
        entry["best_of_n_fidelity"] = bon[name]["toy_fidelity"]
        entry["examples"] = examples_seen(cfg, name)
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
            drifts[f"spin-{k}"] = d
    summary = {"seed_dir": str(seed_dir), "sft_best": sft_best, "models": models, "drift": drifts}
    write_json_atomic(seed_dir / "summary.json", summary)
    return summary


# --------------------------------------------------------------------------- across seeds


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
    names += [n for n in first["models"] if n == "dpo" or n in FAMILY or n.startswith("spin-")]
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
            n = f"sft-{step}"
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
        "| iteration | " + " | ".join(drift_keys) + " |",
        "|---|" + "---|" * len(drift_keys),
    ]
    for k in range(1, len(cfg.spin.iterations) + 1):
        vals = [s["drift"].get(f"spin-{k}") for s in summaries.values()]
        vals = [v for v in vals if v]
        if not vals:
            continue
        cells = [f"{sum(v[key] for v in vals) / len(vals):.4g}" for key in drift_keys]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    lines += ["", "Settings (`reproduce.json`):", "", "```json", cfg.model_dump_json(indent=2), "```", ""]
    return "\n".join(lines)


def plot_curves(cfg: ReproduceConfig, summaries: dict[int, dict[str, Any]], path: Path) -> None:
    """Each oracle metric against training examples seen: SFT's curve, SPIN's iterations, DPO, Figure 5."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from spin_diffusion.infra.atomic import atomic_file

    first = next(iter(summaries.values()))["models"]
    groups = {
        "SFT": ["base"] + sorted((n for n in first if sft_step(n) is not None), key=sft_step),
        "SPIN": ["base"] + sorted(n for n in first if n.startswith("spin-") and n[5:].isdigit()),
        "DPO": ["base", "dpo"] if "dpo" in first else [],
        "SPIN-1 continued": ["spin-1", "spin-1-continued"] if "spin-1-continued" in first else [],
        "SPIN exact": ["base"] + sorted(exact)
        if (exact := [n for n in first if n.startswith("spin-exact-")])
        else [],
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
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


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
        from spin_diffusion.studies.compare_report import plot_comparison, win_matrix_lines

        text = text.rstrip("\n") + "\n\n" + "\n".join(win_matrix_lines(cfg, summaries)) + "\n"
        plot_comparison(cfg, summaries, out / "plots" / plot)
    write_text_atomic(out / f"{report}.md", text)
    write_json_atomic(out / f"{report}.json", {"settings": cfg.model_dump(mode="json"), "seeds": summaries})
    return {"report": text, "seeds": summaries, "plot": out / "plots" / plot}


def _check_compatible(previous: ReproduceConfig, current: ReproduceConfig, out: Path) -> None:
    """Seeds and methods may be added; anything that changes what a finished run means may not."""
    from spin_diffusion.errors import ConfigError

    fixed = ("pairs", "guidance_scale", "sample_steps", "batch_size", "warmup_steps", "spin", "spin_exact", "sft", "dpo",
             "family", "eval_prompts", "images_per_prompt", "eval_seed")  # fmt: skip
    changed = [k for k in fixed if getattr(previous, k) != getattr(current, k)]
    if changed:
        raise ConfigError(
            f"{out} holds a study with different {', '.join(changed)}; use another --out directory"
        )
