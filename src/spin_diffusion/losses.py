"""One forward of the trained model on a batch, turned into a loss by the method's objective."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from spin_diffusion.batches import Batch
from spin_diffusion.objectives import (
    dpo_loss,
    min_snr_weights,
    pair_diagnostics,
    sft_loss,
    spin_loss,
)

if TYPE_CHECKING:
    import torch

    from spin_diffusion.config import TrainingConfig
    from spin_diffusion.reference import Reference


@dataclass
class LossOutput:
    loss: torch.Tensor
    metrics: dict[str, float] = field(default_factory=dict)


def compute_loss(
    method: str,
    cfg: TrainingConfig,
    unet: Any,
    noise_scheduler: Any,
    reference: Reference | None,
    batch: Batch,
    emb: torch.Tensor,
) -> LossOutput:
    """One forward of the trained model on the whole (concatenated) batch, then the objective."""
    import torch

    from spin_diffusion.models import prediction_error

    device = emb.device
    if method == "sft":
        t, eps = batch.timesteps.to(device), batch.noise.to(device)
        err = prediction_error(unet, noise_scheduler, batch.latents_a.to(device), emb, t, eps)
        weights = None
        if cfg.snr_gamma is not None:
            abar = noise_scheduler.alphas_cumprod.to(device)[t]
            weights = min_snr_weights(
                abar / (1 - abar), cfg.snr_gamma, noise_scheduler.config.prediction_type
            )
        loss = sft_loss(err, weights)
        return LossOutput(loss, {"loss": loss.item(), "model_err": err.mean().item()})

    if reference is None or batch.latents_b is None:
        raise ValueError(f"method {method} needs pairs and a reference")
    b = len(batch.indices)
    latents = torch.cat([batch.latents_a, batch.latents_b]).to(device)
    emb2 = emb.repeat(2, 1, 1)
    t2, eps2 = batch.timesteps.repeat(2).to(device), batch.noise.repeat(2, 1, 1, 1).to(device)
    model_err = prediction_error(unet, noise_scheduler, latents, emb2, t2, eps2)
    ref_err = reference.errors(batch, latents, emb2).detach()
    m_a, m_b, r_a, r_b = model_err[:b], model_err[b:], ref_err[:b], ref_err[b:]
    objective = spin_loss if method == "spin" else dpo_loss
    per_sample = objective(m_a, r_a, m_b, r_b, cfg.beta, cfg.loss_type)
    loss = per_sample.mean()
    names = ("real", "gen") if method == "spin" else ("win", "lose")
    diag = pair_diagnostics(m_a, r_a, m_b, r_b, cfg.beta).as_dict(*names)
    metrics = {
        "loss": loss.item(),
        **diag,
        f"model_err_{names[0]}": m_a.mean().item(),
        f"model_err_{names[1]}": m_b.mean().item(),
        f"ref_err_{names[0]}": r_a.mean().item(),
        f"ref_err_{names[1]}": r_b.mean().item(),
    }
    return LossOutput(loss, metrics)
