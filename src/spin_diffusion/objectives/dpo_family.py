"""The Diffusion-DPO family as pure functions of per-sample denoising errors.

Same conventions as :mod:`spin_diffusion.objectives.core`: ``m``/``r`` are the
trained model's and the reference's per-sample errors (shape ``[B]``), ``w`` /
``l`` the winner and loser, and the pairwise logit is

    u = -beta * ((m_w - r_w) - (m_l - r_l))      (no factor 1/2)

Each function's docstring says where its formula comes from (paper equation or
official code), its defaults and how the source's beta maps onto ours. Where a
paper's own equation could not be read, the docstring says so and names what
the implementation follows instead (docs/methods.md has the full account).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from spin_diffusion.objectives.core import LossType, margin_loss, preference_margin


def dmpo_loss(
    model_err_win: torch.Tensor,
    ref_err_win: torch.Tensor,
    model_err_lose: torch.Tensor,
    ref_err_lose: torch.Tensor,
    beta: float,
    alpha: float = 0.01,
) -> torch.Tensor:
    """DMPO (Li, Xu, Han, Dang, Ermon 2025): the reverse KL between the model's and a target preference.

    With ``p = sigmoid(u)`` the model's implied probability that the winner wins
    and ``q = 1 - alpha`` the target probability, the per-sample loss is

        KL(Bern(p) || Bern(q)) = p log(p / q) + (1 - p) log((1 - p) / (1 - q)).

    Source: the paper's own equation could not be read here (only its abstract:
    "minimizing reverse KL divergence"); this is the DMPO objective as the
    AIDC-AI Diffusion-SDPO code implements it (``train_method == 'dmpo'``,
    ``--dmpo_alpha 0.01``, ``--beta_dpo 2000`` with its ``0.5 * beta_dpo`` scale,
    i.e. beta = 1000 here). Unlike ``-logsigmoid(u)`` the loss is minimal at
    ``p = q``, i.e. ``u = logit(1 - alpha)`` (4.6 for alpha 0.01), rather than
    ``p -> 1``: past that margin its gradient changes sign and pushes the pair
    back towards it (mode-seeking, bounded).
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    u = preference_margin(model_err_win, ref_err_win, model_err_lose, ref_err_lose, beta)
    p = torch.sigmoid(u)
    log_p, log_1mp = F.logsigmoid(u), F.logsigmoid(-u)  # stable log p and log(1 - p)
    return p * (log_p - math.log(1.0 - alpha)) + (1.0 - p) * (log_1mp - math.log(alpha))


def see_dpo_loss(
    model_err_win: torch.Tensor,
    ref_err_win: torch.Tensor,
    model_err_lose: torch.Tensor,
    ref_err_lose: torch.Tensor,
    beta: float,
    gamma: float,
    loss_type: LossType = "logistic",
) -> torch.Tensor:
    """SEE-DPO (Shekhar, Singh, Zhang, TMLR 2025): Diffusion-DPO with a self-entropy bonus ``gamma``.

    The paper's equations could not be read here; its summaries state that a
    gamma-weighted self-entropy term is added to the RLHF objective and that this
    "flattens the reference distribution". We derive the loss from that objective
    (our derivation, docs/methods.md): maximising
    ``E[r] - beta KL(p || p_ref) + gamma H(p)`` gives
    ``p* ~ p_ref^(beta / (beta + gamma)) exp(r / (beta + gamma))`` (the flattened
    reference), so the Bradley-Terry logit becomes
    ``(beta + gamma) (log p_w - log p_l) - beta (log ref_w - log ref_l)``. With
    the Diffusion-DPO ELBO (log p ~ -err, constants in beta):

        u = -beta ((m_w - r_w) - (m_l - r_l)) - gamma (m_w - m_l)

    ``gamma = 0`` is Diffusion-DPO exactly. ``gamma`` is on our beta scale.
    """
    u = see_dpo_logit(model_err_win, ref_err_win, model_err_lose, ref_err_lose, beta, gamma)
    return margin_loss(u, loss_type)


def see_dpo_logit(
    model_err_win: torch.Tensor,
    ref_err_win: torch.Tensor,
    model_err_lose: torch.Tensor,
    ref_err_lose: torch.Tensor,
    beta: float,
    gamma: float,
) -> torch.Tensor:
    """The logit SEE-DPO's loss uses (what its implicit accuracy and ``u_mean`` are logged from)."""
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    u = preference_margin(model_err_win, ref_err_win, model_err_lose, ref_err_lose, beta)
    return u - gamma * (model_err_win.float() - model_err_lose.float())


def adaptive_dpo_lite_loss(
    model_err_win: torch.Tensor,
    ref_err_win: torch.Tensor,
    model_err_lose: torch.Tensor,
    ref_err_lose: torch.Tensor,
    beta: float,
    margin: float = 1.0,
    loss_type: LossType = "logistic",
) -> torch.Tensor:
    """``adaptive-dpo-lite``: OUR VARIANT of Adaptive-DPO, written before its code was read.

    Not the official method (that is :mod:`spin_diffusion.objectives.adaptive_dpo`):
    one model, no EMA annotators, a weight and margin of our own choice.

    Built from the model's detached confidence ``c = sigmoid(u)`` that the label
    is right:

        W = min(1, 2c)        (1 when the model agrees, -> 0 as it confidently disagrees)
        Gamma = margin * max(0, 2c - 1)
        loss = W * l(u - Gamma)

    At the start (theta = reference, u = 0) this is Diffusion-DPO exactly.
    """
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    u = preference_margin(model_err_win, ref_err_win, model_err_lose, ref_err_lose, beta)
    c = torch.sigmoid(u.detach())
    weight = torch.clamp(2.0 * c, max=1.0)
    gamma = margin * torch.clamp(2.0 * c - 1.0, min=0.0)
    return weight * margin_loss(u - gamma, loss_type)


def kto_loss(
    model_err: torch.Tensor,
    ref_err: torch.Tensor,
    desirable: torch.Tensor,
    beta: float,
    lambda_desirable: float = 1.0,
    lambda_undesirable: float = 1.0,
    batch_mean: torch.Tensor | None = None,
) -> torch.Tensor:
    """Diffusion-KTO (Li, Kallidromitis, Gokul, Kato, Kozuka, NeurIPS 2024) on per-image labels.

    Per image, with ``g = r - m`` (the implicit reward: how much better than the
    reference the model denoises it) and the reference point ``z`` the batch mean
    of ``g`` clamped at 0 and detached (the KL estimate), the loss is

        l = lambda_y * (1 - sigmoid(s_y * beta * (g - z))),   s_y = +1 desirable, -1 undesirable

    Source: the official code (jacklishufan/diffusion-kto, ``--loss kto --halo
    sigmoid``; the reference point step is commented "eq 8" there); defaults
    ``beta_dpo = 1000``, ``lambda_d = lambda_u = 1``. That code uses beta without
    a 1/2, so its 1000 is 1000 here. The official code averages z over the
    batches of all processes: ``batch_mean`` is that mean of ``g`` when the
    caller has it (:func:`spin_diffusion.training.distributed.mean_over_processes`);
    without it, the mean of this ``g``.
    """
    g = ref_err.float() - model_err.float()
    z = (g.mean() if batch_mean is None else batch_mean.float()).clamp(min=0.0).detach()
    sign = desirable.float() * 2.0 - 1.0
    weight = torch.where(desirable.bool(), lambda_desirable, lambda_undesirable).to(g.dtype)
    return weight * (1.0 - torch.sigmoid(sign * beta * (g - z)))


def inversion_dpo_loss(
    model_err_win: torch.Tensor,
    model_err_lose: torch.Tensor,
    beta: float,
    loss_type: LossType = "logistic",
) -> torch.Tensor:
    """Inversion-DPO (Li et al., ACM MM 2025): DPO on latents found by DDIM inversion, not forward noise.

    The errors are taken at ``x_t`` obtained by DDIM-inverting the clean winner
    and loser with the reference (:mod:`spin_diffusion.sampling.inversion`), with the
    reference's own prediction there as the target: the deterministic inversion
    makes the reference's error zero by construction, so

        u = -beta (m_w - m_l),   loss = l(u)

    Source: the official code (MIGHTYEZ/Inversion-DPO ``train_ddim.py``), whose
    error is ``||eps_theta - eps_ref||^2`` along the inverted trajectory and
    whose ``beta_dpo`` default 5000 enters as ``0.5 * beta_dpo`` (2500 here).
    That code's logit has the opposite sign (``+0.5 beta (diff_w - diff_l)``);
    we keep the sign the DPO derivation gives (docs/methods.md says why).
    """
    zero = torch.zeros_like(model_err_win, dtype=torch.float32)
    u = preference_margin(model_err_win, zero, model_err_lose, zero, beta)
    return margin_loss(u, loss_type)
