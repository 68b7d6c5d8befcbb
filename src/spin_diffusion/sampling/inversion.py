"""DDIM inversion: the noisy latent at ``t`` that the reference's own deterministic sampler maps to ``x0``.

Inversion-DPO replaces Diffusion-DPO's forward noising ``x_t = sqrt(a) x0 +
sqrt(1 - a) eps`` (a random point the model may never visit when sampling)
by the point on the reference's DDIM trajectory that ends at ``x0``. This is
the only seam it needs: the rest of the loss is the per-sample error of
:func:`spin_diffusion.objectives.dpo_family.inversion_dpo_loss`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Predict = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x, timesteps [B]) -> model output


def output_to_eps(
    output: torch.Tensor, x: torch.Tensor, alpha_bar: torch.Tensor, prediction_type: str
) -> torch.Tensor:
    """The noise a model output implies at ``x`` (epsilon as is; v -> eps = sqrt(a) v + sqrt(1-a) x)."""
    if prediction_type == "epsilon":
        return output
    if prediction_type == "v_prediction":
        a = alpha_bar.view(-1, *([1] * (x.dim() - 1)))
        return a.sqrt() * output + (1 - a).sqrt() * x
    raise ValueError(f"DDIM inversion does not support prediction_type {prediction_type!r}")


@torch.no_grad()
def ddim_invert(
    predict: Predict,
    alphas_cumprod: torch.Tensor,
    x0: torch.Tensor,
    timesteps: torch.Tensor,
    num_steps: int,
    prediction_type: str = "epsilon",
) -> torch.Tensor:
    """Run DDIM backwards from clean ``x0`` to each sample's own ``timesteps[i]`` in ``num_steps`` steps.

    Step ``k`` goes from ``tau_{k-1}`` to ``tau_k = round(k t_i / num_steps)``:
    the noise is predicted at the current latent for timestep ``tau_k``, then
    ``x <- sqrt(a_k) x0_hat + sqrt(1 - a_k) eps``. Deterministic; one ``predict``
    call per step for the whole batch.

    The clean latent is taken to sit at ``abar_0`` (``tau_0 = 0``), not at alpha
    1: the convention of the official Inversion-DPO loop (its DDIM scheduler has
    ``set_alpha_to_one=False``, so its first, t = 0 step is an identity at
    ``abar_0``) and of diffusers' DDIM sampler for SD, whose last step ends at
    ``abar_0``. With it, ``num_steps = 39`` to ``t = 975`` reproduces the official
    40-step loop (docs/methods.md).
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    abar = alphas_cumprod.to(x0.device, torch.float32)
    t = timesteps.to(x0.device).long()
    shape = (-1, *([1] * (x0.dim() - 1)))
    x = x0.float()
    a_prev = abar[0].expand(len(t))  # x0 sits at abar_0, as the official loop (and DDIM sampling) has it
    for k in range(1, num_steps + 1):
        tau = torch.round(t.float() * k / num_steps).long()
        a = abar[tau]
        eps = output_to_eps(predict(x, tau).float(), x, a, prediction_type)  # the level the model is told
        x0_hat = (x - (1 - a_prev).sqrt().view(shape) * eps) / a_prev.sqrt().view(shape)
        x = a.sqrt().view(shape) * x0_hat + (1 - a).sqrt().view(shape) * eps
        a_prev = a
    return x
