"""A direct autograd implementation of the exact SPIN objective (eq. 4.8), for checking the two-pass one.

It keeps every step's graph alive at once (what the paper calls impractical) and
takes a different route through the math: the per-step terms are the squared
distances ``||x_prev - mu_theta(x_t)||^2`` of eq. 4.7 in latent space, with the
DDIM mean built from the model's noise prediction, divided by ``h_t^2`` (and by
``abar_t`` for a v-prediction model, whose errors the project measures in v
space); the real side walks the forward trajectory ``sqrt(abar) x0 + sqrt(1 - abar) eps``.
"""

from __future__ import annotations

from typing import Any

import torch

from spin_diffusion.objectives.core import margin_loss
from spin_diffusion.sampling.trajectories import SolverSchedule


def _eps_from_output(out: torch.Tensor, x_t: torch.Tensor, abar: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "epsilon":
        return out
    if kind == "v_prediction":
        return abar.sqrt() * out + (1 - abar).sqrt() * x_t
    raise ValueError(kind)


def _step_term(
    unet: Any,
    x_t: torch.Tensor,
    x_prev: torch.Tensor,
    t: int,
    a: float,
    a_prev: float,
    emb: torch.Tensor,
    kind: str,
) -> torch.Tensor:
    a_t = torch.tensor(a, dtype=torch.float64)
    a_p = torch.tensor(a_prev, dtype=torch.float64)
    out = unet(x_t.float(), torch.full((len(x_t),), t, dtype=torch.long), emb).sample.double()
    eps = _eps_from_output(out, x_t.double(), a_t, kind)
    x0_hat = (x_t.double() - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    mu = a_p.sqrt() * x0_hat + (1 - a_p).sqrt() * eps
    h = (1 - a_p).sqrt() - (a_p / a_t).sqrt() * (1 - a_t).sqrt()
    weight = 1 / h**2 if kind == "epsilon" else 1 / (h**2 * a_t)
    return ((x_prev.double() - mu) ** 2).flatten(1).mean(1) * weight


def direct_exact_loss(
    unet: Any,
    ref_unet: Any,
    x0: torch.Tensor,
    eps: torch.Tensor,
    trajectory: torch.Tensor,
    schedule: SolverSchedule,
    emb: torch.Tensor,
    beta: float,
    kind: str = "epsilon",
    loss_type: str = "logistic",
) -> torch.Tensor:
    """``mean_b l(u_b)`` with ``u = -(beta / K) sum_k [(m - r)_real - (m - r)_gen]``, all in one graph."""
    k_all = schedule.num_steps
    total = torch.zeros(len(x0), dtype=torch.float64)

    def forward_point(a: float) -> torch.Tensor:
        return (a**0.5) * x0.double() + ((1 - a) ** 0.5) * eps.double()

    for k in range(k_all):
        t, a, a_prev = schedule.timesteps[k], schedule.alphas_in[k], schedule.alphas_out[k]
        real_t, real_prev = forward_point(a).float(), forward_point(a_prev) if a_prev < 1 else x0.double()
        gen_t, gen_prev = trajectory[:, k], trajectory[:, k + 1]
        m_real = _step_term(unet, real_t, real_prev, t, a, a_prev, emb, kind)
        m_gen = _step_term(unet, gen_t, gen_prev, t, a, a_prev, emb, kind)
        with torch.no_grad():
            r_real = _step_term(ref_unet, real_t, real_prev, t, a, a_prev, emb, kind)
            r_gen = _step_term(ref_unet, gen_t, gen_prev, t, a, a_prev, emb, kind)
        total = total + (m_real - r_real) - (m_gen - r_gen)
    u = -beta * total / k_all
    return margin_loss(u.float(), loss_type).mean()
