"""Training objectives as pure functions of per-sample denoising errors.

Every function here takes tensors of per-sample errors (shape ``[B]``) and
returns per-sample losses, so one training loop serves SFT, Diffusion-DPO and
SPIN-Diffusion and each loss can be checked against hand-computed numbers.

Pairwise convention (binding for the whole project)::

    u = -beta * ((model_err_a - ref_err_a) - (model_err_b - ref_err_b))

with ``a`` the member to be preferred (the real image for SPIN, the winner
for DPO) and ``b`` the other. There is **no factor 1/2**: the official
Diffusion-DPO code (and diffusers' SDXL script) multiplies ``beta_dpo`` by 0.5,
so its ``beta_dpo=5000`` equals ``beta=2500`` here; diffusers' SD-1.5 script has
no 1/2, so its 2500 is 2500 here (docs/methods.md has the table per script).
The paper's SPIN values (2000, 5000, 5000) are on this scale already.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

LossType = Literal["logistic", "hinge", "correlation"]
LOSS_TYPES: tuple[str, ...] = ("logistic", "hinge", "correlation")


def denoising_error(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared error averaged over every non-batch dimension, in fp32.

    Computed in fp32 because the pairwise losses subtract errors that differ
    by ~1e-4 and multiply by beta ~ 5000: half precision would be noise.
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    diff = pred.float() - target.float()
    return diff.pow(2).reshape(diff.shape[0], -1).mean(dim=1)


def preference_margin(
    model_err_a: torch.Tensor,
    ref_err_a: torch.Tensor,
    model_err_b: torch.Tensor,
    ref_err_b: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """The logit ``u``: positive when the model fits ``a`` better than ``b`` relative to the reference."""
    d_a = model_err_a.float() - ref_err_a.float()
    d_b = model_err_b.float() - ref_err_b.float()
    return -beta * (d_a - d_b)


def margin_loss(u: torch.Tensor, loss_type: LossType = "logistic") -> torch.Tensor:
    """The losses the paper's Assumption 5.1 allows, applied elementwise to ``u``.

    ``-logsigmoid`` is the stable form of ``log(1 + exp(-u))``: finite loss
    and gradient for any finite ``u``.
    """
    if loss_type == "logistic":
        return -F.logsigmoid(u)
    if loss_type == "hinge":
        return F.relu(1.0 - u)
    if loss_type == "correlation":
        return 1.0 - u
    raise ValueError(f"unknown loss_type {loss_type!r}; expected one of {', '.join(LOSS_TYPES)}")


def spin_loss(
    model_err_real: torch.Tensor,
    ref_err_real: torch.Tensor,
    model_err_gen: torch.Tensor,
    ref_err_gen: torch.Tensor,
    beta: float,
    loss_type: LossType = "logistic",
) -> torch.Tensor:
    """Per-sample SPIN-Diffusion loss (approximate objective, paper eq. 4.9).

    The reference is the opponent theta_k; ``gen`` errors are on theta_k's own
    samples for the same caption, with the same ``t`` and noise as ``real``.
    """
    u = preference_margin(model_err_real, ref_err_real, model_err_gen, ref_err_gen, beta)
    return margin_loss(u, loss_type)


def dpo_loss(
    model_err_win: torch.Tensor,
    ref_err_win: torch.Tensor,
    model_err_lose: torch.Tensor,
    ref_err_lose: torch.Tensor,
    beta: float,
    loss_type: LossType = "logistic",
) -> torch.Tensor:
    """Per-sample Diffusion-DPO loss: the SPIN function on (winner, loser) pairs.

    No 1/2 factor: Salesforce's ``beta_dpo=5000`` (x 0.5) is ``beta=2500`` here, and so
    is diffusers' SD-1.5 ``beta_dpo=2500`` (no 0.5).
    """
    u = preference_margin(model_err_win, ref_err_win, model_err_lose, ref_err_lose, beta)
    return margin_loss(u, loss_type)


def epsilon_space_factor(alpha_bar: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """Per-sample factor that turns an error in the model's prediction space into epsilon space.

    With ``x_t = sqrt(a) x0 + sqrt(1-a) eps`` and diffusers' ``v = sqrt(a) eps -
    sqrt(1-a) x0``, the noise a v output implies is ``eps = sqrt(a) v + sqrt(1-a) x_t``,
    so ``eps_hat - eps = sqrt(a) (v_hat - v)`` and ``err_eps = a * err_v``: a
    v-space error is the epsilon-space error divided by ``abar_t``.
    """
    a = alpha_bar.float()
    if prediction_type == "epsilon":
        return torch.ones_like(a)
    if prediction_type == "v_prediction":
        return a
    raise ValueError(f"epsilon-space errors do not support prediction_type {prediction_type!r}")


def sft_loss(model_err: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean (optionally weighted) denoising error over the batch."""
    err = model_err.float()
    if weights is None:
        return err.mean()
    return (err * weights.float()).mean()


def min_snr_weights(snr: torch.Tensor, gamma: float = 5.0, prediction_type: str = "epsilon") -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al., 2023) for epsilon or v targets.

    For an epsilon target the weight is ``min(snr, gamma) / snr``; for a v
    target ``min(snr, gamma) / (snr + 1)``.
    """
    snr = snr.float()
    clipped = torch.minimum(snr, torch.full_like(snr, gamma))
    if prediction_type == "epsilon":
        return clipped / snr
    if prediction_type == "v_prediction":
        return clipped / (snr + 1.0)
    raise ValueError(f"min-SNR weighting does not support prediction_type {prediction_type!r}")


@dataclass(frozen=True)
class PairDiagnostics:
    """Scalars worth logging every step for a pairwise objective."""

    implicit_acc: float
    margin_a: float  # mean (model_err - ref_err) on the preferred side (real / winner)
    margin_b: float  # mean (model_err - ref_err) on the other side (generated / loser)
    u_mean: float

    def as_dict(self, a: str = "real", b: str = "gen") -> dict[str, float]:
        return {
            "implicit_acc": self.implicit_acc,
            f"d_{a}": self.margin_a,
            f"d_{b}": self.margin_b,
            "u_mean": self.u_mean,
        }


def implicit_accuracy(u: torch.Tensor) -> float:
    """``mean(u > 0)`` with ties counted as one half, as diffusers' DPO scripts count them.

    At theta = reference every ``u`` is 0: that is chance (0.5), not 0.
    """
    u = u.detach().float()
    return ((u > 0).float() + 0.5 * (u == 0).float()).mean().item()


@torch.no_grad()
def pair_diagnostics(
    model_err_a: torch.Tensor,
    ref_err_a: torch.Tensor,
    model_err_b: torch.Tensor,
    ref_err_b: torch.Tensor,
    beta: float,
    u: torch.Tensor | None = None,
) -> PairDiagnostics:
    """Implicit accuracy and the two margins, detached.

    ``u`` is the logit the objective actually uses (SEE-DPO's and Adaptive-DPO's
    differ from the plain DPO logit); without it, :func:`preference_margin`.
    """
    if u is None:
        u = preference_margin(model_err_a, ref_err_a, model_err_b, ref_err_b, beta)
    return PairDiagnostics(
        implicit_acc=implicit_accuracy(u),
        margin_a=(model_err_a.float() - ref_err_a.float()).mean().item(),
        margin_b=(model_err_b.float() - ref_err_b.float()).mean().item(),
        u_mean=u.mean().item(),
    )


# --------------------------------------------------------------------------- exact SPIN (eq. 4.8)


def trajectory_margin(
    model_err_real: torch.Tensor,
    ref_err_real: torch.Tensor,
    model_err_gen: torch.Tensor,
    ref_err_gen: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """The argument of ``l`` in the exact objective (paper eq. 4.8), per example: shape ``[B]``.

    Inputs are per-step errors ``[B, K]`` over a K-step trajectory; the result is
    ``u = -(beta / K) * sum_k ((m_real - r_real) - (m_gen - r_gen))_k``, i.e.
    the approximate margin of :func:`preference_margin` averaged over the steps
    *inside* ``l``. With K = 1 it is exactly :func:`preference_margin`.
    """
    d = (model_err_real.float() - ref_err_real.float()) - (model_err_gen.float() - ref_err_gen.float())
    return -beta * d.mean(dim=1)


def exact_spin_loss(
    model_err_real: torch.Tensor,
    ref_err_real: torch.Tensor,
    model_err_gen: torch.Tensor,
    ref_err_gen: torch.Tensor,
    beta: float,
    loss_type: LossType = "logistic",
) -> torch.Tensor:
    """Per-example exact SPIN loss ``l(u)`` with ``u`` from :func:`trajectory_margin` (eq. 4.8).

    By Jensen (``l`` convex) it is at most the mean over steps of the per-step
    losses of :func:`spin_loss`: the paper's Lemma 4.1.
    """
    return margin_loss(
        trajectory_margin(model_err_real, ref_err_real, model_err_gen, ref_err_gen, beta), loss_type
    )


def margin_loss_slope(u: torch.Tensor, loss_type: LossType = "logistic") -> torch.Tensor:
    """``l'(u)`` elementwise, detached: what pass 2 of the exact objective scales each step's gradient by.

    Taken by autograd from :func:`margin_loss` itself, so it cannot disagree with
    the loss (hinge at ``u = 1`` gets the subgradient autograd gives, 0).
    """
    with torch.enable_grad():
        x = u.detach().float().requires_grad_(True)
        (slope,) = torch.autograd.grad(margin_loss(x, loss_type).sum(), x)
    return slope


def trajectory_step_coefficients(
    u: torch.Tensor, beta: float, num_steps: int, loss_type: LossType = "logistic"
) -> torch.Tensor:
    """``d l(u) / d m_real_k = -d l(u) / d m_gen_k = -l'(u) * beta / K``, per example ``[B]``.

    The gradient of ``l(u)`` is ``sum_k c * (grad m_real_k - grad m_gen_k)``
    with this ``c``: pass 2 back-propagates ``c * (m_real_k - m_gen_k)`` one
    chunk of steps at a time (reference errors carry no gradient).
    """
    return margin_loss_slope(u, loss_type) * (-beta / num_steps)
