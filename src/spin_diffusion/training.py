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
import errno
import functools
import hashlib
import json
import logging
import math
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from spin_diffusion.atomic import atomic_file, write_json_atomic, write_text_atomic
from spin_diffusion.errors import CheckpointError, UserError
from spin_diffusion.interrupt import Interrupted, StopFlag
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

log = logging.getLogger(__name__)

TRAIN_STATE = "train_state.json"
SUMMARY = "train_summary.json"


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the last good checkpoint is kept as it was."""


class TrainingInterrupted(Interrupted):
    """SIGINT/SIGTERM: a checkpoint was saved; the same command resumes (exit code 130)."""


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
    global_batch = batch_size * world_size
    per_epoch = max(1, num_examples // global_batch)
    epoch, pos = divmod(micro_step, per_epoch)
    perm = _epoch_permutation(num_examples, epoch, seed)
    if num_examples < global_batch:
        perm = perm.repeat(math.ceil(global_batch / num_examples))
    start = pos * global_batch + rank * batch_size
    return [(int(i), epoch) for i in perm[start : start + batch_size]]


@functools.lru_cache(maxsize=4)
def _epoch_permutation(num_examples: int, epoch: int, seed: int) -> torch.Tensor:
    """One epoch's seeded order, cached: planning a precompute asks for it once per micro-step."""
    import torch

    return torch.randperm(
        num_examples, generator=torch.Generator().manual_seed(example_seed(seed, -1, epoch))
    )


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
    """Reference errors looked up by (epoch, example): no reference model in memory.

    Entries the iteration was not expected to visit are NaN; meeting one means
    the table was made for other steps or settings, which must not pass silently.
    """

    table: torch.Tensor  # [epochs, N, 2] float32: (err_a, err_b), NaN where not computed
    source: str = "the precomputed reference errors"

    def errors(self, batch: Batch, latents: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        import torch

        e = torch.tensor(batch.epoch)
        i = torch.tensor(batch.indices)
        if int(e.max()) >= self.table.shape[0]:
            raise CheckpointError(
                f"{self.source} cover {self.table.shape[0]} epochs; epoch {int(e.max())} asked: "
                "delete the file to recompute it for these steps"
            )
        pair = self.table[e, i]  # [B, 2]
        missing = pair.isnan().any(dim=1)
        if bool(missing.any()):
            k = int(missing.nonzero()[0])
            raise CheckpointError(
                f"{self.source} have no entry for example {int(i[k])} in epoch {int(e[k])} "
                "(made for other steps or settings): delete the file to recompute it"
            )
        return torch.cat([pair[:, 0], pair[:, 1]]).to(latents.device)


@dataclass(frozen=True)
class ReferencePlan:
    """The micro-batches an iteration will run, every rank's, in training's batch layout.

    Precomputing exactly these batches (same items, same order, same size) makes
    the stored errors the numbers a live reference would give, and skips every
    (epoch, example) the steps never reach.
    """

    num_examples: int
    micro_steps: int  # max_steps x accumulation
    batch_size: int
    world_size: int
    seed: int

    @classmethod
    def for_training(
        cls, num_examples: int, cfg: TrainingConfig, world_size: int, seed: int
    ) -> ReferencePlan:
        accumulation = cfg.accumulation_steps(world_size)
        return cls(num_examples, cfg.max_steps * accumulation, cfg.batch_size, world_size, seed)

    def identity(self) -> dict[str, int]:
        """What decides which items are visited and how they are batched."""
        return {
            "num_examples": self.num_examples,
            "micro_steps": self.micro_steps,
            "batch_size": self.batch_size,
            "world_size": self.world_size,
            "seed": self.seed,
        }

    @property
    def epochs(self) -> int:
        per_epoch = max(1, self.num_examples // (self.batch_size * self.world_size))
        return (self.micro_steps - 1) // per_epoch + 1

    def micro_batches(self, start: int, end: int) -> list[list[tuple[int, int]]]:
        """Every rank's micro-batch for micro-steps ``start .. end-1``."""
        return [
            micro_batch_items(
                self.num_examples,
                m,
                batch_size=self.batch_size,
                rank=r,
                world_size=self.world_size,
                seed=self.seed,
            )
            for m in range(start, min(end, self.micro_steps))
            for r in range(self.world_size)
        ]


def reference_batch_errors(
    reference: ModuleReference,
    data: TrainingData,
    text_encoder: Any,
    tokenizer: Any,
    micro_batches: Sequence[Sequence[tuple[int, int]]],
    *,
    seed: int,
    num_train_timesteps: int,
    caption_dropout: float,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
) -> dict[str, torch.Tensor]:
    """Reference errors of whole micro-batches, under the autocast training uses.

    Returns ``epoch`` and ``index`` ([M] int64) and ``errors`` ([M, 2] float32).
    """
    import torch

    epochs, indices, errors = [], [], []
    device = next(reference.unet.parameters()).device
    for items in micro_batches:
        batch = make_batch(
            data, items, seed=seed, num_train_timesteps=num_train_timesteps, caption_dropout=caption_dropout
        )
        emb = encode_prompts(text_encoder, tokenizer, batch.captions)
        lat = torch.cat([batch.latents_a, batch.latents_b]).to(device)
        with autocast():
            err = reference.errors(batch, lat, emb.repeat(2, 1, 1)).float().cpu()
        b = len(items)
        errors.append(torch.stack([err[:b], err[b:]], dim=1))
        epochs.append(torch.tensor(batch.epoch, dtype=torch.long))
        indices.append(torch.tensor(batch.indices, dtype=torch.long))
    return {"epoch": torch.cat(epochs), "index": torch.cat(indices), "errors": torch.cat(errors)}


REFERENCE_CHUNK = "chunk-{:05d}.safetensors"


def _chunk_ranges(plan: ReferencePlan, chunk_micro_steps: int) -> list[tuple[int, int, int]]:
    """(chunk number, first micro-step, end micro-step) of every chunk of the plan."""
    starts = range(0, plan.micro_steps, chunk_micro_steps)
    return [(c, s, min(s + chunk_micro_steps, plan.micro_steps)) for c, s in enumerate(starts)]


def _chunk_done(path: Path, key: str, span: str) -> bool:
    """A chunk is done if its file opens completely and was made for this key and span."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception:  # noqa: BLE001 - missing or damaged: compute it again
        return False
    return meta.get("key") == key and meta.get("micro_steps") == span


def precompute_reference_errors(
    reference: ModuleReference,
    data: TrainingData,
    text_encoder: Any,
    tokenizer: Any,
    *,
    plan: ReferencePlan,
    chunk_dir: Path,
    key: dict[str, Any],
    num_train_timesteps: int,
    caption_dropout: float,
    rank: int = 0,
    barrier: Callable[[], Any] | None = None,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
    chunk_micro_steps: int | None = None,
    show_progress: bool = True,
) -> torch.Tensor:
    """Reference errors of every item the plan visits (NaN elsewhere), split across ranks, resumable.

    The plan's micro-steps are cut into chunks; chunk ``c`` is computed by rank
    ``c % world_size`` and written to ``chunk_dir`` on its own, so an interrupted
    precompute redoes only missing chunks. After ``barrier()`` every rank merges
    all chunks into the dense ``[epochs, N, 2]`` table. Chunks hold at most 64
    micro-steps, fewer when that is needed to give every rank a share.
    """
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    chunk_dir = Path(chunk_dir)
    chunk_dir.mkdir(parents=True, exist_ok=True)
    layout = {k: v for k, v in plan.identity().items() if k != "micro_steps"}  # a chunk records its own span
    chunk_key = json.dumps(
        {**key, **layout, "num_train_timesteps": num_train_timesteps, "caption_dropout": caption_dropout},
        sort_keys=True,
        default=str,
    )
    if chunk_micro_steps is None:
        chunk_micro_steps = max(1, min(64, math.ceil(plan.micro_steps / plan.world_size)))
    chunks = _chunk_ranges(plan, chunk_micro_steps)
    todo = [
        (c, s, e)
        for c, s, e in chunks
        if c % plan.world_size == rank
        and not _chunk_done(chunk_dir / REFERENCE_CHUNK.format(c), chunk_key, f"{s}:{e}")
    ]
    for c, s, e in tqdm(todo, desc="reference errors", unit="chunk", disable=not show_progress):
        part = reference_batch_errors(
            reference,
            data,
            text_encoder,
            tokenizer,
            plan.micro_batches(s, e),
            seed=plan.seed,
            num_train_timesteps=num_train_timesteps,
            caption_dropout=caption_dropout,
            autocast=autocast,
        )
        with atomic_file(chunk_dir / REFERENCE_CHUNK.format(c)) as tmp:
            save_file(
                part, str(tmp), metadata={"key": chunk_key, "micro_steps": f"{s}:{e}", "rank": str(rank)}
            )
    if barrier is not None:
        barrier()
    return merge_reference_chunks(chunk_dir, chunks, plan)


def merge_reference_chunks(
    chunk_dir: Path, chunks: Sequence[tuple[int, int, int]], plan: ReferencePlan
) -> torch.Tensor:
    """The dense table from the chunk files: NaN for every (epoch, example) no step visits."""
    import torch
    from safetensors.torch import load_file

    table = torch.full((plan.epochs, plan.num_examples, 2), float("nan"))
    for c, _, _ in chunks:
        path = Path(chunk_dir) / REFERENCE_CHUNK.format(c)
        try:
            part = load_file(str(path))
        except Exception as exc:  # noqa: BLE001 - another rank failed or the file is damaged
            raise CheckpointError(f"reference errors chunk {path} is missing or damaged ({exc})") from None
        table[part["epoch"], part["index"]] = part["errors"]
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
COMPLETE = "complete.json"
LOG = "train_log.jsonl"


def list_checkpoints(ckpt_root: Path) -> list[tuple[int, Path]]:
    """Checkpoints whose save finished (they hold the complete marker), oldest first."""
    return [(step, p) for step, p in _step_dirs(ckpt_root) if (p / COMPLETE).is_file()]


def _step_dirs(ckpt_root: Path) -> list[tuple[int, Path]]:
    found = []
    if ckpt_root.is_dir():
        for p in ckpt_root.iterdir():
            m = _STEP_DIR.match(p.name)
            if m and p.is_dir():
                found.append((int(m.group(1)), p))
    return sorted(found)


def prune_checkpoints(ckpt_root: Path, keep: int | None) -> None:
    if keep is None:
        return
    for _, path in list_checkpoints(ckpt_root)[:-keep]:
        shutil.rmtree(path, ignore_errors=True)


def _file_digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def write_complete_marker(ckpt: Path) -> None:
    """Written after every other file: size and hash of each, so a resume can tell a torn save."""
    files = {
        p.relative_to(ckpt).as_posix(): {"size": p.stat().st_size, "blake2b": _file_digest(p)}
        for p in sorted(ckpt.rglob("*"))
        if p.is_file() and p.name != COMPLETE
    }
    write_json_atomic(ckpt / COMPLETE, {"files": files})


def checkpoint_problem(ckpt: Path) -> str | None:
    """Why ``ckpt`` cannot be resumed from, or None when every file is as it was written."""
    marker = ckpt / COMPLETE
    if not marker.is_file():
        return f"it has no {COMPLETE} (its save did not finish)"
    try:
        files = json.loads(marker.read_text())["files"]
        expected = {name: (int(v["size"]), str(v["blake2b"])) for name, v in files.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return f"its {COMPLETE} is unreadable"
    if TRAIN_STATE not in expected:
        return f"it has no {TRAIN_STATE}"
    for name, (size, digest) in expected.items():
        path = ckpt / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, {size} were written"
        if _file_digest(path) != digest:
            return f"{name} does not match the hash recorded when it was written"
    return None


def newest_resumable(ckpt_root: Path) -> tuple[tuple[int, Path] | None, list[tuple[Path, str]]]:
    """The newest checkpoint that verifies, and the newer ones skipped with the reason for each."""
    skipped: list[tuple[Path, str]] = []
    for step, path in reversed(_step_dirs(ckpt_root)):
        problem = checkpoint_problem(path)
        if problem is None:
            return (step, path), skipped
        skipped.append((path, problem))
    return None, skipped


def remove_stray_temporaries(ckpt_root: Path) -> None:
    """Drop ``.step-N.tmp`` directories a failed or killed save left behind."""
    if ckpt_root.is_dir():
        for tmp in ckpt_root.glob(".step-*.tmp"):
            shutil.rmtree(tmp, ignore_errors=True)


_DISK_FULL_WORDS = ("No space left", "StorageFull", "Disk quota exceeded")


def _is_disk_full(exc: BaseException, where: Path) -> bool:
    """Whether a failed save ran out of disk (call before the partial files are removed).

    An OSError says so by errno. safetensors and torch.save wrap the OS error in
    their own exceptions: safetensors keeps the OS text, torch.save only says
    "file write failed", so that one counts when the disk is nearly full.
    """
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(seen)
        if any(word in text for word in _DISK_FULL_WORDS):
            return True
        if "write failed" in text and _nearly_full(where):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _nearly_full(where: Path) -> bool:
    try:
        usage = shutil.disk_usage(where)
    except OSError:
        return False
    return usage.free < max(256 * 2**20, usage.total // 100)


def truncate_log(path: Path, step: int) -> None:
    """Keep only log lines up to ``step``: later ones were written after the checkpoint resumed from.

    Lines torn by a kill are dropped too. Rewritten atomically, and only when something changes.
    """
    if not path.is_file():
        return
    text = path.read_text(encoding="utf-8", errors="replace")
    kept = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
            kept.append(line + "\n")
    if "".join(kept) != text:
        write_text_atomic(path, "".join(kept))


# --------------------------------------------------------------------------- the loop


@dataclass
class TrainResult:
    steps: int
    resumed_from: int | None
    final_metrics: dict[str, float]
    world_size: int
    rank_fingerprints: list[str]
    global_batch: int = 0  # examples per optimizer step: batch_size x processes x accumulation


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
        self.accumulation = self.cfg.accumulation_steps(self.acc.num_processes)
        self.global_batch = self.cfg.batch_size * self.acc.num_processes * self.accumulation

    # -- checkpoints

    def save_checkpoint(self) -> Path:
        """accelerate state (model, optimizer, RNG) plus our step counters, written atomically.

        Everything goes into ``.step-N.tmp``; the complete marker is written last
        and only then is the directory renamed, so a resume never meets a torn save.
        """
        final = self.ckpt_root / f"step-{self.step}"
        tmp = self.ckpt_root / f".step-{self.step}.tmp"
        if self.acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        self.acc.wait_for_everyone()
        try:
            self._write_checkpoint(tmp)
        except Exception as exc:  # any failure: no partial save may stay behind
            full = _is_disk_full(exc, self.ckpt_root)
            shutil.rmtree(tmp, ignore_errors=True)
            if full:
                raise UserError(self._disk_full_message(final)) from None
            raise
        if self.acc.is_main_process:
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
            prune_checkpoints(self.ckpt_root, self.cfg.checkpoints_total_limit)
        self.acc.wait_for_everyone()
        return final

    def _write_checkpoint(self, tmp: Path) -> None:
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
            write_complete_marker(tmp)

    def _disk_full_message(self, final: Path) -> str:
        free = shutil.disk_usage(self.ckpt_root).free if self.ckpt_root.exists() else 0
        last = list_checkpoints(self.ckpt_root)
        kept = f" from {last[-1][1]}" if last else ""
        return (
            f"disk full: could not save checkpoint {final} ({free / 2**20:.0f} MiB free on that disk); "
            f"the partial save was removed; free some space and run the same command to resume{kept}"
        )

    def save_snapshot(self) -> Path:
        """The model at this step in the layout of ``iter-k/model`` (loadable by diffusers and evaluate)."""
        from spin_diffusion.models import save_trained_unet

        path = self.out_dir / "snapshots" / f"step-{self.step}"
        if self.acc.is_main_process:
            save_trained_unet(self.acc.unwrap_model(self.unet), path, previous=self.previous_model)
        self.acc.wait_for_everyone()
        return path

    def maybe_resume(self) -> int | None:
        """Load the newest checkpoint that verifies; newer damaged ones are moved aside, saying why."""
        if self.acc.is_main_process:
            remove_stray_temporaries(self.ckpt_root)
        self.acc.wait_for_everyone()
        found, skipped = newest_resumable(self.ckpt_root)
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            for path, why in skipped:
                aside = path.with_name(f".{path.name}.damaged")
                shutil.rmtree(aside, ignore_errors=True)
                path.rename(aside)
                older = f"resuming from {found[1].name}" if found else "no older checkpoint: starting over"
                log.warning("skipping checkpoint %s: %s; moved to %s; %s", path, why, aside.name, older)
        self.acc.wait_for_everyone()
        if found is None:
            return None
        step, path = found
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
        accum = self.accumulation
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
        if self.acc.is_main_process:
            truncate_log(self.out_dir / LOG, self.step)  # lines past the checkpoint would repeat
            log.info(
                "%s: global batch %d = batch_size %d x %d processes x %d accumulation steps",
                self.out_dir.name,
                self.global_batch,
                self.cfg.batch_size,
                self.acc.num_processes,
                self.accumulation,
            )
        metrics: dict[str, float] = {}
        bar = tqdm(
            total=self.cfg.max_steps,
            initial=self.step,
            desc=f"{self.method} {self.out_dir.name}",
            unit="step",
            disable=not (self.show_progress and self.acc.is_main_process),
        )
        with StopFlag() as stop, bar:
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
            global_batch=self.global_batch,
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
        "global_batch": result.global_batch,
        "rank_fingerprints": result.rank_fingerprints,
        **(extra or {}),
    }
    write_json_atomic(out_dir / SUMMARY, data)
