"""Diffusion-KTO on single labelled images: one forward per image, its own t and noise, its own label.

The per-image loss is :func:`spin_diffusion.objectives.dpo_family.kto_loss`; what
the official code logs (jacklishufan/diffusion-kto) is the per-image accuracy of
the label-signed term ``sgn_y beta (g - z)`` and the KL estimate ``z``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from spin_diffusion.model.prediction import prediction_error
from spin_diffusion.objectives.core import implicit_accuracy
from spin_diffusion.objectives.dpo_family import kto_loss
from spin_diffusion.training.batches import Batch
from spin_diffusion.training.distributed import mean_over_processes
from spin_diffusion.training.pair_errors import error_space_scale

if TYPE_CHECKING:
    import torch

    from spin_diffusion.config.run import TrainingConfig
    from spin_diffusion.model.families import Conditioning
    from spin_diffusion.training.reference import Reference


def kto_single_loss(
    cfg: TrainingConfig,
    unet: Any,
    noise_scheduler: Any,
    reference: Reference,
    batch: Batch,
    emb: Conditioning,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss and the official KTO diagnostics for a batch of single labelled images."""
    if batch.labels is None or batch.latents_b is not None:
        raise ValueError("kto on single images needs a batch of labelled single images")
    device = emb.device
    latents, t, eps = batch.latents_a.to(device), batch.timesteps.to(device), batch.noise.to(device)
    scale = error_space_scale(cfg, noise_scheduler, t)
    model_err = prediction_error(unet, noise_scheduler, latents, emb, t, eps) * scale
    ref_err = reference.errors(batch, latents, emb).detach() * scale
    desirable = batch.labels.to(device)
    g = (ref_err - model_err).detach().float()
    z = mean_over_processes(g).clamp(min=0.0)  # the official reference point: the global batch's mean
    per_image = kto_loss(
        model_err, ref_err, desirable, cfg.beta, cfg.kto.lambda_desirable, cfg.kto.lambda_undesirable, z
    )
    loss = per_image.mean()
    sign = desirable.float() * 2.0 - 1.0
    metrics = {
        "loss": loss.item(),
        "implicit_acc": implicit_accuracy(sign * (g - z)),
        "kl": float(z),
        "desirable_fraction": desirable.float().mean().item(),
        "model_err": model_err.mean().item(),
        "ref_err": ref_err.mean().item(),
    }
    return loss, metrics
