"""The run driver: for k = 1..K, sample with theta_{k-1}, train theta_k against it, save, evaluate.

SFT and DPO are the same driver with one iteration and no sampling. Each
stage writes into the run directory atomically and records what it consumed,
so re-running the same command resumes mid-sampling, mid-training or between
iterations, and a finished run is a no-op.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spin_diffusion.config.run import PREFERENCE_METHODS, SELF_PLAY_METHODS, RunConfig
from spin_diffusion.errors import ConfigError
from spin_diffusion.infra.atomic import atomic_file, write_json_atomic, write_text_atomic
from spin_diffusion.infra.seeds import iteration_seed
from spin_diffusion.selfplay.rundir import (
    ITERATION_DONE,
    check_data_unchanged,
    check_resumable,
    iteration_done,
    record_data,
    run_lock,
    write_run_config,
)
from spin_diffusion.selfplay.validation_images import ValidationSet, log_validation, validation_prompts
from spin_diffusion.training.batches import Members

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- training data


@dataclass
class _CacheData:
    """Examples of the real-latent cache: their count and captions (what every method shares)."""

    cache: Any
    flip: bool

    def __len__(self) -> int:
        return len(self.cache)

    def caption(self, index: int) -> str:
        return self.cache.captions[index]


class RealData(_CacheData):
    """SFT: the real latent of each example."""

    paired = False

    def latents(self, index: int, epoch: int, rng: torch.Generator) -> Members:
        flip = _coin(rng, self.flip)
        return Members(self.cache.latents(index, flip=flip), size_a=self.cache.size_cond(index, flip=flip))


class PreferenceData(_CacheData):
    """DPO and its family: (winner, loser) latents of each preference pair (KTO: desirable, undesirable)."""

    paired = True

    def latents(self, index: int, epoch: int, rng: torch.Generator) -> Members:
        flip = _coin(rng, self.flip)
        win, lose = self.cache.pair_latents(index, flip=flip)
        size_win, size_lose = self.cache.pair_size_cond(index, flip=flip)
        return Members(win, lose, size_win, size_lose)


@dataclass
class SelfPlayData(_CacheData):
    """SPIN: the real latent paired with one of the opponent's samples for the same caption."""

    samples: Any = None
    paired = True

    def latents(self, index: int, epoch: int, rng: torch.Generator) -> Members:
        import torch

        flip = _coin(rng, self.flip)
        real = self.cache.latents(index, flip=flip)
        generated = self.samples.latents(self.cache.ids[index])
        pick = int(torch.randint(0, generated.shape[0], (1,), generator=rng))
        # a generated sample is seen whole at the size it was made: size None
        return Members(real, generated[pick], size_a=self.cache.size_cond(index, flip=flip))


@dataclass
class SelfPlayTrajectoryData(SelfPlayData):
    """spin-exact: the real latent paired with one opponent sample's whole trajectory ``[K+1, ...]``.

    The sample is picked with the same draw as :class:`SelfPlayData`, so both
    SPIN objectives pair an example with the same opponent sample.
    """

    @property
    def schedule(self) -> Any:
        return self.samples.schedule

    def latents(self, index: int, epoch: int, rng: torch.Generator) -> Members:
        import torch

        flip = _coin(rng, self.flip)
        real = self.cache.latents(index, flip=flip)
        trajectories = self.samples.trajectory(self.cache.ids[index])
        pick = int(torch.randint(0, trajectories.shape[0], (1,), generator=rng))
        # the real member keeps its cached size and crop (SDXL); the sample was made whole: None
        return Members(real, trajectories[pick], size_a=self.cache.size_cond(index, flip=flip))


class PhaseClock:
    """Wall seconds of consecutive phases: ``lap(name)`` ends the phase that began at the previous lap."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(self.laps.get(name, 0.0) + now - self._last, 2)
        self._last = now


def _coin(rng: torch.Generator, enabled: bool) -> bool:
    import torch

    return enabled and bool(torch.rand(1, generator=rng) < 0.5)


# --------------------------------------------------------------------------- models


def _torch_dtype(name: str) -> torch.dtype:
    import torch

    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def merged_copy(unet: Any) -> Any:
    """A plain UNet with any LoRA folded in: theta_k as the next opponent sees it."""
    from spin_diffusion.model.pipelines import has_lora, merge_lora

    clone = copy.deepcopy(unet)
    if has_lora(clone):
        clone = merge_lora(clone)
    clone.requires_grad_(False)
    clone.eval()
    return clone


def load_iteration_unet(template: Any, pipe: Any, model_dir: Path) -> Any:
    """theta_k from a finished iteration's ``model/`` directory, as a plain (merged) UNet."""
    from spin_diffusion.model.pipelines import load_trained_into

    original = pipe.unet
    pipe.unet = copy.deepcopy(template)
    try:
        load_trained_into(pipe, model_dir)
        if getattr(pipe.unet, "peft_config", None):
            pipe.fuse_lora()
            pipe.unload_lora_weights()
        unet = pipe.unet
    finally:
        pipe.unet = original
    unet.requires_grad_(False)
    unet.eval()
    return unet


# --------------------------------------------------------------------------- the driver


def run(cfg: RunConfig, show_progress: bool = True) -> dict[str, Any]:
    """Run (or resume) every iteration the config asks for; returns the results summary.

    Model, data, LoRA targets and scorers are checked before anything is
    written into the run directory, so a failed start leaves no trace that
    would make the corrected config look like "a different run".
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from spin_diffusion.data.latents import latent_cache_key
    from spin_diffusion.model.families import prompt_encoder
    from spin_diffusion.model.pipelines import check_lora_targets, load_pipeline

    check_resumable(cfg)
    accelerator = Accelerator(
        mixed_precision=cfg.training.mixed_precision,
        log_with=_trackers(cfg.training.trackers),
        project_dir=str(cfg.run_dir / "logs"),
    )
    cfg = with_mixed_precision(cfg, accelerator.mixed_precision)  # recorded as used, not as asked
    set_seed(cfg.seed)
    for k in range(1, len(cfg.iterations) + 1):  # a global batch that does not fit this launch
        cfg.training_for(k).accumulation_steps(accelerator.num_processes)
    pipe = load_pipeline(cfg.model.pretrained, revision=cfg.model.revision)
    prompts = prompt_encoder(pipe)  # the model family, resolved once from the pipeline's class
    data_cfg = cfg.data_config()
    if cfg.method == "spin":
        _check_sampling_size(pipe, data_cfg.resolution)
    data_record = {
        "latent_cache_key": latent_cache_key(data_cfg, pipe.vae, pairs=cfg.method in PREFERENCE_METHODS),
        "data_path": str(data_cfg.path),
    }
    if cfg.model.lora.enabled:
        check_lora_targets(pipe.unet, cfg.model.lora.target_modules)
    eval_cfg = cfg.evaluation_config()
    if eval_cfg is not None and accelerator.is_main_process:
        from spin_diffusion.evaluation.runner import check_scorers

        check_scorers(eval_cfg)

    with run_lock(cfg.run_dir, enabled=accelerator.is_main_process):
        check_data_unchanged(cfg.run_dir, data_record)  # read-only: every rank stops alike
        if accelerator.is_main_process:
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
    from spin_diffusion.data.latents import ensure_latent_cache
    from spin_diffusion.model.pipelines import fingerprint_module, training_scheduler
    from spin_diffusion.model.tokens import warn_caption_tokens

    run_dir = cfg.run_dir
    started = time.time()
    clock = PhaseClock()
    for part in (pipe.vae, *prompts.modules):
        part.requires_grad_(False)
        part.eval()
    pipe.to(accelerator.device)
    pipe.unet.requires_grad_(False)
    base_fp = fingerprint_module(pipe.unet)
    noise_scheduler = training_scheduler(pipe)
    with accelerator.main_process_first():
        cache = ensure_latent_cache(
            data_cfg,
            pipe.vae,
            run_dir / "real_latents",
            pairs=cfg.method in PREFERENCE_METHODS,
            show_progress=show_progress and accelerator.is_main_process,
        )
    clock.lap("encode")
    if len(cache) == 0:
        raise ConfigError(f"data source {data_cfg.path} has no usable examples")
    if accelerator.is_main_process:
        warn_caption_tokens(prompts.tokenizer, cache.captions, log)
        log_startup_summary(cfg, accelerator, len(cache))

    # theta_0. Only the current opponent is kept (no separate copy of the base): memory stays the
    # same in every iteration, and theta_{k-1} is the template a finished iteration's model loads into
    # (iteration 1's LoRA file is relative to the base, and then theta_0 is the current opponent).
    opponent, opponent_fp = pipe.unet, base_fp
    history: list[dict[str, Any]] = []
    if accelerator.is_main_process:
        accelerator.init_trackers(cfg.name, config=tracker_config(cfg))
    vset = ValidationSet(
        validation_prompts(cache.captions, cfg.training.validation_prompts), cfg.seed, cfg.sampling
    )
    for k in range(1, len(cfg.iterations) + 1):
        iter_dir = run_dir / f"iter-{k}"
        if iteration_done(run_dir, k):
            summary = json.loads((iter_dir / ITERATION_DONE).read_text())
            opponent = load_iteration_unet(opponent, pipe, iter_dir / "model")
            opponent_fp = summary["model_fingerprint"]  # as recorded when theta_k was made
            history.append(summary)
            continue
        iter_dir.mkdir(parents=True, exist_ok=True)
        summary = _run_iteration(
            cfg,
            k,
            accelerator,
            pipe,
            prompts,
            opponent,
            opponent_fp,
            noise_scheduler,
            cache,
            iter_dir,
            show_progress,
            vset,
        )
        history.append(summary)
        opponent, opponent_fp = summary.pop("_next_opponent"), summary["model_fingerprint"]
        summary["data_fingerprint"] = data_record["latent_cache_key"]
        # Forget this iteration's prepared model and optimizer: otherwise the next iteration's
        # checkpoints hold them too (and resume loads the wrong weights) and memory grows per iteration.
        accelerator.free_memory()
        if accelerator.is_main_process:
            write_json_atomic(iter_dir / ITERATION_DONE, summary)
            if not cfg.training_for(k).keep_checkpoints:
                shutil.rmtree(iter_dir / "checkpoints", ignore_errors=True)
        accelerator.wait_for_everyone()

    results = {"name": cfg.name, "method": cfg.method, "iterations": history, "base_fingerprint": base_fp}
    if accelerator.is_main_process:
        clock.lap("iterations")
        evaluation = _evaluate(cfg, run_dir, len(history))
        clock.lap("evaluate")
        if evaluation is not None:
            results["evaluation"] = evaluation
        results["seconds"] = round(time.time() - started, 1)
        results["phase_seconds"] = clock.laps  # this invocation's: a resumed run counts only what it redid
        write_json_atomic(run_dir / "results.json", results)
        eval_md = run_dir / "eval" / "results.md"
        write_text_atomic(
            run_dir / "results.md",
            render_results_md(
                results, eval_md.read_text() if evaluation is not None and eval_md.is_file() else None
            ),
        )
    accelerator.end_training()
    return results


def with_mixed_precision(cfg: RunConfig, used: str) -> RunConfig:
    """``cfg`` with ``training.mixed_precision`` set to what accelerate actually uses.

    When the config leaves it unset, accelerate's own setting decides
    (``accelerate launch --mixed_precision bf16`` or its config file); the run
    directory's config.yaml and every iteration.json then say what was used.
    """
    training = cfg.training.model_copy(update={"mixed_precision": used})
    return cfg.model_copy(update={"training": training})


def global_step_offset(cfg: RunConfig, k: int) -> int:
    """Optimizer steps of iterations 1..k-1: iteration k's step n is run-wide step offset + n."""
    return sum(cfg.training_for(j).max_steps for j in range(1, k))


def tracker_config(cfg: RunConfig) -> dict[str, Any]:
    """The resolved config as flat ``section.key`` values, the only types every tracker's hparams accept."""
    out: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(f"{prefix}{key}.", value)
        elif isinstance(node, bool | int | float | str):
            out[prefix[:-1]] = node
        else:  # lists and null: their JSON text
            out[prefix[:-1]] = json.dumps(node)

    walk("", cfg.model_dump(mode="json"))
    return out


def log_startup_summary(cfg: RunConfig, accelerator: Any, num_examples: int) -> None:
    """One block saying what this invocation will do, and where it picks up if the run was started before."""
    from spin_diffusion.training.checkpoints import list_checkpoints

    n = len(cfg.iterations)
    steps = [cfg.training_for(k).max_steps for k in range(1, n + 1)]
    accumulation = cfg.training.accumulation_steps(accelerator.num_processes)
    log.info(
        "%s: %s, %d examples, %d iteration(s) of %s optimizer steps (%d in all); global batch %d "
        "(batch_size %d x %d processes x %d accumulation); mixed precision %s; run directory %s",
        cfg.name,
        cfg.method,
        num_examples,
        n,
        "/".join(map(str, steps)),
        sum(steps),
        cfg.training.batch_size * accelerator.num_processes * accumulation,
        cfg.training.batch_size,
        accelerator.num_processes,
        accumulation,
        cfg.training.mixed_precision,
        cfg.run_dir,
    )
    done = [k for k in range(1, n + 1) if iteration_done(cfg.run_dir, k)]
    if len(done) == n:
        log.info("%s: all %d iteration(s) are finished; nothing to train", cfg.name, n)
        return
    if not done and not (cfg.run_dir / "iter-1").exists():
        return
    k = len(done) + 1
    saved = list_checkpoints(cfg.run_dir / f"iter-{k}" / "checkpoints")
    where = f"its checkpoint {saved[-1][1].name}" if saved else "its start"
    log.info(
        "%s: resuming: iteration(s) %s finished; iteration %d continues from %s (run-wide step %d)",
        cfg.name,
        ", ".join(map(str, done)) or "none",
        k,
        where,
        global_step_offset(cfg, k) + (saved[-1][0] if saved else 0),
    )


def _check_sampling_size(pipe: Any, resolution: int) -> None:
    """The opponent samples at the UNet's own size; a real/generated pair must have one latent shape."""
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    if size != resolution:
        raise ConfigError(
            f"data.resolution is {resolution} but the opponent samples at {size} px (the UNet's sample_size "
            f"{pipe.unet.config.sample_size} x the VAE's factor {pipe.vae_scale_factor}); set data.resolution: {size}"
        )


def _trackers(names: list[str]) -> list[str] | None:
    import importlib.util

    for name in names:
        if importlib.util.find_spec(name) is None:
            raise ConfigError(
                f"training.trackers: {name} is not installed (pip install {name}, or remove it)"
            )
    return list(names) or None


def _run_iteration(
    cfg: RunConfig,
    k: int,
    accelerator: Any,
    pipe: Any,
    prompts: Any,
    opponent: Any,
    opponent_fp: str,
    noise_scheduler: Any,
    cache: Any,
    iter_dir: Path,
    show_progress: bool,
    vset: ValidationSet,
) -> dict[str, Any]:
    from spin_diffusion.model.pipelines import (
        LoraSettings,
        add_lora,
        fingerprint_module,
        frozen_copy,
        save_trained_unet,
    )
    from spin_diffusion.sampling.opponent import sample_opponent
    from spin_diffusion.training.reference import (
        ModuleReference,
        PrecomputedReference,
        ReferencePlan,
        precompute_reference_errors,
    )
    from spin_diffusion.training.trainer import Trainer, write_summary

    train_cfg = cfg.training_for(k)
    data_cfg = cfg.data_config()
    seed = iteration_seed(cfg.seed, k)
    clock = PhaseClock()

    # 1. the opponent's samples (SPIN only; spin-exact keeps every solver step)
    samples = None
    exact = cfg.method == "spin-exact"
    if cfg.method in SELF_PLAY_METHODS:
        pipe.unet = opponent
        samples = sample_opponent(
            pipe,
            cache.ids,
            cache.captions,
            cfg.sampling_for(k),
            iter_dir / "samples",
            seed=seed,
            model_fingerprint=opponent_fp,
            rank=accelerator.process_index,
            world_size=accelerator.num_processes,
            barrier=accelerator.wait_for_everyone,
            show_progress=show_progress,
            trajectory=exact,
        )
        kind = SelfPlayTrajectoryData if exact else SelfPlayData
        data = kind(cache, flip=data_cfg.random_flip, samples=samples)
        clock.lap("sample")
    elif cfg.method in PREFERENCE_METHODS:
        data = PreferenceData(cache, flip=data_cfg.random_flip)
    else:
        data = RealData(cache, flip=data_cfg.random_flip)

    # 2. the trained model starts from theta_{k-1}; the reference is theta_{k-1} (SPIN) or theta_0 (DPO family)
    unet = copy.deepcopy(opponent)
    reference = None
    lora = cfg.model.lora
    if lora.enabled:
        add_lora(unet, LoraSettings(lora.rank, lora.alpha, lora.dropout, tuple(lora.target_modules)))
    else:
        unet.requires_grad_(True)
    if cfg.method != "sft":
        if lora.enabled:
            reference = ModuleReference(unet, noise_scheduler, disable_adapters=True)
        else:
            ref_dtype = _torch_dtype(cfg.model.reference_dtype)
            # the opponent is frozen already: it is the reference unless a lower precision is asked for
            same = ref_dtype == next(opponent.parameters()).dtype
            reference = ModuleReference(
                opponent if same else frozen_copy(opponent, ref_dtype), noise_scheduler
            )
    caption_dropout = getattr(data_cfg, "caption_dropout", 0.0)
    if reference is not None and train_cfg.precompute_reference:
        # only the micro-batches this iteration's steps run, split across ranks, under training's autocast
        table_path = iter_dir / "reference_errors.safetensors"
        plan = ReferencePlan.for_training(len(data), train_cfg, accelerator.num_processes, seed)
        key = {
            "reference": opponent_fp,
            "lora": lora.enabled,
            "reference_dtype": cfg.model.reference_dtype,
            "mixed_precision": train_cfg.mixed_precision,
        }
        reference = PrecomputedReference(
            _reference_table(
                table_path,
                lambda ref=reference: precompute_reference_errors(
                    ref,
                    data,
                    prompts,
                    plan=plan,
                    chunk_dir=iter_dir / "reference_errors",
                    key=key,
                    num_train_timesteps=noise_scheduler.config.num_train_timesteps,
                    caption_dropout=caption_dropout,
                    rank=accelerator.process_index,
                    barrier=accelerator.wait_for_everyone,
                    autocast=accelerator.autocast,
                    show_progress=show_progress and accelerator.is_main_process,
                ),
                accelerator,
                json.dumps({**key, **plan.identity(), "caption_dropout": caption_dropout}, sort_keys=True),
            ),
            source=str(table_path),
        )
        clock.lap("reference")

    # a LoRA on theta_{k-1} (k > 1) is saved stacked on iteration k-1's, so it is relative to the base
    previous = iter_dir.parent / f"iter-{k - 1}" / "model" if lora.enabled and k > 1 else None
    offset = global_step_offset(cfg, k)
    trackers = train_cfg.trackers
    every = train_cfg.validation_every

    def validate_every(t: Trainer) -> None:
        if every and t.step % every == 0 and t.step < train_cfg.max_steps:  # the end is logged below
            log_validation(accelerator, pipe, t.trained_unet(), vset, trackers, offset + t.step)

    trainer = Trainer(
        method=cfg.method,
        cfg=train_cfg,
        accelerator=accelerator,
        unet=unet,
        noise_scheduler=noise_scheduler,
        prompts=prompts,
        data=data,
        reference=reference,
        out_dir=iter_dir,
        seed=seed,
        caption_dropout=caption_dropout,
        show_progress=show_progress,
        log_prefix="train/",
        previous_model=previous,
        log_step_offset=offset,  # one curve over the whole run: wandb drops steps that go backwards
        on_step=validate_every if every else None,
    )
    clock.lap("setup")
    result = trainer.train()
    clock.lap("train")
    trained = trainer.final_unet  # complete on every process, also when FSDP/DeepSpeed sharded it
    log_validation(accelerator, pipe, trained, vset, trackers, offset + result.steps)
    clock.lap("validation")
    model_dir = iter_dir / "model"
    if accelerator.is_main_process:
        save_trained_unet(trained, model_dir, previous=previous)
        write_summary(iter_dir, result, {"iteration": k})
    accelerator.wait_for_everyone()
    next_opponent = merged_copy(trained)
    del trainer, unet, reference
    clock.lap("save")
    return {
        "iteration": k,
        "steps": result.steps,
        "resumed_from": result.resumed_from,
        "final_metrics": result.final_metrics,
        "training": train_cfg.model_dump(mode="json"),
        "opponent_fingerprint": opponent_fp,
        "model_fingerprint": fingerprint_module(next_opponent),
        "samples": None if samples is None else str(samples.dir.relative_to(iter_dir.parent)),
        "world_size": result.world_size,
        "global_batch": result.global_batch,
        "seconds": clock.laps,
        "_next_opponent": next_opponent,
    }


def _reference_table(path: Path, compute: Any, accelerator: Any, key: str) -> torch.Tensor:
    """The precomputed reference errors: reused if made for ``key``, else computed and saved once.

    ``compute`` runs on every rank (each takes its share of the chunks and all
    merge them); only the main process writes the table.
    """
    from safetensors.torch import load_file, save_file

    if _saved_table_key(path) == key:
        return load_file(str(path))["errors"]
    table = compute()
    if accelerator.is_main_process:
        with atomic_file(path) as tmp:
            save_file({"errors": table.contiguous()}, str(tmp), metadata={"key": key})
    accelerator.wait_for_everyone()
    return table


def _saved_table_key(path: Path) -> str | None:
    """The key a saved reference table was made for (None if absent, damaged or from an older version)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("key")
    except Exception:  # noqa: BLE001 - missing or damaged: compute again
        return None


def _evaluate(cfg: RunConfig, run_dir: Path, num_iterations: int) -> dict[str, Any] | None:
    """Score base and every iteration on held-out prompts, when the config has an evaluation block."""
    eval_cfg = cfg.evaluation_config()
    if eval_cfg is None:
        return None
    from spin_diffusion.evaluation.runner import evaluate_models

    models: dict[str, Any] = {"base": {"path": cfg.model.pretrained}}
    for k in range(1, num_iterations + 1):
        models[f"iter-{k}"] = {
            "path": cfg.model.pretrained,
            "trained": str(run_dir / f"iter-{k}" / "model"),
        }
    return evaluate_models(models, eval_cfg, run_dir / "eval", baseline="base")


def render_results_md(results: dict[str, Any], evaluation_md: str | None = None) -> str:
    """Training diagnostics per iteration, followed by the evaluation harness's tables when there are any."""
    lines = [f"# {results['name']} ({results['method']})", ""]
    lines += [
        "| iteration | steps | loss | implicit acc | d_real / d_win | d_gen / d_lose |",
        "|---|---|---|---|---|---|",
    ]
    for it in results["iterations"]:
        m = it.get("final_metrics", {})
        d_a = m.get("d_real", m.get("d_win"))
        d_b = m.get("d_gen", m.get("d_lose"))
        lines.append(
            f"| {it['iteration']} | {it['steps']} | {_fmt(m.get('loss'))} | {_fmt(m.get('implicit_acc'))} "
            f"| {_fmt(d_a)} | {_fmt(d_b)} |"
        )
    if evaluation_md:
        lines += ["", "## Evaluation", "", evaluation_md.strip()]
    return "\n".join(lines) + "\n"


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.4g}"
