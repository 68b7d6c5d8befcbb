"""The field reference of docs/configuration.md, generated from the config classes so it cannot drift."""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import BaseModel

from spin_diffusion.config.flow import FlowConfig
from spin_diffusion.config.methods import (
    AdaptiveDpoConfig,
    DmpoConfig,
    InversionConfig,
    KtoConfig,
    SeeDpoConfig,
)
from spin_diffusion.config.model import LoraConfig, ModelConfig
from spin_diffusion.config.run import IterationOverride, RunConfig, TrainingConfig
from spin_diffusion.config.sampling import SamplingConfig
from spin_diffusion.config.stopping import StopWhenConfig


def config_reference_markdown() -> str:
    """The field reference of docs/configuration.md, generated so it cannot drift from the code."""
    sections = [
        ("top level", RunConfig),
        ("model", ModelConfig),
        ("model.lora", LoraConfig),
        ("model.flow", FlowConfig),
        ("sampling", SamplingConfig),
        ("training", TrainingConfig),
        ("training.stop_when", StopWhenConfig),
        ("training.dmpo", DmpoConfig),
        ("training.see_dpo", SeeDpoConfig),
        ("training.adaptive_dpo", AdaptiveDpoConfig),
        ("training.kto", KtoConfig),
        ("training.inversion", InversionConfig),
        ("iterations[k]", IterationOverride),
    ]
    own_section = {model for _, model in sections}  # data and evaluation are documented in their own pages
    lines: list[str] = []
    for title, model in sections:
        lines += [
            f"### `{title}`",
            "",
            (model.__doc__ or "").strip(),
            "",
            "| field | default | meaning |",
            "|---|---|---|",
        ]
        for name, info in model.model_fields.items():
            if info.annotation in own_section:
                continue
            default = "required" if info.is_required() else _show(info.get_default(call_default_factory=True))
            lines.append(f"| `{name}` | `{default}` | {info.description or ''} |")
        lines.append("")
    return "\n".join(lines)


def _show(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if isinstance(value, BaseModel):
        return yaml.safe_dump(value.model_dump(exclude_none=True), default_flow_style=True).strip()
    return "null" if value is None else str(value)
