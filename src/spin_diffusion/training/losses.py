"""One forward of the trained model on a batch, turned into a loss by the method's objective.

Pairwise methods are rows of :data:`PAIR_METHODS`: how the per-sample errors
of a pair are obtained (forward noising, or DDIM inversion for Inversion-DPO)
and which pure objective turns them into per-sample losses. Adding a method
is adding a row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from spin_diffusion.errors import ConfigError
from spin_diffusion.model.prediction import prediction_error
from spin_diffusion.objectives.core import (
    denoising_error,
    dpo_loss,
    min_snr_weights,
    pair_diagnostics,
    sft_loss,
    spin_loss,
)
from spin_diffusion.objectives.dpo_family import (
    adaptive_dpo_loss,
    dmpo_loss,
    inversion_dpo_loss,
    kto_loss,
    see_dpo_loss,
)
from spin_diffusion.sampling.inversion import ddim_invert
from spin_diffusion.training.batches import Batch
from spin_diffusion.training.distributed import mean_over_processes
from spin_diffusion.training.exact_spin import exact_spin_output
from spin_diffusion.training.loss_types import LossOutput

if TYPE_CHECKING:
    import torch

    from spin_diffusion.config.run import TrainingConfig
    from spin_diffusion.model.families import Conditioning
    from spin_diffusion.training.reference import Reference


@dataclass(frozen=True)
class PairErrors:
    """Per-sample errors of a pair batch: model and reference, preferred side ``a`` and other side ``b``."""

    m_a: torch.Tensor
    r_a: torch.Tensor
    m_b: torch.Tensor
    r_b: torch.Tensor


ErrorsFn = Callable[["TrainingConfig", Any, Any, "Reference", Batch, "Conditioning"], PairErrors]
Objective = Callable[[PairErrors, "TrainingConfig"], "torch.Tensor"]


@dataclass(frozen=True)
class PairMethod:
    errors: ErrorsFn
    objective: Objective
    names: tuple[str, str] = ("win", "lose")


def forward_noised_errors(
    cfg: TrainingConfig,
    unet: Any,
    noise_scheduler: Any,
    reference: Reference,
    batch: Batch,
    emb: Conditioning,
) -> PairErrors:
    """Both members noised with the pair's shared ``t`` and noise; one forward of the model on the pair."""
    import torch

    b, device = len(batch.indices), emb.device
    latents = torch.cat([batch.latents_a, batch.latents_b]).to(device)
    emb2 = emb.pair()  # each pair member keeps its own SDXL size conditioning
    t2, eps2 = batch.timesteps.repeat(2).to(device), batch.noise.repeat(2, 1, 1, 1).to(device)
    model_err = prediction_error(unet, noise_scheduler, latents, emb2, t2, eps2)
    ref_err = reference.errors(batch, latents, emb2).detach()
    return PairErrors(model_err[:b], ref_err[:b], model_err[b:], ref_err[b:])


def inverted_errors(
    cfg: TrainingConfig,
    unet: Any,
    noise_scheduler: Any,
    reference: Reference,
    batch: Batch,
    emb: Conditioning,
) -> PairErrors:
    """Inversion-DPO's seam: x_t from DDIM inversion under the reference, its prediction as the target.

    The reference error is zero by construction (it is compared with itself).
    """
    import torch

    predict_ref = getattr(reference, "predict", None)
    if predict_ref is None:
        raise ConfigError("inversion-dpo needs a live reference model (training.precompute_reference: false)")
    b, device = len(batch.indices), emb.device
    x0 = torch.cat([batch.latents_a, batch.latents_b]).to(device)
    emb2 = emb.pair()
    t2 = batch.timesteps.repeat(2).to(device)
    x_t = ddim_invert(
        lambda x, tau: predict_ref(x, tau, emb2),
        noise_scheduler.alphas_cumprod,
        x0,
        t2,
        cfg.inversion.steps,
        noise_scheduler.config.prediction_type,
    )
    target = predict_ref(x_t, t2, emb2)
    dtype = next(unet.parameters()).dtype
    pred = unet(x_t.to(dtype), t2, **emb2.unet_kwargs(dtype)).sample
    model_err = denoising_error(pred, target)
    zero = torch.zeros_like(model_err).detach()
    return PairErrors(model_err[:b], zero[:b], model_err[b:], zero[b:])


def _kto(e: PairErrors, cfg: TrainingConfig) -> torch.Tensor:
    """The pair's winner is a desirable image and its loser an undesirable one (labelled singles)."""
    import torch

    model_err, ref_err = torch.cat([e.m_a, e.m_b]), torch.cat([e.r_a, e.r_b])
    desirable = torch.cat([torch.ones_like(e.m_a), torch.zeros_like(e.m_b)])
    # the reference point is the whole global batch's mean reward, as the official code takes it
    batch_mean = mean_over_processes((ref_err - model_err).detach().float())
    per_image = kto_loss(
        model_err,
        ref_err,
        desirable,
        cfg.beta,
        cfg.kto.lambda_desirable,
        cfg.kto.lambda_undesirable,
        batch_mean,
    )
    return per_image.view(2, -1).mean(dim=0)  # one value per pair, like the other rows


PAIR_METHODS: dict[str, PairMethod] = {
    "spin": PairMethod(
        forward_noised_errors,
        lambda e, cfg: spin_loss(e.m_a, e.r_a, e.m_b, e.r_b, cfg.beta, cfg.loss_type),
        ("real", "gen"),
    ),
    "dpo": PairMethod(
        forward_noised_errors, lambda e, cfg: dpo_loss(e.m_a, e.r_a, e.m_b, e.r_b, cfg.beta, cfg.loss_type)
    ),
    "dmpo": PairMethod(
        forward_noised_errors, lambda e, cfg: dmpo_loss(e.m_a, e.r_a, e.m_b, e.r_b, cfg.beta, cfg.dmpo.alpha)
    ),
    "see-dpo": PairMethod(
        forward_noised_errors,
        lambda e, cfg: see_dpo_loss(
            e.m_a, e.r_a, e.m_b, e.r_b, cfg.beta, cfg.see_dpo.entropy_ratio * cfg.beta, cfg.loss_type
        ),
    ),
    "adaptive-dpo": PairMethod(
        forward_noised_errors,
        lambda e, cfg: adaptive_dpo_loss(
            e.m_a, e.r_a, e.m_b, e.r_b, cfg.beta, cfg.adaptive_dpo.margin, cfg.loss_type
        ),
    ),
    "kto": PairMethod(forward_noised_errors, _kto),
    "inversion-dpo": PairMethod(
        inverted_errors, lambda e, cfg: inversion_dpo_loss(e.m_a, e.m_b, cfg.beta, cfg.loss_type)
    ),
}


def compute_loss(
    method: str,
    cfg: TrainingConfig,
    unet: Any,
    noise_scheduler: Any,
    reference: Reference | None,
    batch: Batch,
    emb: Conditioning,
) -> LossOutput:
    """One forward of the trained model on the whole (concatenated) batch, then the objective.

    ``emb`` is the batch's conditioning from the model family's prompt encoder.
    """
    if method == "spin-exact":
        return exact_spin_output(cfg, unet, noise_scheduler, reference, batch, emb)
    if method == "sft":
        return _sft(cfg, unet, noise_scheduler, batch, emb)
    spec = PAIR_METHODS.get(method)
    if spec is None:
        raise ValueError(f"unknown method {method!r}; expected sft or one of {', '.join(PAIR_METHODS)}")
    if reference is None or batch.latents_b is None:
        raise ValueError(f"method {method} needs pairs and a reference")
    e = spec.errors(cfg, unet, noise_scheduler, reference, batch, emb)
    loss = spec.objective(e, cfg).mean()
    a, b = spec.names
    diag = pair_diagnostics(e.m_a, e.r_a, e.m_b, e.r_b, cfg.beta).as_dict(a, b)
    metrics = {
        "loss": loss.item(),
        **diag,
        f"model_err_{a}": e.m_a.mean().item(),
        f"model_err_{b}": e.m_b.mean().item(),
        f"ref_err_{a}": e.r_a.mean().item(),
        f"ref_err_{b}": e.r_b.mean().item(),
    }
    return LossOutput(loss, metrics)


def _sft(cfg: TrainingConfig, unet: Any, noise_scheduler: Any, batch: Batch, emb: Conditioning) -> LossOutput:
    device = emb.device
    t, eps = batch.timesteps.to(device), batch.noise.to(device)
    err = prediction_error(unet, noise_scheduler, batch.latents_a.to(device), emb, t, eps)
    weights = None
    if cfg.snr_gamma is not None:
        abar = noise_scheduler.alphas_cumprod.to(device)[t]
        weights = min_snr_weights(abar / (1 - abar), cfg.snr_gamma, noise_scheduler.config.prediction_type)
    loss = sft_loss(err, weights)
    return LossOutput(loss, {"loss": loss.item(), "model_err": err.mean().item()})
