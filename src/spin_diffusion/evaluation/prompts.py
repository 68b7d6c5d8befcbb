"""The evaluation's prompt list: inline in the config or loaded from a prompt set file.

Shared by the runner and the pre-flight checks (``evaluate --check``), which
both need the same list, so neither imports the other.
"""

from __future__ import annotations

from spin_diffusion.config.evaluation import EvaluationConfig
from spin_diffusion.data.prompts import load_prompts
from spin_diffusion.errors import ConfigError


def resolve_prompts(cfg: EvaluationConfig) -> list[str]:
    """The prompts to evaluate on, in order; an empty prompt set file is a config error."""
    if isinstance(cfg.prompts, list):
        return list(cfg.prompts)
    prompts = load_prompts(cfg.prompts)
    if not prompts:
        raise ConfigError(f"evaluation.prompts: {cfg.prompts.path} gave no prompts")
    return prompts
