"""The base model theta_0: where it comes from, LoRA, the flow-matching settings, the reference's precision."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from spin_diffusion.config.base import Strict
from spin_diffusion.config.flow import FlowConfig


class LoraConfig(Strict):
    """Train a LoRA adapter instead of the full UNet; the reference is then the base with adapters off."""

    enabled: bool = Field(False, description="train a LoRA adapter (peft) instead of every UNet weight")
    rank: int = Field(4, ge=1, description="LoRA rank r")
    alpha: float = Field(4.0, gt=0, description="LoRA alpha (scale alpha / r)")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the LoRA branch")
    target_modules: list[str] = Field(
        default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"],
        description="UNet module names that get adapters (attention projections by default)",
    )


class ModelConfig(Strict):
    """The base model theta_0."""

    pretrained: str = Field(..., description="local diffusers pipeline directory, or a hub id when online")
    revision: str | None = Field(None, description="hub revision (hub ids only)")
    lora: LoraConfig = Field(default_factory=LoraConfig)
    flow: FlowConfig = Field(default_factory=FlowConfig)
    reference_dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto",
        description="precision of the frozen reference (full fine-tuning only); auto: the weight dtype of "
        "training.mixed_precision (bf16/fp16, as the official Diffusion-DPO code casts its reference), else float32",
    )

    def resolved_reference_dtype(self, mixed_precision: str | None, autocast_active: bool = True) -> str:
        """``reference_dtype`` with ``auto`` resolved against the mixed precision the run uses.

        ``autocast_active`` False (accelerate runs fp16 without autocast on a CPU):
        the trained model computes in float32, and so does the reference.
        """
        if self.reference_dtype != "auto":
            return self.reference_dtype
        if not autocast_active:
            return "float32"
        return {"bf16": "bfloat16", "fp16": "float16"}.get(mixed_precision or "no", "float32")
