"""Typed, validated run configuration: one YAML file per run plus ``--set`` overrides.

The resolved configuration is saved into the run directory, and on resume the
parts that decide what the results mean (base model, data, method) must match.
Nothing here imports torch, so config errors answer in about a second.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from spin_diffusion.errors import ConfigError

Method = Literal["sft", "dpo", "spin"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LoraConfig(Strict):
    enabled: bool = False
    rank: int = Field(4, ge=1)
    alpha: float = Field(4.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])


class ModelConfig(Strict):
    pretrained: str = Field(..., description="local diffusers pipeline directory or hub id")
    revision: str | None = None
    lora: LoraConfig = Field(default_factory=LoraConfig)
    reference_dtype: Literal["float32", "float16", "bfloat16"] = "float32"


class SamplingConfig(Strict):
    """How the opponent generates its samples (and how evaluation images are made)."""

    num_samples_per_prompt: int = Field(1, ge=1)
    scheduler: Literal["dpmsolver++", "ddim", "euler", "pipeline"] = "dpmsolver++"
    num_inference_steps: int = Field(20, ge=1)
    guidance_scale: float = Field(7.5, ge=0)
    eta: float = Field(0.0, ge=0)
    batch_size: int = Field(16, ge=1)
    shard_size: int = Field(256, ge=1, description="prompts per latent shard (the unit of resume)")
    num_previews: int = Field(16, ge=0)
    compile: bool = False


class TrainingConfig(Strict):
    learning_rate: float = Field(2e-5, gt=0)
    weight_decay: float = Field(1e-2, ge=0)
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    lr_scheduler: Literal["linear", "constant", "cosine"] = "linear"
    warmup_steps: int = Field(0, ge=0)
    max_steps: int = Field(100, ge=1)
    batch_size: int = Field(8, ge=1, description="per process, per micro-step")
    gradient_accumulation_steps: int = Field(1, ge=1)
    max_grad_norm: float | None = Field(1.0, gt=0)
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    gradient_checkpointing: bool = False
    use_ema: bool = False
    ema_decay: float = Field(0.9999, gt=0, lt=1)
    beta: float = Field(
        2000.0, gt=0, description="pairwise temperature; no factor 1/2 (DPO beta_dpo=5000 is 2500)"
    )
    loss_type: Literal["logistic", "hinge", "correlation"] = "logistic"
    snr_gamma: float | None = Field(None, gt=0, description="min-SNR weighting for SFT")
    precompute_reference: bool = False
    checkpointing_steps: int = Field(50, ge=1)
    checkpoints_total_limit: int | None = Field(2, ge=1)
    log_every: int = Field(1, ge=1)
    trackers: list[Literal["tensorboard", "wandb"]] = Field(default_factory=lambda: ["tensorboard"])


class IterationOverride(Strict):
    """Per-iteration values (the paper: beta 2000/5000/5000, lr 2e-5/2e-5/5e-8, steps 50/500/200)."""

    beta: float | None = Field(None, gt=0)
    learning_rate: float | None = Field(None, gt=0)
    max_steps: int | None = Field(None, ge=1)
    warmup_steps: int | None = Field(None, ge=0)
    num_samples_per_prompt: int | None = Field(None, ge=1)


def _data_config_type() -> Any:
    from spin_diffusion.data.config import DataConfig

    return DataConfig


class RunConfig(Strict):
    name: str = Field(..., pattern=r"^[A-Za-z0-9][\w.-]*$")
    output_dir: str = "runs"
    method: Method = "spin"
    seed: int = 0
    model: ModelConfig
    data: dict[str, Any]
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    iterations: list[IterationOverride] = Field(default_factory=lambda: [IterationOverride()])
    evaluation: dict[str, Any] | None = None

    @field_validator("data")
    @classmethod
    def _check_data(cls, value: dict[str, Any]) -> dict[str, Any]:
        return _data_config_type().model_validate(value).model_dump(mode="json")

    @field_validator("evaluation")
    @classmethod
    def _check_evaluation(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return None
        from spin_diffusion.evaluation.config import EvaluationConfig

        return EvaluationConfig.model_validate(value).model_dump(mode="json")

    @model_validator(mode="after")
    def _check_iterations(self) -> RunConfig:
        if not self.iterations:
            raise ValueError("iterations must list at least one iteration (use [{}] for defaults)")
        if self.method != "spin" and len(self.iterations) != 1:
            raise ValueError(f"method {self.method} trains once: iterations must have exactly one entry")
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    def data_config(self) -> Any:
        return _data_config_type().model_validate(self.data)

    def evaluation_config(self) -> Any | None:
        if self.evaluation is None:
            return None
        from spin_diffusion.evaluation.config import EvaluationConfig

        return EvaluationConfig.model_validate(self.evaluation)

    def training_for(self, iteration: int) -> TrainingConfig:
        """The training settings of 1-based ``iteration`` with its overrides applied."""
        override = self.iterations[iteration - 1]
        values = {
            k: v
            for k, v in override.model_dump().items()
            if v is not None and k in TrainingConfig.model_fields
        }
        return self.training.model_copy(update=values)

    def sampling_for(self, iteration: int) -> SamplingConfig:
        n = self.iterations[iteration - 1].num_samples_per_prompt
        return self.sampling if n is None else self.sampling.model_copy(update={"num_samples_per_prompt": n})


# Parts of the config that decide what a run's results mean: changing them on resume mixes results.
IDENTITY_KEYS = ("method", "model.pretrained", "model.revision", "model.lora", "data", "seed")


def _format_error(exc: ValidationError, source: str) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "(top level)"
    return f"{source}: {where}: {err['msg']}"


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` with the value parsed as YAML (numbers, booleans, lists)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.path=value")
    key, raw = text.split("=", 1)
    if not key.strip():
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML") from exc
    return key.strip().split("."), value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        path, value = parse_override(text)
        node = raw
        for part in path[:-1]:
            if isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
                continue
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {part!r} is not a section")
            node = node.setdefault(part, {})
        last = path[-1]
        if isinstance(node, list) and last.isdigit() and int(last) < len(node):
            node[int(last)] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise ConfigError(f"override {text!r}: cannot set {last!r} here")
    return raw


def read_yaml(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{where} is not valid YAML") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of settings at the top level")
    return raw


def validate_config(raw: dict[str, Any], source: str = "config") -> RunConfig:
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_error(exc, source)) from exc


def load_config(path: Path, overrides: list[str] | None = None) -> RunConfig:
    raw = apply_overrides(read_yaml(path), overrides or [])
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
    return [k for k in IDENTITY_KEYS if _lookup(a, k) != _lookup(b, k)]
