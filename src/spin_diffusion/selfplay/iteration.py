"""One iteration k of a run, as named stages: build data, build the model and reference, train, save.

The stages run in this order (the order decides which random draws LoRA's
initialisation sees, so it is part of the run's reproducibility), and each
returns what the next needs; :func:`run_iteration` hands back a typed
:class:`IterationResult` whose ``next_opponent`` is theta_k, ready to sample with.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spin_diffusion.config.run import SELF_PLAY_METHODS, RunConfig
from spin_diffusion.infra.run_layout import IterationLayout, RunLayout
from spin_diffusion.infra.seeds import iteration_seed
from spin_diffusion.model.families import set_denoiser
from spin_diffusion.selfplay.opponents import frozen_reference, reference_table, torch_dtype
from spin_diffusion.selfplay.tracking import PhaseClock, global_step_offset
from spin_diffusion.selfplay.trained_on import check_and_record, sampler_identity
from spin_diffusion.selfplay.training_data import training_data
from spin_diffusion.selfplay.validation_images import ValidationSet, log_validation
from spin_diffusion.training.labelled_data import labelled_images


@dataclass
class RunContext:
    """What every iteration of one run shares: the config, the launch, the frozen parts and the data cache."""

    cfg: RunConfig
    accelerator: Any
    pipe: Any
    prompts: Any
    noise_scheduler: Any
    data_cfg: Any
    cache: Any
    vset: ValidationSet
    show_progress: bool


@dataclass
class Opponent:
    """theta_{k-1}: the frozen model that samples iteration k's data and (SPIN) is its reference."""

    unet: Any
    fingerprint: str


@dataclass
class IterationResult:
    """A finished iteration: its ``iteration.json`` record and theta_k as the next opponent."""

    summary: dict[str, Any]
    next_opponent: Opponent


@dataclass
class _Stage:
    """One iteration's fixed facts, shared by its stages."""

    k: int
    paths: IterationLayout
    seed: int
    clock: PhaseClock
    caption_dropout: float


def run_iteration(ctx: RunContext, layout: RunLayout, k: int, opponent: Opponent) -> IterationResult:
    """Train theta_k against ``opponent`` (theta_{k-1}) and save it into the run's ``iter-k``."""
    cfg, paths = ctx.cfg, layout.iteration(k)
    caption_dropout = getattr(ctx.data_cfg, "caption_dropout", 0.0)
    stage = _Stage(k, paths, iteration_seed(cfg.seed, k), PhaseClock(), caption_dropout)
    data, samples = build_data(ctx, stage, opponent)
    unet = trainable_model(cfg, stage.k, opponent.unet)
    reference = build_reference(ctx, stage, opponent, unet, data)
    # a LoRA on theta_{k-1} (k > 1) is saved stacked on iteration k-1's, so it is relative to the base
    previous = layout.iteration(k - 1).model if cfg.model.lora.enabled and k > 1 else None
    trained, result = train(ctx, stage, unet, data, reference, previous)
    next_opponent = save(ctx, stage, trained, result, previous)
    summary = {
        "iteration": k,
        "steps": result.steps,
        "ended": result.ended,  # max_steps, or why training.stop_when ended it early
        "resumed_from": result.resumed_from,
        "final_metrics": result.final_metrics,
        "training": cfg.training_for(k).model_dump(mode="json"),
        "opponent_fingerprint": opponent.fingerprint,
        "model_fingerprint": next_opponent.fingerprint,
        "samples": None if samples is None else str(samples.dir.relative_to(layout.root)),
        "sampler": None if samples is None else samples.manifest["identity"]["sampler"],
        "world_size": result.world_size,
        "global_batch": result.global_batch,
        "seconds": stage.clock.laps,
    }
    return IterationResult(summary, next_opponent)


def build_data(ctx: RunContext, stage: _Stage, opponent: Opponent) -> tuple[Any, Any]:
    """The training data and, for SPIN, the opponent's samples (spin-exact keeps every solver step)."""
    from spin_diffusion.sampling.opponent import sample_opponent

    cfg, accelerator = ctx.cfg, ctx.accelerator
    flip = ctx.data_cfg.random_flip
    if cfg.method == "kto" and cfg.training.kto.unpaired:  # single labelled images, the official way
        return labelled_images(ctx.cache, ctx.data_cfg, cfg.training.kto.desirable_ratio), None
    if cfg.method not in SELF_PLAY_METHODS:
        return training_data(cfg.method, ctx.cache, flip), None
    sampled_with = sampler_identity(cfg.sampling_for(stage.k), stage.seed, opponent.fingerprint)
    check_and_record(stage.paths.root, sampled_with, write=accelerator.is_main_process)
    set_denoiser(ctx.pipe, opponent.unet)
    samples = sample_opponent(
        ctx.pipe,
        ctx.cache.ids,
        ctx.cache.captions,
        cfg.sampling_for(stage.k),
        stage.paths.samples,
        seed=stage.seed,
        model_fingerprint=opponent.fingerprint,
        rank=accelerator.process_index,
        world_size=accelerator.num_processes,
        barrier=accelerator.wait_for_everyone,
        show_progress=ctx.show_progress,
        trajectory=cfg.method == "spin-exact",
    )
    stage.clock.lap("sample")
    return training_data(cfg.method, ctx.cache, flip, samples), samples


def trainable_model(cfg: RunConfig, k: int, opponent: Any) -> Any:
    """The trained model starts from theta_{k-1}, with one network per role that needs one.

    LoRA trains an adapter on the opponent itself (the reference is the same
    network with the adapter off). Full fine-tuning copies the opponent only when
    a live reference must stay frozen beside it; SFT and a precomputed reference
    (its errors are computed before training changes a weight) train it in place.
    """
    from spin_diffusion.model.lora import LoraSettings, add_lora

    lora = cfg.model.lora
    live_reference = cfg.method != "sft" and not cfg.training_for(k).precompute_reference
    unet = copy.deepcopy(opponent) if live_reference and not lora.enabled else opponent
    if lora.enabled:
        add_lora(unet, LoraSettings(lora.rank, lora.alpha, lora.dropout, tuple(lora.target_modules)))
    else:
        unet.requires_grad_(True)
    return unet


def build_reference(ctx: RunContext, stage: _Stage, opponent: Opponent, unet: Any, data: Any) -> Any:
    """theta_{k-1} (SPIN) or theta_0 (DPO family) as the loss sees it: live, or its errors precomputed once."""
    from spin_diffusion.training.reference import ModuleReference, PrecomputedReference

    cfg = ctx.cfg
    if cfg.method == "sft":
        return None
    if cfg.model.lora.enabled:
        reference = ModuleReference(unet, ctx.noise_scheduler, disable_adapters=True)
    else:
        ref_dtype = torch_dtype(_reference_dtype(ctx, stage.k))
        reference = ModuleReference(frozen_reference(opponent.unet, unet, ref_dtype), ctx.noise_scheduler)
    if not cfg.training_for(stage.k).precompute_reference:
        return reference
    table = _precomputed_table(ctx, stage, opponent, reference, data)
    stage.clock.lap("reference")
    return PrecomputedReference(table, source=str(stage.paths.reference_table))


def _reference_dtype(ctx: RunContext, k: int) -> str:
    """The frozen reference's dtype: ``model.reference_dtype``, ``auto`` resolved by the mixed precision used."""
    autocast_active = bool(getattr(ctx.accelerator, "native_amp", False))
    return ctx.cfg.model.resolved_reference_dtype(ctx.cfg.training_for(k).mixed_precision, autocast_active)


def _precomputed_table(ctx: RunContext, stage: _Stage, opponent: Opponent, reference: Any, data: Any) -> Any:
    """Only the micro-batches this iteration's steps run, split across ranks, under training's autocast."""
    from spin_diffusion.training.reference import ReferencePlan, precompute_reference_errors

    cfg, accelerator = ctx.cfg, ctx.accelerator
    train_cfg = cfg.training_for(stage.k)
    plan = ReferencePlan.for_training(len(data), train_cfg, accelerator.num_processes, stage.seed)
    key = {
        "reference": opponent.fingerprint,
        "lora": cfg.model.lora.enabled,
        "reference_dtype": _reference_dtype(ctx, stage.k),
        "mixed_precision": train_cfg.mixed_precision,
    }
    return reference_table(
        stage.paths.reference_table,
        lambda: precompute_reference_errors(
            reference,
            data,
            ctx.prompts,
            plan=plan,
            chunk_dir=stage.paths.reference_chunks,
            key=key,
            num_train_timesteps=ctx.noise_scheduler.config.num_train_timesteps,
            caption_dropout=stage.caption_dropout,
            rank=accelerator.process_index,
            barrier=accelerator.wait_for_everyone,
            autocast=accelerator.autocast,
            show_progress=ctx.show_progress and accelerator.is_main_process,
        ),
        accelerator,
        json.dumps({**key, **plan.identity(), "caption_dropout": stage.caption_dropout}, sort_keys=True),
    )


def train(
    ctx: RunContext, stage: _Stage, unet: Any, data: Any, reference: Any, previous: Path | None
) -> tuple[Any, Any]:
    """Train, validating every ``validation_every`` steps; returns the complete trained UNet and the result."""
    from spin_diffusion.training.trainer import Trainer

    cfg, accelerator, k = ctx.cfg, ctx.accelerator, stage.k
    train_cfg = cfg.training_for(k)
    offset = global_step_offset(cfg, k)
    every = train_cfg.validation_every

    def validate_every(t: Trainer) -> None:
        if every and t.step % every == 0 and t.step < train_cfg.max_steps:  # the end is logged below
            log_validation(
                accelerator, ctx.pipe, t.trained_unet(), ctx.vset, train_cfg.trackers, offset + t.step
            )

    trainer = Trainer(
        method=cfg.method,
        cfg=train_cfg,
        accelerator=accelerator,
        unet=unet,
        noise_scheduler=ctx.noise_scheduler,
        prompts=ctx.prompts,
        data=data,
        reference=reference,
        out_dir=stage.paths.root,
        seed=stage.seed,
        caption_dropout=stage.caption_dropout,
        show_progress=ctx.show_progress,
        log_prefix="train/",
        previous_model=previous,
        log_step_offset=offset,  # one curve over the whole run: wandb drops steps that go backwards
        on_step=validate_every if every else None,
    )
    stage.clock.lap("setup")
    result = trainer.train()
    stage.clock.lap("train")
    trained = trainer.final_unet  # complete on every process, also when FSDP/DeepSpeed sharded it
    log_validation(accelerator, ctx.pipe, trained, ctx.vset, train_cfg.trackers, offset + result.steps)
    stage.clock.lap("validation")
    return trained, result


def save(ctx: RunContext, stage: _Stage, trained: Any, result: Any, previous: Path | None) -> Opponent:
    """Write ``model/`` (loadable by diffusers) and the training summary; theta_k, merged, as the next opponent."""
    from spin_diffusion.model.lora import fold_lora, has_lora
    from spin_diffusion.model.saving import save_trained_unet
    from spin_diffusion.model.weights import fingerprint_module
    from spin_diffusion.training.checkpointing import write_summary

    accelerator = ctx.accelerator
    # theta_k goes on as the next opponent in place: a LoRA is folded into its network (the file is
    # written relative to the base from its layers), a fully trained network is frozen as it is
    folded = fold_lora(trained) if has_lora(trained) else None
    if accelerator.is_main_process:
        save_trained_unet(trained, stage.paths.model, previous=previous, folded=folded)
        write_summary(stage.paths.root, result, {"iteration": stage.k})
    accelerator.wait_for_everyone()
    next_unet = trained.requires_grad_(False).eval()
    stage.clock.lap("save")
    return Opponent(next_unet, fingerprint_module(next_unet))
