"""Typed settings of the evaluation harness: scorers, prompt set, sampling, aggregation.

No torch/diffusers imports here, so a bad evaluation block in a run config is
reported in about a second, before any model is loaded.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator

from spin_diffusion.config.base import StrictNumbers, format_validation_error, read_yaml
from spin_diffusion.config.data import PromptSetConfig
from spin_diffusion.errors import ConfigError

ScorerKind = Literal["pickscore", "hpsv2", "imagereward", "aesthetic", "toy_fidelity", "toy_style"]
BestOfNRule = Literal["max", "zscore", "mean"]
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

# Which extra paths each kind needs (besides ``path``), and which it accepts.
_NEEDS: dict[str, tuple[str, ...]] = {
    "pickscore": ("path",),
    "hpsv2": ("path", "tokenizer_path"),
    "imagereward": ("path", "tokenizer_path"),
    "aesthetic": ("path", "clip_path"),
    "toy_fidelity": (),
    "toy_style": (),
}
_ACCEPTS: dict[str, tuple[str, ...]] = {
    "pickscore": ("path", "processor_path"),
    "hpsv2": ("path", "tokenizer_path"),
    "imagereward": ("path", "tokenizer_path"),
    "aesthetic": ("path", "clip_path"),
    "toy_fidelity": (),
    "toy_style": (),
}
_PATH_FIELDS = ("path", "processor_path", "tokenizer_path", "clip_path")


class _Strict(StrictNumbers):
    model_config = ConfigDict(extra="forbid")


class ScorerConfig(_Strict):
    """One automatic judge, loaded from local files (nothing is downloaded)."""

    kind: ScorerKind = Field(description="Which scorer architecture to load.")
    name: str | None = Field(
        default=None, description="Metric name in tables and score files (default: the kind), e.g. hpsv2.1."
    )
    path: str | None = Field(
        default=None,
        description="pickscore: CLIPModel dir; hpsv2: HPS .pt checkpoint; imagereward: ImageReward.pt; "
        "aesthetic: the predictor's .pth MLP weights.",
    )
    processor_path: str | None = Field(
        default=None, description="pickscore: CLIPProcessor dir (default: path)."
    )
    tokenizer_path: str | None = Field(
        default=None,
        description="hpsv2: CLIP BPE tokenizer dir; imagereward: bert-base-uncased tokenizer dir.",
    )
    clip_path: str | None = Field(
        default=None, description="aesthetic: CLIP ViT-L/14 CLIPModel dir (with its processor files)."
    )
    batch_size: int = Field(default=16, ge=1, description="Images scored per forward pass.")

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str | None) -> str | None:
        if v is not None and not _NAME.match(v):
            raise ValueError(f"scorer name {v!r} must be letters, digits, '.', '_' or '-'")
        return v

    @model_validator(mode="after")
    def _paths_fit_kind(self) -> ScorerConfig:
        for f in _NEEDS[self.kind]:
            if not getattr(self, f):
                raise ValueError(f"scorer kind {self.kind!r} needs {f}")
        for f in _PATH_FIELDS:
            if getattr(self, f) is not None and f not in _ACCEPTS[self.kind]:
                raise ValueError(f"{f} does not apply to scorer kind {self.kind!r}")
        return self

    @property
    def metric(self) -> str:
        """The metric's name in score files and tables."""
        return self.name or self.kind

    def fingerprint(self) -> str:
        """What identifies this scorer's numbers: stored scores are reused only if it matches."""
        parts = [self.kind] + [f"{f}={getattr(self, f)}" for f in _PATH_FIELDS if getattr(self, f)]
        return "|".join(parts)


class DistributionConfig(_Strict):
    """FID / KID of each model's images against a folder of reference images."""

    reference_dir: str = Field(description="Folder of reference images (png/jpg/webp), e.g. real images.")
    feature: Literal["clip", "inception"] = Field(
        default="clip",
        description="clip: image embeddings of a local CLIPModel dir; inception: torchmetrics' "
        "InceptionV3 (needs torch-fidelity) with local weights.",
    )
    feature_path: str = Field(
        description="CLIPModel dir (clip) or the FID Inception weights file (inception)."
    )
    kid_subset_size: int = Field(
        default=1000, ge=2, description="KID subset size (capped at the sample count)."
    )
    kid_subsets: int = Field(default=100, ge=1, description="Number of KID subsets.")
    max_reference_images: int | None = Field(default=None, ge=2, description="Use at most this many.")
    batch_size: int = Field(default=32, ge=1)


class EvaluationConfig(_Strict):
    """How to evaluate models: prompts, images per prompt, seeds, sampling, scorers, summaries."""

    prompts: PromptSetConfig | list[str] = Field(
        description="A prompt set (kind/path/limit) or an inline list of prompts."
    )
    n_images_per_prompt: int = Field(default=5, ge=1, description="Images per prompt (the paper uses 5).")
    seed: int = Field(
        default=0, description="Base seed; image j of prompt i uses the same seed for every model."
    )
    scorers: list[ScorerConfig] = Field(description="The judges; each adds one metric.")
    num_inference_steps: int = Field(default=20, ge=1)
    guidance_scale: float = Field(default=7.5, ge=0)
    scheduler: Literal["dpmsolver++", "ddim", "euler", "pipeline"] = Field(
        default="dpmsolver++", description="Sampling scheduler (pipeline = the model's own)."
    )
    batch_size: int = Field(default=8, ge=1, description="Images generated per pipeline call.")
    grid_prompts: int = Field(default=8, ge=0, description="Prompts (columns) shown in the image grid.")
    best_of_n: list[BestOfNRule] = Field(
        default_factory=lambda: ["max", "zscore"],
        description="max: per metric, the best of the N images; zscore: one image per prompt chosen by "
        "the mean of standardised metrics; mean: one image chosen by the raw mean of the metrics "
        "(the paper's wording).",
    )
    win_rate_unit: Literal["prompt", "image"] = Field(
        default="prompt",
        description="prompt: compare per-prompt means of the N images (the paper's 'proportion of "
        "prompts'); image: compare images made with the same seed.",
    )
    distribution: DistributionConfig | None = Field(default=None, description="Optional FID/KID.")
    device: str = Field(default="auto", description="auto (cuda if available), cpu, cuda, cuda:1, ...")

    @field_validator("prompts")
    @classmethod
    def _prompts_ok(cls, v: PromptSetConfig | list[str]) -> PromptSetConfig | list[str]:
        if isinstance(v, list):
            if not v:
                raise ValueError("the inline prompt list is empty")
            for i, p in enumerate(v):
                if not p.strip():
                    raise ValueError(f"prompt {i} is empty")
        return v

    @field_validator("scorers")
    @classmethod
    def _scorers_ok(cls, v: list[ScorerConfig]) -> list[ScorerConfig]:
        if not v:
            raise ValueError("list at least one scorer")
        seen: set[str] = set()
        for s in v:
            if s.metric in seen:
                raise ValueError(f"two scorers are named {s.metric!r}; give one a different name")
            seen.add(s.metric)
        return v

    @field_validator("best_of_n")
    @classmethod
    def _rules_unique(cls, v: list[str]) -> list[str]:
        return list(dict.fromkeys(v))

    @property
    def metrics(self) -> list[str]:
        return [s.metric for s in self.scorers]

    def sampling_fingerprint(self) -> dict[str, Any]:
        """Settings that decide what an image looks like; images are reused only if they match."""
        return {
            "seed": self.seed,
            "num_inference_steps": self.num_inference_steps,
            "guidance_scale": self.guidance_scale,
            "scheduler": self.scheduler,
        }


class ModelEntry(_Strict):
    """A model to evaluate: a diffusers pipeline dir (or hub id), optionally with fine-tuned weights on top."""

    path: str
    trained: str | None = Field(
        default=None,
        description="fine-tuned weights applied to `path`: a run's iter-k/model directory (unet/ or LoRA), "
        "a UNet directory, or a LoRA .safetensors file",
    )


class EvaluateJobConfig(_Strict):
    """The standalone ``spin-diffusion evaluate CONFIG.yaml`` job."""

    models: dict[str, ModelEntry | str] = Field(
        description="name -> pipeline path, or name -> {path, trained}; the order is the table order."
    )
    baseline: str | None = Field(default=None, description="Model that win rates are reported against.")
    evaluation: EvaluationConfig
    output_dir: str = Field(description="Where images, scores and reports go (reused on rerun).")

    @field_validator("models")
    @classmethod
    def _models_ok(cls, v: dict[str, ModelEntry | str]) -> dict[str, ModelEntry | str]:
        if not v:
            raise ValueError("list at least one model")
        for name in v:
            if not _NAME.match(name):
                raise ValueError(f"model name {name!r} must be letters, digits, '.', '_' or '-'")
        return v

    @model_validator(mode="after")
    def _baseline_known(self) -> EvaluateJobConfig:
        if self.baseline is not None and self.baseline not in self.models:
            raise ValueError(
                f"baseline {self.baseline!r} is not one of the models ({', '.join(self.models)})"
            )
        return self

    def model_entries(self) -> dict[str, ModelEntry]:
        return {k: v if isinstance(v, ModelEntry) else ModelEntry(path=v) for k, v in self.models.items()}


def check_model_name(name: str) -> str:
    """Model names become directory names: keep them plain."""
    if not _NAME.match(name):
        raise ConfigError(f"model name {name!r} must be letters, digits, '.', '_' or '-'")
    return name


def load_job_config(path: Path) -> EvaluateJobConfig:
    """Read and validate an evaluate job YAML; errors name the file and the field."""
    raw = read_yaml(Path(path))
    try:
        job = EvaluateJobConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, str(path))) from exc
    check_output_dir(Path(job.output_dir), f"{path}: output_dir")
    return job


def check_output_dir(out: Path, what: str) -> None:
    """Refuse an output directory that is (or lies under) an existing file, before any work.

    Otherwise the job generates nothing and dies in ``mkdir`` with a traceback.
    """
    for candidate in (out, *out.parents):
        if candidate.exists():
            if not candidate.is_dir():
                blocker = "is a file" if candidate == out else f"lies under {candidate}, which is a file"
                raise ConfigError(f"{what} {out} {blocker}, not a directory")
            return
