"""Settings of the preference objectives beyond Diffusion-DPO (docs/methods.md): one small section each."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

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
    """Adaptive-DPO as its official code defines it (method: adaptive-dpo; defaults: its README's flags)."""

    ema_annotators: bool = Field(
        True,
        description="score each pair with the model and two EMA copies (official --use_ema); false: the "
        "official single-model branch. Costs two copies of the trainable weights (docs/methods.md)",
    )
    ema_decays: list[float] = Field(
        default_factory=lambda: [0.9999, 0.5], min_length=2, description="the EMA annotators' decays"
    )
    ema_warmup_steps: int = Field(2, ge=0, description="optimizer steps before the annotators score")
    rho: float = Field(15.0, gt=0, description="logit scale inside the confidence (official --logits_rho)")
    normalise_logits: bool = Field(
        True, description="divide each annotator's logits by their norm over the batch (official)"
    )
    temperature: float = Field(10.0, ge=0, description="weight = 1 / (temperature * w + intercept)")
    intercept: float = Field(1.0, gt=0, description="weight = 1 / (temperature * w + intercept)")
    margin_type: Literal["quadratic", "linear", "none"] = Field(
        "quadratic", description="adaptive margin (official --use_margin --margin_type quadratic)"
    )
    margin: float = Field(
        1.0, ge=0, description="adaptive-dpo-lite (our variant): largest margin on u, for sure pairs"
    )

    @field_validator("ema_decays")
    @classmethod
    def _decays_ok(cls, v: list[float]) -> list[float]:
        if any(not 0 < d < 1 for d in v):
            raise ValueError(f"every EMA decay must be in (0, 1), got {v}")
        return v


class KtoConfig(Strict):
    """Diffusion-KTO on per-image labels (method: kto): single labelled images, or pairs taken as two."""

    unpaired: bool = Field(
        False,
        description="train on single labelled images as the official code does (each its own t and noise, "
        "drawn with desirable_ratio): an imagefolder with data.label_column, or Pick-a-Pic's pairs taken "
        "apart; false: each preference pair gives one desirable and one undesirable image sharing t and noise",
    )
    desirable_ratio: float | None = Field(
        0.8,
        gt=0,
        lt=1,
        description="unpaired: probability that a drawn image is desirable (official --positive_ratio); null: "
        "every image once per epoch",
    )

    lambda_desirable: float = Field(1.0, gt=0, description="weight of desirable images (official code: 1)")
    lambda_undesirable: float = Field(
        1.0, gt=0, description="weight of undesirable images (official code: 1)"
    )


class InversionConfig(Strict):
    """Inversion-DPO: x_t by DDIM inversion of the clean latents under the reference (method: inversion-dpo)."""

    steps: int = Field(
        10, ge=1, le=1000, description="DDIM inversion steps from the clean latent to each sample's t"
    )


def check_family_settings(method: str, training: Any, model: Any, data: Any) -> None:
    """Settings a family method cannot train with (docs/methods.md): one ValueError naming the field.

    Inversion-DPO starts at the reference, where its gradient is exactly 0: a LoRA adapter (B = 0,
    the reference is the same network) never leaves it, nor does full fine-tuning without weight
    decay against a float32 reference. KTO on single images needs labelled single images.
    """
    if method == "kto" and training.kto.unpaired:
        if data.source != "pickapic" and not (data.source == "imagefolder" and data.label_column):
            raise ValueError(
                "training.kto.unpaired: single labelled images come from an imagefolder with "
                "data.label_column or from source pickapic"
            )
        if training.precompute_reference:
            raise ValueError("training.precompute_reference: not supported for kto on single images")
    if method != "inversion-dpo":
        return
    if model.lora.enabled:
        raise ValueError(
            "model.lora.enabled: inversion-dpo cannot train a LoRA adapter: it starts at B = 0, i.e. at "
            "the reference, where every inverted error and its gradient is exactly 0, so it never moves "
            "(docs/methods.md); use full fine-tuning with training.weight_decay > 0"
        )
    if training.weight_decay == 0 and model.reference_dtype == "float32":
        raise ValueError(
            "training.weight_decay: inversion-dpo starts at the reference, where its gradient is exactly "
            "0; with a float32 reference only weight decay moves it off that point, so it must be > 0 "
            "(docs/methods.md)"
        )
