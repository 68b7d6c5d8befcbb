"""The evaluation's prompt list: inline in the config or loaded from a prompt set file.

Shared by the runner and the pre-flight checks (``evaluate --check``), which
both need the same list, so neither imports the other.
"""

from __future__ import annotations

import logging

from spin_diffusion.config.evaluation import EvaluationConfig
from spin_diffusion.data.prompts import load_prompts
from spin_diffusion.errors import ConfigError

log = logging.getLogger("spin_diffusion.evaluation")


def resolve_prompts(cfg: EvaluationConfig) -> list[str]:
    """The prompts to evaluate on, in order, each once; an empty prompt set file is a config error.

    A repeated prompt has one id, one set of images and one set of scores, so it counts once.
    """
    if isinstance(cfg.prompts, list):
        prompts = list(cfg.prompts)
    else:
        prompts = load_prompts(cfg.prompts)
        if not prompts:
            raise ConfigError(f"evaluation.prompts: {cfg.prompts.path} gave no prompts")
    unique = list(dict.fromkeys(prompts))
    if len(unique) < len(prompts):
        log.warning(
            "evaluation.prompts: %d repeated prompt(s) counted once (%d distinct prompts)",
            len(prompts) - len(unique),
            len(unique),
        )
    return unique
