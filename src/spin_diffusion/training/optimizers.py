"""The optimizer a run trains with, chosen by ``training.optimizer`` and ``training.fused_adamw``."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from typing import TYPE_CHECKING

from spin_diffusion.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from spin_diffusion.config.run import TrainingConfig


def use_fused(cfg: TrainingConfig, device: torch.device) -> bool:
    """Fused AdamW when asked for, or by default on CUDA (where it replaces many small kernels by one)."""
    if cfg.fused_adamw is not None:
        return cfg.fused_adamw
    return device.type == "cuda"


def build_optimizer(
    params: Sequence[torch.nn.Parameter], cfg: TrainingConfig, device: torch.device
) -> torch.optim.Optimizer:
    """AdamW with the run's hyper-parameters: torch's (foreach or fused) or bitsandbytes' 8-bit one."""
    import torch

    kwargs = {
        "lr": cfg.learning_rate,
        "betas": (cfg.adam_beta1, cfg.adam_beta2),
        "eps": cfg.adam_epsilon,
        "weight_decay": cfg.weight_decay,
    }
    if cfg.optimizer == "adamw_8bit":
        if importlib.util.find_spec("bitsandbytes") is None:
            raise ConfigError(
                "training.optimizer: adamw_8bit needs bitsandbytes, which is not installed "
                "(pip install bitsandbytes on a CUDA machine), or use adamw"
            )
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(list(params), **kwargs)
    return torch.optim.AdamW(list(params), fused=use_fused(cfg, device), **kwargs)
