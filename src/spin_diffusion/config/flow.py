"""Settings of the flow-matching families (SD3/SD3.5, FLUX.1, Sana): the training sigma's density,
the loss weighting and FLUX.1-dev's embedded guidance. The UNet families ignore them."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from spin_diffusion.config.base import Strict


class FlowConfig(Strict):
    """Flow-matching families only (SD3/SD3.5, FLUX.1): the training sigma's density, the loss weighting
    and FLUX.1-dev's embedded guidance (docs/models.md says why the defaults are these)."""

    timestep_sampling: Literal["uniform", "logit_normal", "mode"] = Field(
        "logit_normal",
        description="density of the training sigma over the scheduler's schedule: uniform, logit_normal "
        "(the SD3 paper's choice and diffusers' SD3 script's default) or mode (with mode_scale)",
    )
    logit_mean: float = Field(0.0, description="logit_normal: mean of the normal before the sigmoid")
    logit_std: float = Field(1.0, gt=0, description="logit_normal: standard deviation before the sigmoid")
    mode_scale: float = Field(1.29, description="mode: the SD3 paper's scale s")
    weighting: Literal["none", "sigma_sqrt", "cosmap"] = Field(
        "none",
        description="per-sample loss weight w(sigma) as diffusers' compute_loss_weighting_for_sd3; it "
        "multiplies the per-sample error, so a pair objective sees it as a per-pair scale of beta",
    )
    guidance: float = Field(
        1.0,
        ge=0,
        description="guidance-distilled FLUX.1-dev only: the guidance value embedded in training (1.0: the "
        "unguided conditional velocity, which eps - x0 is); sampling embeds sampling.guidance_scale",
    )
