"""Adaptive-DPO as its official code defines it: pure functions of per-sample errors and annotator logits.

Source: fanfanffff1/Adaptive-DPO, ``dpo_train_un.py`` with the flags of its
README (``--use_self_logit_reweight --use_ema --logits_rho 15
--use_logits_normalization --use_margin --margin_type quadratic
--rewight_temparature 10 --rewight_intercept 1 --beta_dpo 1000``; weight type
``linear`` by default). In that code the DPO logit is ``beta_dpo * logits``
with ``logits = ref_diff - model_diff`` and **no factor 1/2**, so its
``beta_dpo 1000`` is ``beta 1000`` here and ``u = beta * logits`` is our
:func:`~spin_diffusion.objectives.core.preference_margin`.

Per pair, the minority score ``w`` (the paper's combination of intra-annotator
confidence and inter-annotator stability) comes from the detached logits of
three "annotators": the trained model and two EMA copies of it (decays 0.9999
and 0.5, kept by :mod:`spin_diffusion.training.annotators`). Then

    weight = 1 / (temperature * w + intercept)                   (detached)
    u_eff  = u - (mean_batch(u) / beta - w^2 / beta)             (quadratic margin)
    loss   = weight * (-logsigmoid(u_eff))

The margin term is on the scale of the *unscaled* logits (it is divided by
beta), so next to ``u`` it is tiny; we keep it exactly as the code has it.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from spin_diffusion.objectives.core import preference_margin

MarginType = Literal["quadratic", "linear", "none"]

_TINY = 1e-30


def annotator_uncertainty(logits: torch.Tensor, rho: float = 15.0, normalise: bool = True) -> torch.Tensor:
    """The minority score ``w`` of each pair from K >= 2 annotators' logits ``[K, B]`` (detached).

    Each annotator's logits (``ref_diff - model_diff``, no beta) are divided by
    their L2 norm over the batch (``normalise``), scaled by ``rho``; then
    ``w = |mean_k sigmoid(x_k) - 1| * min(1, std_k x_k)`` (unbiased std over the
    annotators): low when all annotators agree, confidently, with the label.
    An annotator whose logits are all zero (theta = reference) has norm 0; the
    official code divides by it and gets NaN, we leave its zeros as they are.
    """
    if logits.dim() != 2 or logits.shape[0] < 2:
        raise ValueError(f"annotator logits must be [K >= 2, B], got {tuple(logits.shape)}")
    x = logits.detach().float()
    if normalise:
        x = x / x.norm(dim=1, keepdim=True).clamp_min(_TINY)
    x = x * rho
    spread = x.std(dim=0).clamp(max=1.0)
    return (torch.sigmoid(x).mean(dim=0) - 1.0).abs() * spread


def single_model_uncertainty(logits: torch.Tensor, rho: float = 15.0) -> torch.Tensor:
    """The official single-model branch (``--use_ema`` off): ``w = |sigmoid(rho * logits) - 1|``, unnormalised."""
    return (torch.sigmoid(rho * logits.detach().float()) - 1.0).abs()


def adaptive_dpo_logit(
    u: torch.Tensor, uncertainty: torch.Tensor, beta: float, margin: MarginType
) -> torch.Tensor:
    """The logit inside ``logsigmoid``: ``u`` shifted by the official adaptive margin (what is logged)."""
    if margin == "none":
        return u
    w = uncertainty.detach().float()
    penalty = w * w if margin == "quadratic" else w
    return u - (u.detach().mean() / beta - penalty / beta)


def adaptive_dpo_loss(
    model_err_win: torch.Tensor,
    ref_err_win: torch.Tensor,
    model_err_lose: torch.Tensor,
    ref_err_lose: torch.Tensor,
    beta: float,
    uncertainty: torch.Tensor,
    temperature: float = 10.0,
    intercept: float = 1.0,
    margin: MarginType = "quadratic",
) -> torch.Tensor:
    """Per-pair Adaptive-DPO loss (official sigmoid loss, linear weight type) given the minority score ``w``.

    ``uncertainty`` is :func:`annotator_uncertainty` (EMA annotators),
    :func:`single_model_uncertainty`, or zeros (the official EMA warm-up steps,
    where the loss is DPO with only the batch-mean margin).
    """
    u = preference_margin(model_err_win, ref_err_win, model_err_lose, ref_err_lose, beta)
    weight = 1.0 / (uncertainty.detach().float() * temperature + intercept)
    return -weight * F.logsigmoid(adaptive_dpo_logit(u, uncertainty, beta, margin))
