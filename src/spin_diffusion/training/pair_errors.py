"""How a pairwise method's per-sample errors are obtained: forward noising, DDIM inversion, annotators.

Kept apart from the objectives (:mod:`spin_diffusion.training.losses`): an
errors function turns a batch into :class:`PairErrors`, the method's pure
objective turns those into per-pair losses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from spin_diffusion.errors import ConfigError
from spin_diffusion.model.prediction import prediction_error
from spin_diffusion.objectives.adaptive_dpo import annotator_uncertainty, single_model_uncertainty
from spin_diffusion.objectives.core import denoising_error, epsilon_space_factor
from spin_diffusion.sampling.inversion import ddim_invert
from spin_diffusion.training.annotators import EmaAnnotators
from spin_diffusion.training.batches import Batch

if TYPE_CHECKING:
    import torch

    from spin_diffusion.config.run import TrainingConfig
    from spin_diffusion.model.families import Conditioning
    from spin_diffusion.training.method_state import MethodState
    from spin_diffusion.training.reference import Reference


@dataclass(frozen=True)
class PairErrors:
    """Per-sample errors of a pair batch: model and reference, preferred side ``a`` and other side ``b``.

    ``extra`` holds what a method's errors function adds for its objective
    (Adaptive-DPO: the minority score from its annotators).
    """

    m_a: torch.Tensor
    r_a: torch.Tensor
    m_b: torch.Tensor
    r_b: torch.Tensor
    extra: dict[str, torch.Tensor] = field(default_factory=dict)


def forward_noised_errors(
    cfg: TrainingConfig,
    unet: Any,
    noise_scheduler: Any,
    reference: Reference,
    batch: Batch,
    emb: Conditioning,
    state: MethodState | None = None,
) -> PairErrors:
    """Both members noised with the pair's shared ``t`` and its noise (one draw, or one each under
    ``pair_noise: independent``); one forward of the model on the pair.

    ``training.error_space: epsilon`` turns a v-prediction model's errors into
    epsilon-space errors (:func:`spin_diffusion.objectives.core.epsilon_space_factor`).
    """
    b = len(batch.indices)
    latents, emb2, t2, eps2 = _noised_pair_inputs(batch, emb)
    scale = error_space_scale(cfg, noise_scheduler, t2)
    model_err = prediction_error(unet, noise_scheduler, latents, emb2, t2, eps2) * scale
    ref_err = reference.errors(batch, latents, emb2).detach() * scale
    return PairErrors(model_err[:b], ref_err[:b], model_err[b:], ref_err[b:])


def _noised_pair_inputs(
    batch: Batch, emb: Conditioning
) -> tuple[torch.Tensor, Conditioning, torch.Tensor, torch.Tensor]:
    """Both members as one batch: latents, conditioning, the shared ``t`` and the pair's noise."""
    latents, emb2, t2 = _pair_inputs(batch, emb)
    return latents, emb2, t2, batch.pair_noise().to(emb.device)


def _pair_inputs(batch: Batch, emb: Conditioning) -> tuple[torch.Tensor, Conditioning, torch.Tensor]:
    """Both members as one batch: clean latents, conditioning and the shared ``t``, on the model's device."""
    import torch

    device = emb.device
    latents = torch.cat([batch.latents_a, batch.latents_b]).to(device)
    emb2 = emb.pair()  # each pair member keeps its own SDXL size conditioning
    return latents, emb2, batch.timesteps.repeat(2).to(device)


def error_space_scale(
    cfg: TrainingConfig, noise_scheduler: Any, timesteps: torch.Tensor
) -> torch.Tensor | float:
    """1 for ``error_space: native``; ``abar_t`` per sample for a v-prediction model in epsilon space."""
    if cfg.error_space == "native":
        return 1.0
    prediction_type = noise_scheduler.config.prediction_type
    abar = getattr(noise_scheduler, "alphas_cumprod", None)
    if abar is None:
        raise ConfigError(
            "training.error_space: epsilon applies to epsilon/v-prediction UNets; this model is a flow "
            "model (its velocity error is (1 - sigma)^-2 times the epsilon error); use native"
        )
    return epsilon_space_factor(abar.to(timesteps.device)[timesteps], prediction_type)


def inverted_errors(
    cfg: TrainingConfig,
    unet: Any,
    noise_scheduler: Any,
    reference: Reference,
    batch: Batch,
    emb: Conditioning,
    state: MethodState | None = None,
) -> PairErrors:
    """Inversion-DPO's seam: x_t from DDIM inversion under the reference, its prediction as the target.

    The reference error is zero by construction (it is compared with itself).
    """
    import torch

    predict_ref = getattr(reference, "predict", None)
    if predict_ref is None:
        raise ConfigError("inversion-dpo needs a live reference model (training.precompute_reference: false)")
    b = len(batch.indices)
    x0, emb2, t2 = _pair_inputs(batch, emb)
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
    model_err = denoising_error(pred, target) * error_space_scale(cfg, noise_scheduler, t2)
    zero = torch.zeros_like(model_err).detach()
    return PairErrors(model_err[:b], zero[:b], model_err[b:], zero[b:])


def model_pair_errors(
    cfg: TrainingConfig, unet: Any, noise_scheduler: Any, batch: Batch, emb: Conditioning
) -> tuple[torch.Tensor, torch.Tensor]:
    """The trained model's errors on the pair, noised as :func:`forward_noised_errors` noises it."""
    b = len(batch.indices)
    latents, emb2, t2, eps2 = _noised_pair_inputs(batch, emb)
    err = prediction_error(unet, noise_scheduler, latents, emb2, t2, eps2)
    err = err * error_space_scale(cfg, noise_scheduler, t2)
    return err[:b], err[b:]


def annotated_errors(
    cfg: TrainingConfig,
    unet: Any,
    noise_scheduler: Any,
    reference: Reference,
    batch: Batch,
    emb: Conditioning,
    state: MethodState | None = None,
) -> PairErrors:
    """Adaptive-DPO's seam: the pair's errors plus each pair's minority score from its annotators.

    With ``ema_annotators`` (official README) the annotators are the model and
    its two EMA copies, from step ``ema_warmup_steps`` on (before it the score
    is 0, as in the official code); without, the official single-model branch.
    """
    import torch

    e = forward_noised_errors(cfg, unet, noise_scheduler, reference, batch, emb)
    a = cfg.adaptive_dpo
    logits = ((e.r_a - e.r_b) - (e.m_a - e.m_b)).detach()  # the official unscaled logit, u / beta
    if not a.ema_annotators:
        w = single_model_uncertainty(logits, a.rho)
    elif not isinstance(state, EmaAnnotators):
        raise ValueError("adaptive-dpo with training.adaptive_dpo.ema_annotators needs its EMA annotators")
    elif state.ready:
        params = [p for p in unet.parameters() if p.requires_grad]

        def annotator_logits() -> torch.Tensor:
            m_a, m_b = model_pair_errors(cfg, unet, noise_scheduler, batch, emb)
            return ((e.r_a - e.r_b) - (m_a - m_b)).detach()

        others = state.scores(params, annotator_logits)
        w = annotator_uncertainty(torch.stack([logits, *others]), a.rho, a.normalise_logits)
    else:
        w = torch.zeros_like(logits)
    return PairErrors(e.m_a, e.r_a, e.m_b, e.r_b, {"uncertainty": w})
