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

from spin_diffusion.model.prediction import prediction_error
from spin_diffusion.objectives.adaptive_dpo import adaptive_dpo_logit, adaptive_dpo_loss
from spin_diffusion.objectives.core import (
    dpo_loss,
    implicit_accuracy,
    min_snr_weights,
    pair_diagnostics,
    preference_margin,
    sft_loss,
    spin_loss,
)
from spin_diffusion.objectives.dpo_family import (
    adaptive_dpo_lite_loss,
    dmpo_loss,
    inversion_dpo_loss,
    kto_loss,
    see_dpo_logit,
    see_dpo_loss,
)
from spin_diffusion.training.annotators import EmaAnnotators
from spin_diffusion.training.batches import Batch
from spin_diffusion.training.distributed import mean_over_processes
from spin_diffusion.training.exact_spin import exact_spin_output
from spin_diffusion.training.kto_single import kto_single_loss
from spin_diffusion.training.loss_types import LossOutput
from spin_diffusion.training.method_state import MethodState
from spin_diffusion.training.pair_errors import (
    PairErrors,
    annotated_errors,
    forward_noised_errors,
    inverted_errors,
)

if TYPE_CHECKING:
    import torch

    from spin_diffusion.config.run import TrainingConfig
    from spin_diffusion.model.families import Conditioning
    from spin_diffusion.training.reference import Reference


ErrorsFn = Callable[..., PairErrors]  # (cfg, unet, scheduler, reference, batch, emb, state=None)
Objective = Callable[[PairErrors, "TrainingConfig"], "torch.Tensor"]
Logit = Callable[[PairErrors, "TrainingConfig"], "torch.Tensor"]
Diagnostics = Callable[[PairErrors, "TrainingConfig"], dict[str, float]]
StateFactory = Callable[["TrainingConfig", list[Any]], MethodState | None]


@dataclass(frozen=True)
class PairMethod:
    """One pairwise method: how its errors are obtained, its objective, and what is logged.

    ``logit`` is the ``u`` the objective uses (implicit accuracy and ``u_mean``
    are logged from it; the plain DPO logit when None); ``diagnostics``
    replaces the pair diagnostics for a method that defines its own (KTO);
    ``state`` builds what the method keeps across steps (Adaptive-DPO's EMA
    annotators), or None.
    """

    errors: ErrorsFn
    objective: Objective
    names: tuple[str, str] = ("win", "lose")
    logit: Logit | None = None
    diagnostics: Diagnostics | None = None
    state: StateFactory | None = None


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


def _adaptive_state(cfg: TrainingConfig, params: list[Any]) -> MethodState | None:
    a = cfg.adaptive_dpo
    return EmaAnnotators(params, tuple(a.ema_decays), a.ema_warmup_steps) if a.ema_annotators else None


def _adaptive_logit(e: PairErrors, cfg: TrainingConfig) -> torch.Tensor:
    u = preference_margin(e.m_a, e.r_a, e.m_b, e.r_b, cfg.beta)
    return adaptive_dpo_logit(u, e.extra["uncertainty"], cfg.beta, cfg.adaptive_dpo.margin_type)


def _adaptive(e: PairErrors, cfg: TrainingConfig) -> torch.Tensor:
    a = cfg.adaptive_dpo
    w = e.extra["uncertainty"]
    return adaptive_dpo_loss(
        e.m_a, e.r_a, e.m_b, e.r_b, cfg.beta, w, a.temperature, a.intercept, a.margin_type
    )


def _kto_diagnostics(e: PairErrors, cfg: TrainingConfig) -> dict[str, float]:
    """What the official KTO code logs: per-image accuracy of the label-signed term, and the KL estimate."""
    import torch

    g = torch.cat([e.r_a - e.m_a, e.r_b - e.m_b]).detach().float()
    z = mean_over_processes(g).clamp(min=0.0)
    sign = torch.cat([torch.ones_like(e.m_a), -torch.ones_like(e.m_b)]).float()
    return {"implicit_acc": implicit_accuracy(sign * (g - z)), "kl": float(z)}


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
        logit=lambda e, cfg: see_dpo_logit(
            e.m_a, e.r_a, e.m_b, e.r_b, cfg.beta, cfg.see_dpo.entropy_ratio * cfg.beta
        ),
    ),
    "adaptive-dpo": PairMethod(annotated_errors, _adaptive, logit=_adaptive_logit, state=_adaptive_state),
    "adaptive-dpo-lite": PairMethod(
        forward_noised_errors,
        lambda e, cfg: adaptive_dpo_lite_loss(
            e.m_a, e.r_a, e.m_b, e.r_b, cfg.beta, cfg.adaptive_dpo.margin, cfg.loss_type
        ),
    ),
    "kto": PairMethod(forward_noised_errors, _kto, diagnostics=_kto_diagnostics),
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
    state: MethodState | None = None,
) -> LossOutput:
    """One forward of the trained model on the whole (concatenated) batch, then the objective.

    ``emb`` is the batch's conditioning from the model family's prompt encoder;
    ``state`` is what
    :func:`make_method_state` built for the method (None for most).
    """
    if method == "spin-exact":
        return exact_spin_output(cfg, unet, noise_scheduler, reference, batch, emb)
    if method == "sft":
        return _sft(cfg, unet, noise_scheduler, batch, emb)
    if method == "kto" and batch.labels is not None:  # single labelled images (training.kto.unpaired)
        if reference is None:
            raise ValueError("method kto needs a reference")
        return LossOutput(*kto_single_loss(cfg, unet, noise_scheduler, reference, batch, emb))
    spec = PAIR_METHODS.get(method)
    if spec is None:
        raise ValueError(f"unknown method {method!r}; expected sft or one of {', '.join(PAIR_METHODS)}")
    if reference is None or batch.latents_b is None:
        raise ValueError(f"method {method} needs pairs and a reference")
    e = spec.errors(cfg, unet, noise_scheduler, reference, batch, emb, state)
    loss = spec.objective(e, cfg).mean()
    a, b = spec.names
    u = spec.logit(e, cfg).detach() if spec.logit is not None else None
    diag = pair_diagnostics(e.m_a, e.r_a, e.m_b, e.r_b, cfg.beta, u).as_dict(a, b)
    if spec.diagnostics is not None:
        diag.update(spec.diagnostics(e, cfg))
    metrics = {
        "loss": loss.item(),
        **diag,
        f"model_err_{a}": e.m_a.mean().item(),
        f"model_err_{b}": e.m_b.mean().item(),
        f"ref_err_{a}": e.r_a.mean().item(),
        f"ref_err_{b}": e.r_b.mean().item(),
    }
    return LossOutput(loss, metrics)


def make_method_state(method: str, cfg: TrainingConfig, params: list[Any]) -> MethodState | None:
    """The state a method declares it keeps across steps (None for most), built from the trainable weights."""
    spec = PAIR_METHODS.get(method)
    if spec is None or spec.state is None:
        return None
    return spec.state(cfg, params)


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
