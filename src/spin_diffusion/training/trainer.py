"""One accelerate training loop for SFT, Diffusion-DPO and SPIN-Diffusion.

The methods differ only in what a batch holds (one latent, or a pair; see
:mod:`spin_diffusion.training.batches`) and in which objective from
:mod:`spin_diffusion.objectives.core` turns per-sample errors into a loss
(:mod:`spin_diffusion.training.losses`). The run is reproducible and resumes exactly
from a step count.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spin_diffusion.errors import UserError
from spin_diffusion.infra.interrupt import Interrupted, StopFlag
from spin_diffusion.infra.run_layout import CHECKPOINTS
from spin_diffusion.model.weights import fingerprint_module
from spin_diffusion.training.batches import (
    Batch,
    TrainingData,
    batch_conditioning,
    make_batch,
    micro_batch_items,
)
from spin_diffusion.training.checkpointing import CheckpointingMixin, TrainResult
from spin_diffusion.training.checkpoints import (
    LOG,
    list_checkpoints,
    truncate_log,
)
from spin_diffusion.training.distributed import (
    fill_deepspeed_config,
    is_sharded,
    sharding_ignored,
)
from spin_diffusion.training.loss_types import Backprop
from spin_diffusion.training.losses import compute_loss, make_method_state
from spin_diffusion.training.optimizers import build_optimizer
from spin_diffusion.training.reference import Reference
from spin_diffusion.training.stopping import StopRule, ran_to_the_cap

if TYPE_CHECKING:
    from accelerate import Accelerator

    from spin_diffusion.config.run import TrainingConfig
    from spin_diffusion.model.families import PromptEncoder

log = logging.getLogger(__name__)


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the last good checkpoint is kept as it was."""


class TrainingInterrupted(Interrupted):
    """SIGINT/SIGTERM: a checkpoint was saved; the same command resumes (exit code 130)."""


def lr_factor(step: int, cfg: TrainingConfig) -> float:
    """Learning-rate multiplier at optimizer step ``step``: warm-up, then the chosen decay."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.lr_scheduler == "constant":
        return 1.0
    span = max(1, cfg.max_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    if cfg.lr_scheduler == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


class Trainer(CheckpointingMixin):
    """Trains ``unet`` for ``cfg.max_steps`` optimizer steps with checkpoints under ``out_dir``."""

    def __init__(
        self,
        *,
        method: str,
        cfg: TrainingConfig,
        accelerator: Accelerator,
        unet: Any,
        noise_scheduler: Any,
        prompts: PromptEncoder,
        data: TrainingData,
        reference: Reference | None,
        out_dir: Path,
        seed: int,
        caption_dropout: float = 0.0,
        show_progress: bool = True,
        log_prefix: str = "",
        previous_model: Path | None = None,
        log_step_offset: int = 0,
        on_step: Callable[[Trainer], None] | None = None,
    ):
        self.method = method
        self.cfg = cfg
        self.acc = accelerator
        self.unet = unet
        self.noise_scheduler = noise_scheduler
        self.prompts = prompts  # the model family's caption -> conditioning
        self.data = data
        self.reference = reference
        self.out_dir = Path(out_dir)
        self.ckpt_root = self.out_dir / CHECKPOINTS
        self.seed = seed
        self.caption_dropout = caption_dropout
        self.show_progress = show_progress
        self.log_prefix = log_prefix
        self.log_step_offset = log_step_offset  # trackers' step = offset + step: one run-wide axis
        self.on_step = on_step  # called after every optimizer step on every rank (validation images)
        self.previous_model = previous_model  # iteration k-1's model/ when a LoRA trains on top of it
        self.step = 0
        self.micro_step = 0
        self._setup()

    def _setup(self) -> None:
        import torch

        if self.cfg.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
        if self.cfg.channels_last:
            self.unet.to(memory_format=torch.channels_last)
        self.unet.train()
        params = [p for p in self.unet.parameters() if p.requires_grad]
        if not params:
            raise UserError("the model has no trainable parameters")
        optimizer = build_optimizer(params, self.cfg, self.acc.device)
        self.accumulation = self.cfg.accumulation_steps(self.acc.num_processes)
        self.global_batch = self.cfg.batch_size * self.acc.num_processes * self.accumulation
        self.sharded = is_sharded(self.acc)
        # accelerate counts the accumulation window; DeepSpeed reads the count (and batch) at prepare
        self.acc.gradient_accumulation_steps = self.accumulation
        fill_deepspeed_config(self.acc, self.cfg)
        self.unet, self.optimizer = self.acc.prepare(self.unet, optimizer)
        if self.acc.gradient_accumulation_steps != self.accumulation:
            raise UserError(
                f"the DeepSpeed config sets gradient_accumulation_steps {self.acc.gradient_accumulation_steps}, "
                f"training needs {self.accumulation}; set it to auto in the DeepSpeed config"
            )
        self.acc.step = self.micro_step  # accelerate's window counter: a resume sets both (maybe_resume)
        if self.cfg.compile:  # in place: the module (and any DDP wrapper around it) keeps its type
            self.acc.unwrap_model(self.unet).compile()
        self.ema = self._make_ema()
        self.method_state = self._make_method_state()
        self.device = self.acc.device
        self.prompts.to(self.device)
        self._window: list[dict[str, float]] = []  # metrics of the micro-batches of this optimizer step
        self.final_unet: Any = None  # the trained model as a plain module, set at the end of train()
        self.stop_rule = StopRule.from_config(self.cfg.stop_when)  # None: run max_steps

    def _make_ema(self) -> Any:
        """EMA of the trainable weights only (LoRA: the adapter), so it costs what they cost."""
        if not self.cfg.use_ema:
            return None
        if self.sharded:
            raise UserError(
                "training.use_ema is not supported with FSDP or DeepSpeed: each process holds only a shard "
                "of the weights; train with plain data parallelism or set training.use_ema=false"
            )
        from diffusers.training_utils import EMAModel

        return EMAModel(self._trainable_parameters(), decay=self.cfg.ema_decay)

    def _make_method_state(self) -> Any:
        """What the method declares it keeps across steps (Adaptive-DPO: EMA annotators), or None."""
        state = make_method_state(self.method, self.cfg, self._trainable_parameters())
        if state is not None and self.sharded:
            raise UserError(
                f"method {self.method} keeps copies of the trainable weights across steps, which is not "
                "supported with FSDP or DeepSpeed (each process holds a shard); use plain data parallelism"
            )
        return state

    def _trainable_parameters(self) -> list[Any]:
        return [p for p in self.acc.unwrap_model(self.unet).parameters() if p.requires_grad]

    # -- one step

    def next_batch(self) -> Batch:
        items = micro_batch_items(
            len(self.data),
            self.micro_step,
            batch_size=self.cfg.batch_size,
            rank=self.acc.process_index,
            world_size=self.acc.num_processes,
            seed=self.seed,
        )
        return make_batch(
            self.data,
            items,
            seed=self.seed,
            num_train_timesteps=self.noise_scheduler.config.num_train_timesteps,
            caption_dropout=self.caption_dropout,
            pair_noise=self.cfg.pair_noise,
        )

    def set_lr(self) -> float:
        lr = self.cfg.learning_rate * lr_factor(self.step, self.cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def train_step(self) -> dict[str, float] | None:
        """One micro-batch; returns the step's metrics when it completed an optimizer step.

        accelerate's ``accumulate`` decides when gradients sync (and, under
        DeepSpeed, when the engine steps) from its own micro-step counter, which
        is kept equal to ``micro_step`` across resumes. ``backward`` divides the
        loss by the accumulation count.
        """
        batch = self.next_batch()
        lr = self.set_lr()
        with self.acc.accumulate(self.unet):
            emb = batch_conditioning(self.prompts, batch)
            with self.acc.autocast():
                out = compute_loss(
                    self.method,
                    self.cfg,
                    self.unet,
                    self.noise_scheduler,
                    self.reference,
                    batch,
                    emb,
                    self.method_state,
                )
            self._check_finite(out.loss)
            if out.backward is None:
                self.acc.backward(out.loss)  # accelerate divides by the accumulation steps
            else:  # the objective back-propagates chunk by chunk (spin-exact); same scaling and sync
                with self.acc.autocast():
                    out.backward(Backprop(self.acc.backward, lambda: self.acc.no_sync(self.unet)))
        self.micro_step += 1
        self._window.append(out.metrics)
        if not self.acc.sync_gradients:
            return None
        grad_norm = None
        if self.cfg.max_grad_norm is not None:
            grad_norm = self.acc.clip_grad_norm_(self.unet.parameters(), self.cfg.max_grad_norm)
            self._check_finite_grad_norm(grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        if self.ema is not None:
            self.ema.step(self._trainable_parameters())
        if self.method_state is not None:
            self.method_state.after_optimizer_step(self._trainable_parameters())
        metrics = self._step_metrics()
        metrics["lr"] = lr
        if grad_norm is not None:
            metrics["grad_norm"] = float(grad_norm)
        return metrics

    def _check_finite(self, loss: Any) -> None:
        if not bool(self.acc.gather(loss.detach().reshape(1)).isfinite().all()):
            last = list_checkpoints(self.ckpt_root)
            kept = f"; last good checkpoint {last[-1][1]} is untouched" if last else ""
            raise TrainingDiverged(
                f"loss became {loss.item()} at step {self.step + 1} ({self.out_dir}){kept}"
            )

    def _check_finite_grad_norm(self, grad_norm: Any) -> None:
        """Stop before an optimizer step on an infinite or NaN gradient (clipping would zero it silently)."""
        value = float(grad_norm)
        if math.isfinite(value):
            return
        last = list_checkpoints(self.ckpt_root)
        kept = f"; last good checkpoint {last[-1][1]} is untouched" if last else ""
        raise TrainingDiverged(
            f"gradient norm became {value} at step {self.step + 1} ({self.out_dir}); the loss is too steep "
            f"to train on: lower beta (training.beta or iterations.N.beta, now {self.cfg.beta:g}) "
            f"or training.learning_rate{kept}"
        )

    def _step_metrics(self) -> dict[str, float]:
        """Each metric's mean over the step's micro-batches and processes: the whole global batch.

        Every micro-batch has the same size, so the mean of their means is the
        mean over all examples (as Diffusion-DPO and TRL log it).
        """
        import torch

        keys = sorted(self._window[0])
        local = torch.tensor([[m[k] for k in keys] for m in self._window], dtype=torch.float64).mean(0)
        everywhere = self.acc.gather(local.to(self.device).reshape(1, -1)).mean(0)
        self._window = []
        return dict(zip(keys, everywhere.tolist(), strict=True))

    def train(self) -> TrainResult:
        from tqdm.auto import tqdm

        resumed = self.maybe_resume()
        if self.acc.is_main_process:
            if resumed is not None:
                log.info("%s: resuming from step %d of %d", self.out_dir.name, resumed, self.cfg.max_steps)
            truncate_log(self.out_dir / LOG, self.step)  # lines past the checkpoint would repeat
            log.info(
                "%s: global batch %d = batch_size %d x %d processes x %d accumulation steps (%s)",
                self.out_dir.name,
                self.global_batch,
                self.cfg.batch_size,
                self.acc.num_processes,
                self.accumulation,
                _parallelism(self.acc),
            )
            if (asked := sharding_ignored(self.acc)) is not None:
                log.warning(
                    "%s was asked for, but accelerate runs this as %s (it sets up FSDP and DeepSpeed "
                    "only on GPUs): every process holds the whole model",
                    asked,
                    self.acc.distributed_type.value,
                )
        metrics: dict[str, float] = {}
        bar = tqdm(
            total=self.cfg.max_steps,
            initial=self.step,
            desc=f"{self.method} {self.out_dir.name}",
            unit="step",
            disable=not (self.show_progress and self.acc.is_main_process),
        )
        ended = self.stop_rule.decide() if self.stop_rule is not None else None
        with StopFlag() as stop, bar:
            while self.step < self.cfg.max_steps and ended is None:
                step_metrics = self.train_step()
                if step_metrics is None:
                    continue
                metrics = step_metrics
                bar.update(1)
                bar.set_postfix({k: f"{metrics[k]:.4g}" for k in ("loss", "implicit_acc") if k in metrics})
                if self.step % self.cfg.log_every == 0 or self.step == self.cfg.max_steps:
                    self.acc.log(
                        {self.log_prefix + k: v for k, v in metrics.items()},
                        step=self.log_step_offset + self.step,
                    )
                    self._append_log(metrics)
                if self.on_step is not None:
                    self.on_step(self)
                if self.cfg.save_model_every and self.step % self.cfg.save_model_every == 0:
                    self.save_snapshot()
                if self.stop_rule is not None and (ended := self.stop_rule.observe(self.step, metrics)):
                    log.info(
                        "%s: opponent beaten at step %d (%s)", self.out_dir.name, self.step, ended["reason"]
                    )
                    break
                interrupted = self._any_process_flag(stop.signal is not None)
                if interrupted or self.step % self.cfg.checkpointing_steps == 0:
                    path = self.save_checkpoint()
                    if interrupted:
                        raise TrainingInterrupted(
                            f"interrupted at step {self.step}; checkpoint saved to {path}; run the same command to resume"
                        )
        if self.ema is not None:
            self.ema.copy_to(self._trainable_parameters())
        self.final_unet = self.trained_unet()
        return TrainResult(
            steps=self.step,
            resumed_from=resumed,
            final_metrics=metrics,
            world_size=self.acc.num_processes,
            rank_fingerprints=self._rank_fingerprints(),
            global_batch=self.global_batch,
            ended=ended or ran_to_the_cap(self.step),
        )

    def _any_process_flag(self, flag: bool) -> bool:
        import torch

        value = torch.tensor([1.0 if flag else 0.0], device=self.device)
        return bool(self.acc.gather(value).sum() > 0)

    def _append_log(self, metrics: dict[str, float]) -> None:
        if not self.acc.is_main_process:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.out_dir / LOG, "a") as f:
            f.write(json.dumps({"step": self.step, **metrics}) + "\n")

    def _rank_fingerprints(self) -> list[str]:
        """Each process's weight hash: data-parallel replicas must stay identical (sharded: the gathered copies)."""
        import torch

        fp = fingerprint_module(self.final_unet)  # sharded runs: of the gathered model
        as_int = torch.tensor([int(fp, 16) & ((1 << 62) - 1)], dtype=torch.long, device=self.device)
        return [format(int(v), "x") for v in self.acc.gather(as_int).tolist()]


def _parallelism(accelerator: Accelerator) -> str:
    """How accelerate runs the processes, in words ("NO" is its name for a single process)."""
    kind = accelerator.distributed_type.value
    return "single process" if kind == "NO" else f"distributed: {kind}"
