"""One accelerate training loop for SFT, Diffusion-DPO and SPIN-Diffusion.

The methods differ only in what a batch holds (one latent, or a pair) and in
which objective from :mod:`spin_diffusion.objectives` turns per-sample errors
into a loss. Every random choice of a training example (its timestep, noise,
flip, caption dropout, which opponent sample it is paired with) comes from a
seed derived from (run seed, example index, epoch): the run is reproducible,
resumes exactly from a step count, and the reference errors can be computed
ahead of time (``precompute_reference``) with identical results.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import re
import shutil
import signal
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from spin_diffusion.atomic import write_json_atomic
from spin_diffusion.errors import UserError
from spin_diffusion.objectives import (
    dpo_loss,
    min_snr_weights,
    pair_diagnostics,
    sft_loss,
    spin_loss,
)

if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator

    from spin_diffusion.config import TrainingConfig

TRAIN_STATE = "train_state.json"
SUMMARY = "train_summary.json"


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the last good checkpoint is kept as it was."""


class TrainingInterrupted(UserError):
    """SIGINT/SIGTERM: a checkpoint was saved; the same command resumes."""

    exit_code = 130


# --------------------------------------------------------------------------- data


class TrainingData(Protocol):
    """What the loop trains on: per example a caption and one latent (SFT) or a pair (DPO, SPIN)."""

    paired: bool

    def __len__(self) -> int: ...

    def caption(self, index: int) -> str: ...

    def latents(
        self, index: int, epoch: int, rng: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(a, b)``: a = real/winner latent, b = generated/loser latent (None for SFT)."""
        ...


def example_seed(seed: int, index: int, epoch: int, purpose: str = "") -> int:
    digest = hashlib.blake2b(f"{seed}:{index}:{epoch}:{purpose}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


@dataclass
class Batch:
    indices: list[int]
    epoch: list[int]
    captions: list[str]
    latents_a: torch.Tensor
    latents_b: torch.Tensor | None
    timesteps: torch.Tensor
    noise: torch.Tensor


def make_batch(
    data: TrainingData,
    items: Sequence[tuple[int, int]],
    *,
    seed: int,
    num_train_timesteps: int,
    caption_dropout: float = 0.0,
) -> Batch:
    """Assemble a batch of (index, epoch) items with per-item seeded t, noise and choices."""
    import torch

    caps, lat_a, lat_b, ts, noises = [], [], [], [], []
    for index, epoch in items:
        gen = torch.Generator().manual_seed(example_seed(seed, index, epoch))
        a, b = data.latents(index, epoch, gen)
        a = a.float()
        t = int(torch.randint(0, num_train_timesteps, (1,), generator=gen))
        noise = torch.randn(a.shape, generator=gen)
        drop = caption_dropout > 0 and float(torch.rand(1, generator=gen)) < caption_dropout
        caps.append("" if drop else data.caption(index))
        lat_a.append(a)
        if b is not None:
            lat_b.append(b.float())
        ts.append(t)
        noises.append(noise)
    return Batch(
        indices=[i for i, _ in items],
        epoch=[e for _, e in items],
        captions=caps,
        latents_a=torch.stack(lat_a),
        latents_b=torch.stack(lat_b) if lat_b else None,
        timesteps=torch.tensor(ts, dtype=torch.long),
        noise=torch.stack(noises),
    )


def micro_batch_items(
    num_examples: int, micro_step: int, *, batch_size: int, rank: int, world_size: int, seed: int
) -> list[tuple[int, int]]:
    """The (index, epoch) items of one process's micro-batch number ``micro_step``.

    Each epoch is a seeded permutation; a global micro-batch takes
    ``batch_size * world_size`` consecutive entries and each rank its slice.
    A dataset smaller than a global batch is tiled. Pure: resuming needs only
    the micro-step count.
    """
    import torch

    global_batch = batch_size * world_size
    per_epoch = max(1, num_examples // global_batch)
    epoch, pos = divmod(micro_step, per_epoch)
    perm = torch.randperm(
        num_examples, generator=torch.Generator().manual_seed(example_seed(seed, -1, epoch))
    )
    if num_examples < global_batch:
        perm = perm.repeat(math.ceil(global_batch / num_examples))
    start = pos * global_batch + rank * batch_size
    return [(int(i), epoch) for i in perm[start : start + batch_size]]


def epochs_needed(num_examples: int, cfg: TrainingConfig, world_size: int) -> int:
    per_epoch = max(1, num_examples // (cfg.batch_size * world_size))
    return math.ceil(cfg.max_steps * cfg.gradient_accumulation_steps / per_epoch)


# --------------------------------------------------------------------------- schedule


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


# --------------------------------------------------------------------------- model side


def encode_prompts(text_encoder: Any, tokenizer: Any, captions: Sequence[str]) -> torch.Tensor:
    """Frozen text-encoder hidden states, as the pipeline conditions the UNet."""
    import torch

    tokens = tokenizer(
        list(captions),
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        return text_encoder(tokens.input_ids.to(text_encoder.device))[0]


class Reference(Protocol):
    def errors(self, batch: Batch, latents: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """Reference errors for the (doubled) batch, shape ``[2B]``, no gradient."""
        ...


@dataclass
class ModuleReference:
    """A frozen UNet (full fine-tuning) or the trained UNet with adapters disabled (LoRA)."""

    unet: Any
    noise_scheduler: Any
    disable_adapters: bool = False

    def errors(self, batch: Batch, latents: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        import torch

        from spin_diffusion.models import adapters_disabled, prediction_error

        ctx = adapters_disabled(self.unet) if self.disable_adapters else contextlib.nullcontext()
        t2, eps2 = batch.timesteps.repeat(2), batch.noise.repeat(2, 1, 1, 1)
        with torch.no_grad(), ctx:
            return prediction_error(
                self.unet, self.noise_scheduler, latents, emb, t2.to(latents.device), eps2.to(latents.device)
            ).float()


@dataclass
class PrecomputedReference:
    """Reference errors looked up by (epoch, example): no reference model in memory."""

    table: torch.Tensor  # [epochs, N, 2] float32: (err_a, err_b)

    def errors(self, batch: Batch, latents: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        import torch

        e = torch.tensor(batch.epoch)
        i = torch.tensor(batch.indices)
        if int(e.max()) >= self.table.shape[0]:
            raise UserError(
                f"precomputed reference errors cover {self.table.shape[0]} epochs; epoch {int(e.max())} asked"
            )
        pair = self.table[e, i]  # [B, 2]
        return torch.cat([pair[:, 0], pair[:, 1]]).to(latents.device)


def precompute_reference_errors(
    reference: ModuleReference,
    data: TrainingData,
    text_encoder: Any,
    tokenizer: Any,
    *,
    epochs: int,
    seed: int,
    num_train_timesteps: int,
    caption_dropout: float,
    batch_size: int = 16,
    show_progress: bool = True,
) -> torch.Tensor:
    """Reference errors for every (epoch, example) the run will visit, in inference mode."""
    import torch
    from tqdm.auto import tqdm

    n = len(data)
    table = torch.zeros(epochs, n, 2)
    items = [(i, e) for e in range(epochs) for i in range(n)]
    for start in tqdm(range(0, len(items), batch_size), desc="reference errors", disable=not show_progress):
        chunk = items[start : start + batch_size]
        batch = make_batch(
            data, chunk, seed=seed, num_train_timesteps=num_train_timesteps, caption_dropout=caption_dropout
        )
        emb = encode_prompts(text_encoder, tokenizer, batch.captions)
        device = next(reference.unet.parameters()).device
        lat = torch.cat([batch.latents_a, batch.latents_b]).to(device)
        err = reference.errors(batch, lat, emb.repeat(2, 1, 1))
        b = len(chunk)
        for k, (i, e) in enumerate(chunk):
            table[e, i, 0] = err[k]
            table[e, i, 1] = err[b + k]
    return table


# --------------------------------------------------------------------------- loss


@dataclass
class LossOutput:
    loss: torch.Tensor
    metrics: dict[str, float] = field(default_factory=dict)


def compute_loss(
    method: str,
    cfg: TrainingConfig,
    unet: Any,
    noise_scheduler: Any,
    reference: Reference | None,
    batch: Batch,
    emb: torch.Tensor,
) -> LossOutput:
    """One forward of the trained model on the whole (concatenated) batch, then the objective."""
    import torch

    from spin_diffusion.models import prediction_error

    device = emb.device
    if method == "sft":
        t, eps = batch.timesteps.to(device), batch.noise.to(device)
        err = prediction_error(unet, noise_scheduler, batch.latents_a.to(device), emb, t, eps)
        weights = None
        if cfg.snr_gamma is not None:
            abar = noise_scheduler.alphas_cumprod.to(device)[t]
            weights = min_snr_weights(
                abar / (1 - abar), cfg.snr_gamma, noise_scheduler.config.prediction_type
            )
        loss = sft_loss(err, weights)
        return LossOutput(loss, {"loss": loss.item(), "model_err": err.mean().item()})

    if reference is None or batch.latents_b is None:
        raise ValueError(f"method {method} needs pairs and a reference")
    b = len(batch.indices)
    latents = torch.cat([batch.latents_a, batch.latents_b]).to(device)
    emb2 = emb.repeat(2, 1, 1)
    t2, eps2 = batch.timesteps.repeat(2).to(device), batch.noise.repeat(2, 1, 1, 1).to(device)
    model_err = prediction_error(unet, noise_scheduler, latents, emb2, t2, eps2)
    ref_err = reference.errors(batch, latents, emb2).detach()
    m_a, m_b, r_a, r_b = model_err[:b], model_err[b:], ref_err[:b], ref_err[b:]
    objective = spin_loss if method == "spin" else dpo_loss
    per_sample = objective(m_a, r_a, m_b, r_b, cfg.beta, cfg.loss_type)
    loss = per_sample.mean()
    names = ("real", "gen") if method == "spin" else ("win", "lose")
    diag = pair_diagnostics(m_a, r_a, m_b, r_b, cfg.beta).as_dict(*names)
    metrics = {
        "loss": loss.item(),
        **diag,
        f"model_err_{names[0]}": m_a.mean().item(),
        f"model_err_{names[1]}": m_b.mean().item(),
        f"ref_err_{names[0]}": r_a.mean().item(),
        f"ref_err_{names[1]}": r_b.mean().item(),
    }
    return LossOutput(loss, metrics)


# --------------------------------------------------------------------------- checkpoints


_STEP_DIR = re.compile(r"^step-(\d+)$")


def list_checkpoints(ckpt_root: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (those with a train_state.json), oldest first."""
    found = []
    if ckpt_root.is_dir():
        for p in ckpt_root.iterdir():
            m = _STEP_DIR.match(p.name)
            if m and (p / TRAIN_STATE).is_file():
                found.append((int(m.group(1)), p))
    return sorted(found)


def prune_checkpoints(ckpt_root: Path, keep: int | None) -> None:
    if keep is None:
        return
    for _, path in list_checkpoints(ckpt_root)[:-keep]:
        shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------- the loop


@dataclass
class TrainResult:
    steps: int
    resumed_from: int | None
    final_metrics: dict[str, float]
    world_size: int
    rank_fingerprints: list[str]


class _StopFlag:
    """Turns SIGINT/SIGTERM into a flag the loop checks after each optimizer step."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: no handler
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.signal = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


class Trainer:
    """Trains ``unet`` for ``cfg.max_steps`` optimizer steps with checkpoints under ``out_dir``."""

    def __init__(
        self,
        *,
        method: str,
        cfg: TrainingConfig,
        accelerator: Accelerator,
        unet: Any,
        noise_scheduler: Any,
        text_encoder: Any,
        tokenizer: Any,
        data: TrainingData,
        reference: Reference | None,
        out_dir: Path,
        seed: int,
        caption_dropout: float = 0.0,
        show_progress: bool = True,
        log_prefix: str = "",
        previous_model: Path | None = None,
    ):
        self.method = method
        self.cfg = cfg
        self.acc = accelerator
        self.unet = unet
        self.noise_scheduler = noise_scheduler
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.data = data
        self.reference = reference
        self.out_dir = Path(out_dir)
        self.ckpt_root = self.out_dir / "checkpoints"
        self.seed = seed
        self.caption_dropout = caption_dropout
        self.show_progress = show_progress
        self.log_prefix = log_prefix
        self.previous_model = previous_model  # iteration k-1's model/ when a LoRA trains on top of it
        self.step = 0
        self.micro_step = 0
        self._setup()

    def _setup(self) -> None:
        import torch

        if self.cfg.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
        self.unet.train()
        params = [p for p in self.unet.parameters() if p.requires_grad]
        if not params:
            raise UserError("the model has no trainable parameters")
        optimizer = torch.optim.AdamW(
            params,
            lr=self.cfg.learning_rate,
            betas=(self.cfg.adam_beta1, self.cfg.adam_beta2),
            eps=self.cfg.adam_epsilon,
            weight_decay=self.cfg.weight_decay,
        )
        self.unet, self.optimizer = self.acc.prepare(self.unet, optimizer)
        self.ema = None
        if self.cfg.use_ema:
            from diffusers.training_utils import EMAModel

            self.ema = EMAModel(self.acc.unwrap_model(self.unet).parameters(), decay=self.cfg.ema_decay)
        self.device = self.acc.device
        self.text_encoder.to(self.device)

    # -- checkpoints

    def save_checkpoint(self) -> Path:
        """accelerate state (model, optimizer, RNG) plus our step counters, written atomically."""
        final = self.ckpt_root / f"step-{self.step}"
        tmp = self.ckpt_root / f".step-{self.step}.tmp"
        if self.acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        self.acc.wait_for_everyone()
        self.acc.save_state(str(tmp))
        if self.ema is not None and self.acc.is_main_process:
            from safetensors.torch import save_file

            save_file(
                {str(i): p.detach().cpu().contiguous() for i, p in enumerate(self.ema.shadow_params)},
                str(tmp / "ema.safetensors"),
            )
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            state = {"step": self.step, "micro_step": self.micro_step, "world_size": self.acc.num_processes}
            (tmp / TRAIN_STATE).write_text(json.dumps(state))
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
            prune_checkpoints(self.ckpt_root, self.cfg.checkpoints_total_limit)
        self.acc.wait_for_everyone()
        return final

    def save_snapshot(self) -> Path:
        """The model at this step in the layout of ``iter-k/model`` (loadable by diffusers and evaluate)."""
        from spin_diffusion.models import save_trained_unet

        path = self.out_dir / "snapshots" / f"step-{self.step}"
        if self.acc.is_main_process:
            save_trained_unet(self.acc.unwrap_model(self.unet), path, previous=self.previous_model)
        self.acc.wait_for_everyone()
        return path

    def maybe_resume(self) -> int | None:
        found = list_checkpoints(self.ckpt_root)
        if not found:
            return None
        step, path = found[-1]
        state = json.loads((path / TRAIN_STATE).read_text())
        if state.get("world_size") != self.acc.num_processes:
            raise UserError(
                f"{path} was written by {state.get('world_size')} processes, this run has {self.acc.num_processes}; "
                "resume with the same number of processes"
            )
        self.acc.load_state(str(path))
        if self.ema is not None and (path / "ema.safetensors").is_file():
            from safetensors.torch import load_file

            saved = load_file(str(path / "ema.safetensors"))
            for i, p in enumerate(self.ema.shadow_params):
                p.data.copy_(saved[str(i)])
        self.step, self.micro_step = state["step"], state["micro_step"]
        return step

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
        )

    def set_lr(self) -> float:
        lr = self.cfg.learning_rate * lr_factor(self.step, self.cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def train_step(self) -> dict[str, float] | None:
        """One micro-batch; returns metrics when it completed an optimizer step.

        Accumulation is counted here from ``micro_step`` (not by accelerate's own
        counter) so a resumed run syncs on exactly the same micro-steps.
        """
        batch = self.next_batch()
        lr = self.set_lr()
        accum = self.cfg.gradient_accumulation_steps
        sync = (self.micro_step + 1) % accum == 0
        with contextlib.nullcontext() if sync else self.acc.no_sync(self.unet):
            emb = encode_prompts(self.text_encoder, self.tokenizer, batch.captions)
            with self.acc.autocast():
                out = compute_loss(
                    self.method, self.cfg, self.unet, self.noise_scheduler, self.reference, batch, emb
                )
            if not bool(self.acc.gather(out.loss.detach().reshape(1)).isfinite().all()):
                last = list_checkpoints(self.ckpt_root)
                kept = f"; last good checkpoint {last[-1][1]} is untouched" if last else ""
                raise TrainingDiverged(
                    f"loss became {out.loss.item()} at step {self.step + 1} ({self.out_dir}){kept}"
                )
            self.acc.backward(out.loss / accum)
        self.micro_step += 1
        if not sync:
            return None
        grad_norm = None
        if self.cfg.max_grad_norm is not None:
            grad_norm = self.acc.clip_grad_norm_(self.unet.parameters(), self.cfg.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        if self.ema is not None:
            self.ema.step(self.acc.unwrap_model(self.unet).parameters())
        metrics = dict(out.metrics)
        metrics["lr"] = lr
        if grad_norm is not None:
            metrics["grad_norm"] = float(grad_norm)
        return metrics

    def train(self) -> TrainResult:
        from tqdm.auto import tqdm

        resumed = self.maybe_resume()
        metrics: dict[str, float] = {}
        bar = tqdm(
            total=self.cfg.max_steps,
            initial=self.step,
            desc=f"{self.method} {self.out_dir.name}",
            unit="step",
            disable=not (self.show_progress and self.acc.is_main_process),
        )
        with _StopFlag() as stop, bar:
            while self.step < self.cfg.max_steps:
                step_metrics = self.train_step()
                if step_metrics is None:
                    continue
                metrics = step_metrics
                bar.update(1)
                bar.set_postfix({k: f"{metrics[k]:.4g}" for k in ("loss", "implicit_acc") if k in metrics})
                if self.step % self.cfg.log_every == 0 or self.step == self.cfg.max_steps:
                    self.acc.log({self.log_prefix + k: v for k, v in metrics.items()}, step=self.step)
                    self._append_log(metrics)
                if self.cfg.save_model_every and self.step % self.cfg.save_model_every == 0:
                    self.save_snapshot()
                interrupted = self._any_process_flag(stop.signal is not None)
                if interrupted or self.step % self.cfg.checkpointing_steps == 0:
                    path = self.save_checkpoint()
                    if interrupted:
                        raise TrainingInterrupted(
                            f"interrupted at step {self.step}; checkpoint saved to {path}; run the same command to resume"
                        )
        if self.ema is not None:
            self.ema.copy_to(self.acc.unwrap_model(self.unet).parameters())
        return TrainResult(
            steps=self.step,
            resumed_from=resumed,
            final_metrics=metrics,
            world_size=self.acc.num_processes,
            rank_fingerprints=self._rank_fingerprints(),
        )

    def _any_process_flag(self, flag: bool) -> bool:
        import torch

        value = torch.tensor([1.0 if flag else 0.0], device=self.device)
        return bool(self.acc.gather(value).sum() > 0)

    def _append_log(self, metrics: dict[str, float]) -> None:
        if not self.acc.is_main_process:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.out_dir / "train_log.jsonl", "a") as f:
            f.write(json.dumps({"step": self.step, **metrics}) + "\n")

    def _rank_fingerprints(self) -> list[str]:
        """Each process's weight hash: data-parallel replicas must stay identical."""
        import torch

        from spin_diffusion.models import fingerprint_module

        fp = fingerprint_module(self.acc.unwrap_model(self.unet))
        as_int = torch.tensor([int(fp, 16) & ((1 << 62) - 1)], dtype=torch.long, device=self.device)
        return [format(int(v), "x") for v in self.acc.gather(as_int).tolist()]


def write_summary(out_dir: Path, result: TrainResult, extra: dict[str, Any] | None = None) -> None:
    data = {
        "steps": result.steps,
        "resumed_from": result.resumed_from,
        "final_metrics": result.final_metrics,
        "world_size": result.world_size,
        "rank_fingerprints": result.rank_fingerprints,
        **(extra or {}),
    }
    write_json_atomic(out_dir / SUMMARY, data)
