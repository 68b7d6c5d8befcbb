"""Everything an evaluation needs, resolved before any image is generated (``evaluate --check``).

Generating images takes hours; a model path that points at a run's
``iter-k/model`` instead of a pipeline, an iteration that was never trained,
a missing prompt file or scorer file must stop the job first, with the field
that names it. These checks look at files only (no weights are loaded; a pickled
weight file is read memory-mapped, the safe way, to refuse one that carries code), so
``spin-diffusion evaluate CONFIG --check`` answers in seconds; ``evaluate``
runs the same checks, then also loads each scorer once before generating.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from spin_diffusion.config.evaluation import _PATH_FIELDS, EvaluationConfig, ModelEntry
from spin_diffusion.errors import CheckpointError, ConfigError, DataError
from spin_diffusion.evaluation.prompts import resolve_prompts
from spin_diffusion.infra.run_layout import MODEL, RunLayout, parse_iteration_name
from spin_diffusion.model.families import FAMILIES
from spin_diffusion.model.loading import looks_like_local_path, resolve_model_source
from spin_diffusion.model.lora import LORA_WEIGHT_NAME
from spin_diffusion.model.weight_files import refuse_pickled_weights

PIPELINE_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
#: Where each family saves its trained network: unet/ (SD, SDXL) or transformer/ (SD3, FLUX, Sana).
DENOISER_DIRS = tuple(dict.fromkeys(f.denoiser for f in FAMILIES.values()))
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def model_field(name: str, value: Any) -> str:
    """Where a model's path is written in the job file: ``models.NAME`` or ``models.NAME.path``."""
    return f"models.{name}" if isinstance(value, str) else f"models.{name}.path"


def _weights_kind(path: Path) -> str | None:
    """What fine-tuned weights ``path`` holds, in the layouts ``load_trained_into`` accepts (None: none)."""
    if path.is_file():
        return "LoRA file" if path.suffix == ".safetensors" else None
    for component in DENOISER_DIRS:
        if (path / component / "config.json").is_file():
            return f"{component}/" + (" + LoRA" if (path / LORA_WEIGHT_NAME).is_file() else "")
    if (path / LORA_WEIGHT_NAME).is_file():
        return "LoRA relative to the base"
    if (path / "config.json").is_file() and not (path / "model_index.json").is_file():
        return "UNet or transformer directory"
    return None


def check_pipeline(source: str, field: str) -> str:
    """A model path must be a complete diffusers pipeline directory (or a hub id); returns what it is."""
    resolved = resolve_model_source(source)
    path = Path(resolved).expanduser()
    if not path.exists():
        if not looks_like_local_path(resolved):
            return f"hub id {resolved} (resolved when it is loaded)"
        raise CheckpointError(f"{field}: {source} does not exist{_iteration_hint(source)}")
    index = path / "model_index.json"
    if not index.is_file():
        if _weights_kind(path) is not None:
            raise ConfigError(
                f"{field}: {source} holds fine-tuned weights ({_weights_kind(path)}), not a pipeline; "
                f"write {{path: BASE_PIPELINE, trained: {source}}}"
            )
        raise CheckpointError(
            f"{field}: {source} is not a diffusers pipeline directory (no model_index.json)"
        )
    try:
        parts = json.loads(index.read_text())
    except ValueError:
        raise CheckpointError(f"{field}: {index} is not valid JSON") from None
    family = FAMILIES.get(parts.get("_class_name", ""))  # SD3/FLUX/Sana have a transformer, not a unet
    needed = family.required_components if family is not None else PIPELINE_PARTS
    missing = [p for p in needed if not isinstance(parts.get(p), list) or not (path / p).is_dir()]
    if missing:
        raise CheckpointError(
            f"{field}: {source} is not a text-to-image pipeline (missing {', '.join(missing)})"
        )
    refuse_pickled_weights(path, f"{field}:", components=True)
    return f"pipeline {path}"


def check_trained(trained: str, field: str) -> str:
    """Fine-tuned weights must exist in a layout that applies to the base pipeline; returns which."""
    path = Path(trained).expanduser()
    if not path.exists():
        raise CheckpointError(f"{field}: {trained} does not exist{_iteration_hint(trained)}")
    kind = _weights_kind(path)
    if kind is None:
        for component in DENOISER_DIRS:
            if (path / "model_index.json").is_file() and (path / component).is_dir():
                refuse_pickled_weights(path / component, f"{field}:")
                return f"the {component}/ of a full pipeline"
        raise CheckpointError(f"{field}: {trained} holds neither unet/, transformer/ nor {LORA_WEIGHT_NAME}")
    denoiser = next((path / d for d in DENOISER_DIRS if (path / d).is_dir()), path)
    refuse_pickled_weights(denoiser, f"{field}:")
    return kind


def _iteration_hint(text: str) -> str:
    """For ``RUN/iter-k/model``: which iterations that run directory has, or that it has none."""
    path = Path(text.replace("\\", "/").rstrip("/"))
    if path.name != MODEL or parse_iteration_name(path.parent.name) is None:
        return ""
    run = path.parent.parent.expanduser()
    if not run.is_dir():
        return f" (no run directory {run}: train the run first, or fix the run name)"
    done = [it.k for it in RunLayout(run).iterations() if it.model.exists()]
    have = f"finished iterations: {', '.join(map(str, done))}" if done else "no finished iteration yet"
    return f" ({run} has {have})"


def check_models(models: Mapping[str, Any], entries: Mapping[str, ModelEntry]) -> list[str]:
    """Every model resolves to a pipeline (plus weights that exist); one line per model."""
    lines = []
    for name, entry in entries.items():
        field = model_field(name, models.get(name, entry))
        what = check_pipeline(entry.path, field)
        if entry.trained is not None:
            what += f" + {check_trained(entry.trained, f'models.{name}.trained')} from {entry.trained}"
        lines.append(f"{name}: {what}")
    return lines


def check_prompts(cfg: EvaluationConfig) -> list[str]:
    """The prompt set loads and is not empty."""
    try:
        prompts = resolve_prompts(cfg)
    except DataError as exc:
        raise DataError(f"evaluation.prompts: {exc}") from None
    return prompts


def check_scorer_files(cfg: EvaluationConfig) -> list[str]:
    """Every file a scorer or the FID/KID block names exists (loading them is left to ``check_scorers``)."""
    lines = []
    for i, scorer in enumerate(cfg.scorers):
        for f in _PATH_FIELDS:
            value = getattr(scorer, f)
            if value is not None and not Path(value).expanduser().exists():
                raise CheckpointError(f"evaluation.scorers.{i}.{f}: {value} does not exist")
        lines.append(scorer.metric)
    dist = cfg.distribution
    if dist is not None:
        ref = Path(dist.reference_dir).expanduser()
        if not ref.is_dir():
            raise DataError(f"evaluation.distribution.reference_dir: {dist.reference_dir} is not a directory")
        if not any(p.suffix.lower() in IMAGE_SUFFIXES for p in ref.iterdir()):
            raise DataError(f"evaluation.distribution.reference_dir: {dist.reference_dir} holds no images")
        if not Path(dist.feature_path).expanduser().exists():
            raise CheckpointError(f"evaluation.distribution.feature_path: {dist.feature_path} does not exist")
        lines.append(f"FID/KID against {dist.reference_dir}")
    return lines


def check_evaluation(
    models: Mapping[str, Any], entries: Mapping[str, ModelEntry], cfg: EvaluationConfig
) -> tuple[list[str], list[str]]:
    """All file-level checks of one evaluation: (report lines, the resolved prompts)."""
    lines = check_models(models, entries)
    prompts = check_prompts(cfg)
    lines.append(f"prompts: {len(prompts)}")
    lines.append(f"scorers: {', '.join(check_scorer_files(cfg))}")
    return lines, prompts
