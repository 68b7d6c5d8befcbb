"""Typed, validated run configuration: one YAML file per run plus ``--set`` overrides.

The resolved configuration is saved into the run directory, and on resume the
parts that decide what the results mean (base model, data, method) must match.
Nothing here imports torch, so config errors answer in about a second.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, ValidationInfo, field_validator, model_validator

from spin_diffusion.config.base import Strict, format_validation_error, read_yaml
from spin_diffusion.config.data import DataConfig
from spin_diffusion.config.evaluation import EvaluationConfig
from spin_diffusion.config.methods import (
    AdaptiveDpoConfig,
    DmpoConfig,
    InversionConfig,
    KtoConfig,
    SeeDpoConfig,
    check_family_settings,
)
from spin_diffusion.config.model import ModelConfig
from spin_diffusion.config.overrides import apply_overrides
from spin_diffusion.config.path_identity import path_insensitive, same_location
from spin_diffusion.config.sampling import SamplingConfig
from spin_diffusion.config.stopping import StopWhenConfig, check_stop_when
from spin_diffusion.errors import ConfigError

Method = Literal[
    "sft", "dpo", "spin", "spin-exact", "dmpo", "see-dpo", "adaptive-dpo", "adaptive-dpo-lite", "kto", "inversion-dpo"
]  # fmt: skip
# Methods that train once on preference pairs against the frozen base (docs/methods.md).
PREFERENCE_METHODS: frozenset[str] = frozenset(
    {"dpo", "dmpo", "see-dpo", "adaptive-dpo", "adaptive-dpo-lite", "kto", "inversion-dpo"}
)
# Methods that sample from the opponent every iteration and may run several iterations.
SELF_PLAY_METHODS = ("spin", "spin-exact")
#: Samplers whose steps spin-exact can store and replay (sampling.trajectories implements them); their
#: stored latents live in the variance-preserving space x_t = sqrt(abar) x0 + sqrt(1-abar) eps.
TRAJECTORY_SCHEDULERS = ("ddim", "dpmsolver++")


class TrainingConfig(Strict):
    """Optimizer, schedule and objective: shared by SFT, DPO and SPIN."""

    learning_rate: float = Field(2e-5, gt=0, description="peak learning rate (AdamW)")
    weight_decay: float = Field(1e-2, ge=0, description="AdamW weight decay")
    adam_beta1: float = Field(0.9, ge=0, lt=1, description="AdamW beta1")
    adam_beta2: float = Field(0.999, ge=0, lt=1, description="AdamW beta2")
    adam_epsilon: float = Field(1e-8, gt=0, description="AdamW epsilon")
    lr_scheduler: Literal["linear", "constant", "cosine"] = Field(
        "linear", description="decay after warm-up (linear: to 0 at max_steps)"
    )
    warmup_steps: int = Field(0, ge=0, description="linear warm-up, in optimizer steps")
    max_steps: int = Field(100, ge=1, description="optimizer steps per iteration (the cap, with stop_when)")
    stop_when: StopWhenConfig | None = Field(
        None, description="end an iteration early when the opponent is beaten; null: run max_steps"
    )
    batch_size: int = Field(8, ge=1, description="pairs (or images for SFT) per process per micro-step")
    gradient_accumulation_steps: int = Field(1, ge=1, description="micro-steps per optimizer step")
    global_batch_size: int | None = Field(
        None,
        ge=1,
        description="examples per optimizer step over all processes; when set, gradient_accumulation_steps "
        "is derived as global_batch_size / (batch_size x processes) (an error if it does not divide) "
        "and the value above is ignored; null: use gradient_accumulation_steps",
    )
    max_grad_norm: float | None = Field(1.0, gt=0, description="gradient clipping norm; null disables")
    mixed_precision: Literal["no", "fp16", "bf16"] | None = Field(
        None,
        description="accelerate mixed precision; null: what accelerate is configured with "
        "(`accelerate launch --mixed_precision`, its config file, else no). The value used is recorded "
        "in runs/NAME/config.yaml and iter-k/iteration.json",
    )
    gradient_checkpointing: bool = Field(False, description="trade compute for activation memory")
    optimizer: Literal["adamw", "adamw_8bit"] = Field(
        "adamw", description="adamw (torch), or adamw_8bit (bitsandbytes, where it is installed; GPU)"
    )
    fused_adamw: bool | None = Field(
        None, description="torch's fused AdamW kernel; null: on for CUDA, off elsewhere (docs/benchmarks.md)"
    )
    channels_last: bool = Field(False, description="keep the UNet in channels-last memory format")
    compile: bool = Field(
        False, description="torch.compile the trained UNet's forward (opt-in: compiling costs minutes once)"
    )
    use_ema: bool = Field(
        False,
        description="keep an EMA of the trainable weights (LoRA: the adapter) and save it as the result",
    )
    ema_decay: float = Field(0.9999, gt=0, lt=1, description="EMA decay per optimizer step")
    beta: float = Field(
        2000.0,
        gt=0,
        description="pairwise temperature; no factor 1/2 (Salesforce DPO beta_dpo=5000 x 0.5 is 2500; "
        "diffusers' SD-1.5 DPO script's 2500 is 2500; docs/methods.md)",
    )
    loss_type: Literal["logistic", "hinge", "correlation"] = Field(
        "logistic", description="l(u): -logsigmoid(u), max(0, 1-u) or 1-u"
    )
    pair_noise: Literal["shared", "independent"] = Field(
        "shared", description="pairwise methods: one noise draw per pair (shared, the Diffusion-DPO habit) or "
        "one per member (independent, eq. 4.9 as written); t is shared either way (see Pair noise above)",
    )  # fmt: skip
    snr_gamma: float | None = Field(None, gt=0, description="min-SNR-gamma weighting for SFT; null disables")
    error_space: Literal["native", "epsilon"] = Field(
        "native",
        description="pairwise errors in the model's own prediction space (native: as every public DPO "
        "script, so their betas carry over) or, for v-prediction UNets, in epsilon space (err_eps = abar_t "
        "err_v), where SD-1.5's epsilon-model betas carry over",
    )
    trajectory_chunk_size: int = Field(
        8,
        ge=1,
        description="spin-exact: (example, solver step) terms per UNet forward in both passes (the forward "
        "batch is twice this: real and generated); memory grows with it, not with the trajectory length",
    )
    trajectory_grad_steps: int | None = Field(
        None,
        ge=1,
        description="spin-exact: back-propagate only this many of each example's solver steps, a seeded "
        "uniform subset weighted K / this (an unbiased gradient; the loss still uses every step); null: all",
    )
    precompute_reference: bool = Field(
        False, description="compute reference errors once after sampling; no reference model while training"
    )
    checkpointing_steps: int = Field(50, ge=1, description="save a resumable checkpoint every N steps")
    checkpoints_total_limit: int | None = Field(
        2, ge=1, description="keep at most N checkpoints; null keeps all"
    )
    save_model_every: int | None = Field(
        None,
        ge=1,
        description="also save a diffusers-format model to iter-k/snapshots/step-N every N steps "
        "(for learning curves); null: only the final model",
    )
    keep_checkpoints: bool = Field(
        False, description="keep iter-k/checkpoints after the iteration's model is saved (they are large)"
    )
    dmpo: DmpoConfig = Field(default_factory=DmpoConfig)
    see_dpo: SeeDpoConfig = Field(default_factory=SeeDpoConfig)
    adaptive_dpo: AdaptiveDpoConfig = Field(default_factory=AdaptiveDpoConfig)
    kto: KtoConfig = Field(default_factory=KtoConfig)
    inversion: InversionConfig = Field(default_factory=InversionConfig)
    log_every: int = Field(1, ge=1, description="log metrics every N optimizer steps")
    trackers: list[Literal["tensorboard", "wandb"]] = Field(
        default_factory=lambda: ["tensorboard"],
        description="accelerate trackers ([] for none); metrics are logged against the run's global step",
    )
    validation_prompts: int = Field(
        4,
        ge=0,
        description="training captions (the first N distinct ones, fixed seeds) whose images are logged to "
        "the trackers after each iteration; 0: none",
    )
    validation_every: int | None = Field(
        None,
        ge=1,
        description="also log the validation images every N optimizer steps; null: only at the end",
    )

    @model_validator(mode="after")
    def _check_global_batch(self) -> TrainingConfig:
        if self.global_batch_size is not None and self.global_batch_size % self.batch_size:
            raise ValueError(
                f"global_batch_size {self.global_batch_size} is not a multiple of batch_size {self.batch_size}"
            )
        return self

    def accumulation_steps(self, num_processes: int) -> int:
        """Micro-steps per optimizer step for this many processes (derived when global_batch_size is set)."""
        if self.global_batch_size is None:
            return self.gradient_accumulation_steps
        per_micro_step = self.batch_size * num_processes
        if self.global_batch_size % per_micro_step:
            raise ConfigError(
                f"training.global_batch_size {self.global_batch_size} is not a multiple of batch_size "
                f"{self.batch_size} x {num_processes} processes = {per_micro_step}; change batch_size, "
                "global_batch_size or the number of processes"
            )
        return self.global_batch_size // per_micro_step


class IterationOverride(Strict):
    """Per-iteration values (the paper: beta 2000/5000/5000, lr 2e-5/2e-5/5e-8, steps 50/500/200)."""

    beta: float | None = Field(None, gt=0, description="training.beta for this iteration")
    learning_rate: float | None = Field(None, gt=0, description="training.learning_rate for this iteration")
    max_steps: int | None = Field(None, ge=1, description="training.max_steps for this iteration")
    warmup_steps: int | None = Field(None, ge=0, description="training.warmup_steps for this iteration")
    num_samples_per_prompt: int | None = Field(
        None, ge=1, description="sampling.num_samples_per_prompt for this iteration"
    )


class RunConfig(Strict):
    """One run: ``runs/NAME`` holds everything it produces."""

    name: str = Field(..., pattern=r"^[A-Za-z0-9][\w.-]*$", description="run directory name")
    output_dir: str = Field("runs", description="parent of the run directory")
    method: Method = Field(
        "spin",
        description="spin (self-play, approximate objective eq. 4.9), spin-exact (self-play, exact "
        "trajectory objective eq. 4.8; docs/spin-objectives.md), sft, or a preference method on pairs: "
        "dpo, dmpo, see-dpo, adaptive-dpo, adaptive-dpo-lite, kto, inversion-dpo (docs/methods.md)",
    )
    seed: int = Field(
        0, ge=0, le=2**32 - 1, description="seeds sampling noise, timesteps, batches (0 to 2**32-1)"
    )
    model: ModelConfig
    data: DataConfig = Field(..., description="the data source (docs/data.md)")
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    iterations: list[IterationOverride] = Field(
        default_factory=lambda: [IterationOverride()],
        description="one entry per iteration ({} = defaults); sft and dpo take exactly one",
    )
    evaluation: EvaluationConfig | None = Field(
        None, description="evaluate base and every iteration after training (docs/evaluation.md)"
    )

    @field_validator("data", "evaluation", mode="before")
    @classmethod
    def _a_mapping(cls, value: Any, info: ValidationInfo) -> Any:
        """A section given as a scalar or list gets the same one-line message as any other section."""
        if isinstance(value, dict | BaseModel) or (value is None and info.field_name == "evaluation"):
            return value
        raise ValueError("Input should be a valid dictionary")

    @model_validator(mode="after")
    def _check_iterations(self) -> RunConfig:
        if not self.iterations:
            raise ValueError("iterations must list at least one iteration (use [{}] for defaults)")
        if self.method not in SELF_PLAY_METHODS and len(self.iterations) != 1:
            raise ValueError(f"method {self.method} trains once: iterations must have exactly one entry")
        check_stop_when(self.method, self.training.stop_when)
        if self.method == "inversion-dpo" and self.training.precompute_reference:
            raise ValueError(
                "training.precompute_reference: inversion-dpo inverts each latent with the live reference "
                "model, so its errors cannot be precomputed; set it to false"
            )
        check_family_settings(self.method, self.training, self.model, self.data)
        return self

    @model_validator(mode="after")
    def _check_exact_objective(self) -> RunConfig:
        """spin-exact scores the sampler's own deterministic trajectory with a live reference."""
        if self.method != "spin-exact":
            return self
        s, t = self.sampling, self.training
        if t.error_space != "native":
            raise ValueError(
                "training.error_space: spin-exact takes its errors in the model's own space (native)"
            )
        if s.scheduler not in TRAJECTORY_SCHEDULERS:
            raise ValueError(
                f"sampling.scheduler {s.scheduler} is not supported by spin-exact; use one of "
                f"{', '.join(TRAJECTORY_SCHEDULERS)}"
            )
        if s.scheduler == "ddim" and s.eta != 0:
            raise ValueError(
                "sampling.eta must be 0 for spin-exact (its reverse steps are deterministic DDIM means)"
            )
        if s.latents != "raw":
            raise ValueError(
                "sampling.latents must be raw for spin-exact (it scores the sampler's own trajectory)"
            )
        if t.precompute_reference:
            raise ValueError(
                "training.precompute_reference is not supported by spin-exact (it needs the reference at "
                "every solver step); set it to false"
            )
        if self.model.lora.dropout:
            raise ValueError(
                "model.lora.dropout must be 0 for spin-exact (both passes must see the same network)"
            )
        if t.trajectory_grad_steps is not None and t.trajectory_grad_steps > s.num_inference_steps:
            raise ValueError(
                f"training.trajectory_grad_steps {t.trajectory_grad_steps} exceeds the trajectory's "
                f"sampling.num_inference_steps {s.num_inference_steps}"
            )
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    @property
    def pair_data(self) -> bool:
        """The real-latent cache holds preference pairs (every preference method reading Pick-a-Pic's
        pairs, KTO on them too), not single images (SFT, SPIN, KTO on a labelled imagefolder)."""
        if self.method not in PREFERENCE_METHODS:
            return False
        return not (self.method == "kto" and self.training.kto.unpaired and self.data.source != "pickapic")

    def training_for(self, iteration: int) -> TrainingConfig:
        """The training settings of 1-based ``iteration`` with its overrides applied."""
        return self.training.model_copy(update=self._overrides(iteration, TrainingConfig))

    def sampling_for(self, iteration: int) -> SamplingConfig:
        """The sampling settings of 1-based ``iteration`` with its overrides applied."""
        return self.sampling.model_copy(update=self._overrides(iteration, SamplingConfig))

    def _overrides(self, iteration: int, section: type[BaseModel]) -> dict[str, Any]:
        """The values iteration ``iteration`` sets for fields of ``section`` (unset ones keep the default)."""
        override = self.iterations[iteration - 1]
        return {k: v for k, v in override.model_dump().items() if v is not None and k in section.model_fields}


# Parts of the config that decide what a run's results mean: changing them on resume mixes results.
IDENTITY_KEYS = ("method", "model.pretrained", "model.revision", "model.lora", "model.flow", "data", "seed")


def validate_config(raw: dict[str, Any], source: str = "config") -> RunConfig:
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from exc


def load_config(path: Path, overrides: list[str] | None = None) -> RunConfig:
    """Read, override and validate a run config; every problem is one ConfigError line."""
    raw = read_yaml(path)
    if "iterations" not in raw and any(o.startswith("iterations.") for o in overrides or []):
        raw["iterations"] = [{}]  # the default, so --set iterations.0.beta=... works without a list
    raw = apply_overrides(raw, overrides or [])
    return validate_config(raw, str(path))


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def _lookup(data: dict[str, Any], dotted: str) -> Any:
    node: Any = data
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def identity_changes(saved: RunConfig, current: RunConfig) -> list[str]:
    """The identity keys whose values differ between a saved run and the current config."""
    a, b = saved.model_dump(mode="json"), current.model_dump(mode="json")
    b["data"] = path_insensitive(a["data"], b["data"])  # paths compared by where they lead
    if same_location(a["model"]["pretrained"], b["model"]["pretrained"]):
        b["model"]["pretrained"] = a["model"]["pretrained"]
    return [k for k in IDENTITY_KEYS if _lookup(a, k) != _lookup(b, k)]
