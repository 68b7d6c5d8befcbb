"""The run driver: for k = 1..K, sample with theta_{k-1}, train theta_k against it, save, evaluate.

SFT and DPO are the same driver with one iteration and no sampling. Each
stage writes into the run directory atomically and records what it consumed,
so re-running the same command resumes mid-sampling, mid-training or between
iterations, and a finished run is a no-op. The stages of one iteration are in
:mod:`spin_diffusion.selfplay.iteration`; the run directory's paths in
:mod:`spin_diffusion.infra.run_layout`.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from spin_diffusion.config.run import RunConfig
from spin_diffusion.errors import ConfigError
from spin_diffusion.infra.atomic import write_json_atomic
from spin_diffusion.infra.run_layout import RunLayout, iteration_name
from spin_diffusion.model.families import denoiser_of, family_of
from spin_diffusion.selfplay.iteration import Opponent, RunContext, run_iteration
from spin_diffusion.selfplay.opponents import load_iteration_unet
from spin_diffusion.selfplay.preflight import check_output_outside_data, nothing_to_train
from spin_diffusion.selfplay.report import write_results
from spin_diffusion.selfplay.rundir import (
    check_data_unchanged,
    check_resumable,
    iteration_done,
    record_data,
    run_lock,
    write_run_config,
)
from spin_diffusion.selfplay.tracking import PhaseClock, log_startup_summary, tracker_config, trackers
from spin_diffusion.selfplay.trained_on import check_same_base
from spin_diffusion.selfplay.validation_images import ValidationSet, validation_prompts

log = logging.getLogger(__name__)


def run(cfg: RunConfig, show_progress: bool = True) -> dict[str, Any]:
    """Run (or resume) every iteration the config asks for; returns the results summary.

    Model, data, LoRA targets and scorers are checked before anything is
    written into the run directory, so a failed start leaves no trace that
    would make the corrected config look like "a different run".
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from spin_diffusion.data.cache_keys import data_record as record_of
    from spin_diffusion.data.cache_keys import earlier_format_keys
    from spin_diffusion.model.families import prompt_encoder
    from spin_diffusion.model.loading import load_pipeline
    from spin_diffusion.model.lora import check_lora_targets

    check_output_outside_data(cfg)
    check_resumable(cfg)
    accelerator = Accelerator(
        mixed_precision=cfg.training.mixed_precision,
        log_with=trackers(cfg.training.trackers),
        project_dir=str(RunLayout(cfg.run_dir).logs),
    )
    cfg = with_mixed_precision(cfg, accelerator.mixed_precision)  # recorded as used, not as asked
    set_seed(cfg.seed)
    for k in range(1, len(cfg.iterations) + 1):  # a global batch that does not fit this launch
        cfg.training_for(k).accumulation_steps(accelerator.num_processes)
    pipe = load_pipeline(cfg.model.pretrained, revision=cfg.model.revision)
    prompts = prompt_encoder(pipe)  # the model family, resolved once from the pipeline's class
    family = family_of(pipe)
    family.check_run(cfg.method, cfg.sampling.scheduler, cfg.training.snr_gamma)
    check_same_base(cfg.run_dir, denoiser_of(pipe), cfg.model.pretrained)  # before anything is written
    data_cfg = cfg.data
    if cfg.method == "spin":
        family.sample_at(pipe, data_cfg.resolution)  # a real/generated pair must have one latent shape
    pairs = cfg.pair_data
    data_record, earlier_format = (
        record_of(data_cfg, pipe.vae, pairs),
        earlier_format_keys(data_cfg, pipe.vae, pairs),
    )
    if cfg.model.lora.enabled:
        check_lora_targets(denoiser_of(pipe), cfg.model.lora.target_modules)
    eval_cfg = cfg.evaluation
    if eval_cfg is not None:
        family.check_sampler(eval_cfg.scheduler, "evaluation.scheduler")
    if eval_cfg is not None and accelerator.is_main_process:
        from spin_diffusion.evaluation.runner import check_scorers

        check_scorers(eval_cfg)

    with run_lock(cfg.run_dir, enabled=accelerator.is_main_process):
        check_data_unchanged(cfg.run_dir, data_record, earlier_format)  # read-only: every rank stops alike
        if accelerator.is_main_process and not nothing_to_train(cfg):  # config.yaml says what ran
            write_run_config(cfg)
            record_data(cfg.run_dir, data_record)
        accelerator.wait_for_everyone()
        return _run_locked(cfg, accelerator, pipe, prompts, data_cfg, data_record, show_progress)


def _run_locked(
    cfg: RunConfig,
    accelerator: Any,
    pipe: Any,
    prompts: Any,
    data_cfg: Any,
    data_record: dict[str, Any],
    show_progress: bool,
) -> dict[str, Any]:
    """The iterations, with the run directory locked and its config and data recorded."""
    from spin_diffusion.model.weights import fingerprint_module

    started = time.time()
    clock = PhaseClock()
    ctx = _prepare(cfg, accelerator, pipe, prompts, data_cfg, show_progress)
    base_fp = fingerprint_module(denoiser_of(pipe))  # frozen and placed on the device
    clock.lap("encode")
    # theta_0. Only the current opponent is kept (no separate copy of the base): memory stays the
    # same in every iteration, and theta_{k-1} is the template a finished iteration's model loads into
    # (iteration 1's LoRA file is relative to the base, and then theta_0 is the current opponent).
    history = _iterate(ctx, Opponent(denoiser_of(pipe), base_fp), data_record)
    results = {"name": cfg.name, "method": cfg.method, "iterations": history, "base_fingerprint": base_fp}
    if accelerator.is_main_process:
        clock.lap("iterations")
        evaluation = _evaluate(cfg, cfg.run_dir, len(history))
        clock.lap("evaluate")
        if evaluation is not None:
            results["evaluation"] = evaluation
        results["seconds"] = round(time.time() - started, 1)
        results["phase_seconds"] = clock.laps  # this invocation's: a resumed run counts only what it redid
        write_results(RunLayout(cfg.run_dir), results, evaluated=evaluation is not None)
    accelerator.end_training()
    return results


def _prepare(
    cfg: RunConfig, accelerator: Any, pipe: Any, prompts: Any, data_cfg: Any, show_progress: bool
) -> RunContext:
    """Freeze and place the fixed parts, encode (or reuse) the real latents, and say what the run will do."""
    from spin_diffusion.data.latents import ensure_latent_cache
    from spin_diffusion.model.prediction import training_scheduler
    from spin_diffusion.model.tokens import warn_caption_tokens

    for part in (pipe.vae, *prompts.modules):
        part.requires_grad_(False)
        part.eval()
    pipe.to(accelerator.device)
    denoiser_of(pipe).requires_grad_(False)
    noise_scheduler = training_scheduler(pipe, cfg.model.flow)
    with accelerator.main_process_first():
        cache = ensure_latent_cache(
            data_cfg,
            pipe.vae,
            RunLayout(cfg.run_dir).real_latents,
            pairs=cfg.pair_data,
            show_progress=show_progress and accelerator.is_main_process,
        )
    if len(cache) == 0:
        raise ConfigError(f"data source {data_cfg.path} has no usable examples")
    if accelerator.is_main_process:
        warn_caption_tokens(prompts.tokenizer, cache.captions, log)
        log_startup_summary(cfg, accelerator, len(cache))
    vset = ValidationSet(
        validation_prompts(cache.captions, cfg.training.validation_prompts), cfg.seed, cfg.sampling
    )
    return RunContext(cfg, accelerator, pipe, prompts, noise_scheduler, data_cfg, cache, vset, show_progress)


def _iterate(ctx: RunContext, opponent: Opponent, data_record: dict[str, Any]) -> list[dict[str, Any]]:
    """Every iteration in turn: a finished one only loads its theta_k, the others are trained and saved."""
    cfg, accelerator = ctx.cfg, ctx.accelerator
    layout = RunLayout(cfg.run_dir)
    history: list[dict[str, Any]] = []
    if accelerator.is_main_process:
        accelerator.init_trackers(cfg.name, config=tracker_config(cfg))
    for k in range(1, len(cfg.iterations) + 1):
        paths = layout.iteration(k)
        if iteration_done(cfg.run_dir, k):
            summary = json.loads(paths.done.read_text())
            # theta_k as recorded when it was made
            opponent = Opponent(
                load_iteration_unet(opponent.unet, ctx.pipe, paths.model), summary["model_fingerprint"]
            )
            history.append(summary)
            continue
        paths.root.mkdir(parents=True, exist_ok=True)
        result = run_iteration(ctx, layout, k, opponent)
        history.append(result.summary)
        opponent = result.next_opponent
        result.summary["data_fingerprint"] = data_record["latent_cache_key"]
        # Forget this iteration's prepared model and optimizer: otherwise the next iteration's
        # checkpoints hold them too (and resume loads the wrong weights) and memory grows per iteration.
        accelerator.free_memory()
        if accelerator.is_main_process:
            write_json_atomic(paths.done, result.summary)
            if not cfg.training_for(k).keep_checkpoints:
                shutil.rmtree(paths.checkpoints, ignore_errors=True)
        accelerator.wait_for_everyone()
    return history


def with_mixed_precision(cfg: RunConfig, used: str) -> RunConfig:
    """``cfg`` with ``training.mixed_precision`` set to what accelerate actually uses.

    When the config leaves it unset, accelerate's own setting decides
    (``accelerate launch --mixed_precision bf16`` or its config file); the run
    directory's config.yaml and every iteration.json then say what was used.
    """
    training = cfg.training.model_copy(update={"mixed_precision": used})
    return cfg.model_copy(update={"training": training})


def _evaluate(cfg: RunConfig, run_dir: Path, num_iterations: int) -> dict[str, Any] | None:
    """Score base and every iteration on held-out prompts, when the config has an evaluation block."""
    eval_cfg = cfg.evaluation
    if eval_cfg is None:
        return None
    from spin_diffusion.evaluation.runner import evaluate_models

    layout = RunLayout(run_dir)
    models: dict[str, Any] = {"base": {"path": cfg.model.pretrained}}
    for k in range(1, num_iterations + 1):
        models[iteration_name(k)] = {"path": cfg.model.pretrained, "trained": str(layout.iteration(k).model)}
    return evaluate_models(models, eval_cfg, layout.eval, baseline="base")
