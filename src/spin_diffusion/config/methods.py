"""Settings of the preference objectives beyond Diffusion-DPO (docs/methods.md): one small section each."""

from __future__ import annotations

from pydantic import Field

from spin_diffusion.config.base import Strict


class DmpoConfig(Strict):
    """DMPO: reverse KL to a target preference probability (method: dmpo; docs/methods.md)."""

    alpha: float = Field(
        0.01, gt=0, lt=1, description="target preference 1 - alpha (0.01 as the DMPO code of Diffusion-SDPO)"
    )


class SeeDpoConfig(Strict):
    """SEE-DPO: Diffusion-DPO plus a self-entropy bonus gamma = entropy_ratio x beta (method: see-dpo)."""

    entropy_ratio: float = Field(
        0.1, ge=0, description="gamma / beta; 0 is Diffusion-DPO (the paper's value was not available: ours)"
    )


class AdaptiveDpoConfig(Strict):
    """Adaptive-DPO, our reconstruction: confidence weight and margin (method: adaptive-dpo)."""

    margin: float = Field(
        1.0, ge=0, description="largest adaptive margin on u, for pairs the model is sure of (ours)"
    )


class KtoConfig(Strict):
    """Diffusion-KTO on per-image labels: winners desirable, losers undesirable (method: kto)."""

    lambda_desirable: float = Field(1.0, gt=0, description="weight of desirable images (official code: 1)")
    lambda_undesirable: float = Field(
        1.0, gt=0, description="weight of undesirable images (official code: 1)"
    )


class InversionConfig(Strict):
    """Inversion-DPO: x_t by DDIM inversion of the clean latents under the reference (method: inversion-dpo)."""

    steps: int = Field(
        10, ge=1, le=1000, description="DDIM inversion steps from the clean latent to each sample's t"
    )
