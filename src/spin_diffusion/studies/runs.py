"""What a toy study trains and judges for one seed: its data, its run configs, its models and their budgets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from spin_diffusion.infra.run_layout import RunLayout
from spin_diffusion.studies.model_names import ModelName
from spin_diffusion.studies.settings import FAMILY, ReproduceConfig


def base_path(cfg: ReproduceConfig) -> str:
    """The study's base as a directory: a shipped model's alias resolved, a relative path made absolute."""
    from spin_diffusion.model.loading import resolve_model_source

    source = resolve_model_source(cfg.base)
    return str(Path(source).resolve()) if Path(source).exists() else source


def base_sampler(cfg: ReproduceConfig) -> str:
    """The base family's default sampler: DPM-Solver++ for the UNet base, the flow pipeline's own
    flow-matching Euler sampler for the flow base (the families seam says which apply)."""
    from spin_diffusion.model.families import family_of_directory

    return family_of_directory(Path(base_path(cfg))).samplers[0]


def methods_for_base(base: str, methods: list[str]) -> list[str]:
    """``methods`` less those the base's family refuses (the flow base: spin-exact, inversion-dpo)."""
    from spin_diffusion.model.families import family_of_directory

    family = family_of_directory(Path(base_path(ReproduceConfig(base=base))))
    refused = {name for name, _ in family.refused_methods}
    return [m for m in methods if m not in refused]


def check_methods(cfg: ReproduceConfig) -> None:
    """Refuse, before any work, a method the base's family does not define (the seam's one-line error)."""
    from spin_diffusion.model.families import family_of_directory

    family = family_of_directory(Path(base_path(cfg)))
    for method in cfg.methods:
        family.check_run(method, base_sampler(cfg), None)


def study_run_config(
    cfg: ReproduceConfig, seed: int, out: Path, name: str, method: str, data: dict
) -> dict[str, Any]:
    """The run config every study run of ``method`` shares (base, sampling, batch); callers add the rest."""
    return {
        "name": name,
        "output_dir": str(out),
        "method": method,
        "seed": seed,
        "model": {"pretrained": base_path(cfg)},
        "data": data,
        "sampling": {
            "scheduler": base_sampler(cfg),
            "num_inference_steps": cfg.opponent_sample_steps or cfg.sample_steps,
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
            "pair_noise": cfg.pair_noise,
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
        c = study_run_config(cfg, seed, seed_dir, "spin", "spin", curated)
        c["iterations"] = spin_iters
        c["training"]["stop_when"] = cfg.spin.stop_when.model_dump() if cfg.spin.stop_when else None
        _lora(c, cfg)
        runs["spin"] = c
    if "spin-continued" in cfg.methods and len(spin_iters) >= 2:
        c = study_run_config(cfg, seed, seed_dir, "spin-continued", "spin", curated)
        first = dict(spin_iters[0])
        first["max_steps"] = spin_iters[0]["max_steps"] + spin_iters[1]["max_steps"]
        c["iterations"] = [first]
        _lora(c, cfg)
        runs["spin-continued"] = c
    if "spin-exact" in cfg.methods:
        c = study_run_config(cfg, seed, seed_dir, "spin-exact", "spin-exact", curated)
        c["iterations"] = [it.model_dump() for it in cfg.spin_exact.iterations]
        c["training"].update(
            trajectory_grad_steps=cfg.spin_exact.trajectory_grad_steps,
            trajectory_chunk_size=cfg.spin_exact.trajectory_chunk_size,
        )
        _lora(c, cfg)
        runs["spin-exact"] = c
    if "sft" in cfg.methods:
        c = study_run_config(cfg, seed, seed_dir, "sft", "sft", curated)
        c["training"].update(learning_rate=cfg.sft.learning_rate, save_model_every=cfg.sft.eval_every)
        c["iterations"] = [{"max_steps": cfg.sft.max_steps}]
        runs["sft"] = c
    if "dpo" in cfg.methods:
        c = study_run_config(cfg, seed, seed_dir, "dpo", "dpo", prefs)
        c["training"].update(learning_rate=cfg.dpo.learning_rate, beta=cfg.dpo.beta)
        c["iterations"] = [{"max_steps": cfg.dpo.max_steps}]
        runs["dpo"] = c
    for name in (m for m in FAMILY if m in cfg.methods):
        fam = cfg.family[name]
        c = study_run_config(cfg, seed, seed_dir, name, name, prefs)
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
        "scheduler": base_sampler(cfg),
        "num_inference_steps": cfg.sample_steps,
        "guidance_scale": cfg.guidance_scale,
        "batch_size": 128,
        "grid_prompts": 8,
    }


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
    """Every model of a seed to judge: name -> evaluation entry (the base plus a run's ``iter-k/model``)."""
    base = base_path(cfg)
    found: dict[ModelName, Path] = {}
    if "sft" in cfg.methods:
        sft = RunLayout(seed_dir / "sft").iteration(1)
        for step in range(cfg.sft.eval_every, cfg.sft.max_steps, cfg.sft.eval_every):
            found[ModelName("sft", step=step)] = sft.snapshot(step)
        found[ModelName("sft", step=cfg.sft.max_steps)] = sft.model
    for name in (m for m in ("dpo", *FAMILY) if m in cfg.methods):
        found[ModelName(name)] = RunLayout(seed_dir / name).iteration(1).model
    for method, iterations in (("spin", cfg.spin.iterations), ("spin-exact", cfg.spin_exact.iterations)):
        if method in cfg.methods:
            for k in range(1, len(iterations) + 1):
                found[ModelName(method, iteration=k)] = RunLayout(seed_dir / method).iteration(k).model
    if "spin-continued" in cfg.methods and len(cfg.spin.iterations) >= 2:
        found[ModelName("spin-continued", iteration=1)] = (
            RunLayout(seed_dir / "spin-continued").iteration(1).model
        )
    return {
        "base": {"path": base},
        **{m.name: {"path": base, "trained": str(path)} for m, path in found.items()},
    }


def examples_seen(cfg: ReproduceConfig, name: str) -> int:
    """Real training examples a model has consumed (steps x batch), the x axis of the curves."""
    model = ModelName.parse(name)
    its = cfg.spin.iterations
    if model.method == "base":
        steps = 0
    elif model.method == "sft" and model.step is not None:
        steps = model.step
    elif model.method == "dpo":
        steps = cfg.dpo.max_steps
    elif model.method in FAMILY:
        steps = cfg.family[model.method].max_steps
    elif model.method == "spin-exact" and model.iteration is not None:
        steps = sum(it.max_steps for it in cfg.spin_exact.iterations[: model.iteration])
    elif model.method == "spin-continued":  # iteration 1 run for as long as iterations 1 and 2
        steps = its[0].max_steps + its[1].max_steps
    elif model.method == "spin" and model.iteration is not None:
        steps = sum(it.max_steps for it in its[: model.iteration])
    else:
        raise ValueError(f"{name!r} is not a model of the toy studies")
    return steps * cfg.batch_size
