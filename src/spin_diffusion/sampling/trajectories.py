"""Solver trajectories: the noise level of every stored latent, and the prediction each step implies.

The exact SPIN objective (paper eq. 4.8) scores a whole reverse trajectory
``x_T -> ... -> x_0`` step by step. A sampler's stored trajectory is a list of
``K + 1`` latents; this module says at which ``abar`` (``alphas_cumprod``) each
of them sits and which UNet timestep produced each step, and turns a stored
step ``(x_t, x_prev)`` into the prediction target that the deterministic DDIM
step (sigma_t -> 0) would need to land exactly on ``x_prev``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from spin_diffusion.config.run import TRAJECTORY_SCHEDULERS

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class SolverSchedule:
    """Solver step k reads its input at UNet timestep ``timesteps[k]`` and noise level
    ``alphas_in[k]`` and writes a latent at ``alphas_out[k]``.

    Stored point 0 is the starting noise x_T, point K the sampler's output;
    step k goes from point k to point k + 1. Usually ``alphas_out[k] ==
    alphas_in[k + 1]``, but diffusers' DDIM with ``timestep_spacing:
    linspace`` steps to ``t - T / K`` while the next step reads ``t_{k+1}``;
    keeping both makes each step's term use the step the sampler really took.
    """

    timesteps: tuple[int, ...]
    alphas_in: tuple[float, ...]
    alphas_out: tuple[float, ...]

    def __post_init__(self) -> None:
        if not len(self.timesteps) == len(self.alphas_in) == len(self.alphas_out):
            raise ValueError("a schedule needs a timestep, an input and an output abar per step")
        if any(b <= a for a, b in zip(self.alphas_in, self.alphas_out, strict=True)):
            raise ValueError("every step must go from noise towards the image (abar must increase)")

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    def as_json(self) -> dict[str, list[Any]]:
        return {
            "timesteps": list(self.timesteps),
            "alphas_in": list(self.alphas_in),
            "alphas_out": list(self.alphas_out),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SolverSchedule:
        return cls(
            tuple(int(t) for t in data["timesteps"]),
            tuple(float(a) for a in data["alphas_in"]),
            tuple(float(a) for a in data["alphas_out"]),
        )


def solver_schedule(scheduler: Any, num_inference_steps: int) -> SolverSchedule:
    """The schedule a DDIM or DPM-Solver++ sampler follows for ``num_inference_steps`` steps.

    Computed on a copy with ``set_timesteps`` (what the pipeline calls), so the
    scheduler in use is untouched. The noise levels are the ones the solver's
    own update uses: ``1 / (1 + sigma^2)`` of consecutive sigmas for
    DPM-Solver; for DDIM ``alphas_cumprod[t]`` in and ``alphas_cumprod[t - T/K]``
    (or ``final_alpha_cumprod`` past 0) out, as ``DDIMScheduler.step`` computes them.
    """
    import copy

    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    sched = copy.deepcopy(scheduler)
    sched.set_timesteps(num_inference_steps)
    timesteps = tuple(int(t) for t in sched.timesteps)
    if isinstance(sched, DPMSolverMultistepScheduler):
        abar = (1.0 / (1.0 + sched.sigmas.double() ** 2)).tolist()
        a_in, a_out = abar[:-1], abar[1:]
    elif isinstance(sched, DDIMScheduler):
        all_abar = sched.alphas_cumprod.double()
        stride = sched.config.num_train_timesteps // sched.num_inference_steps
        a_in = [float(all_abar[t]) for t in timesteps]
        a_out = [
            float(all_abar[t - stride]) if t - stride >= 0 else float(sched.final_alpha_cumprod)
            for t in timesteps
        ]
    else:
        raise ValueError(
            f"{type(sched).__name__} has no stored-trajectory support; use one of {', '.join(TRAJECTORY_SCHEDULERS)}"
        )
    return SolverSchedule(timesteps, tuple(a_in), tuple(a_out))


def transition_target(
    x_t: torch.Tensor,
    x_prev: torch.Tensor,
    abar_t: torch.Tensor,
    abar_prev: torch.Tensor,
    prediction_type: str,
) -> torch.Tensor:
    """The prediction whose deterministic DDIM step from ``x_t`` lands exactly on ``x_prev``.

    The DDIM step is affine in the predicted noise: ``x_prev = A x_t + H eps``
    with ``A = sqrt(abar_prev / abar_t)`` and
    ``H = sqrt(1 - abar_prev) - A sqrt(1 - abar_t)`` (the paper's ``h_t``,
    appendix C.3/C.4), so ``||x_prev - mu_theta(x_t)||^2 = H^2 ||eps_hat - eps_theta||^2``
    with ``eps_hat = (x_prev - A x_t) / H``. Returned in the model's own
    prediction space (epsilon, v or sample), in fp32; computed in fp64 because
    ``H`` is small for closely spaced steps. ``abar_*`` are per-sample ``[N]``.
    """
    import torch

    shape = (-1,) + (1,) * (x_t.dim() - 1)
    a_t = abar_t.double().reshape(shape)
    a_p = abar_prev.double().reshape(shape)
    xt, xp = x_t.double(), x_prev.double()
    scale = (a_p / a_t).sqrt()
    h = (1 - a_p).sqrt() - scale * (1 - a_t).sqrt()
    eps = (xp - scale * xt) / h
    if prediction_type == "epsilon":
        target = eps
    else:
        x0 = (xt - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        if prediction_type == "v_prediction":
            target = a_t.sqrt() * eps - (1 - a_t).sqrt() * x0
        elif prediction_type == "sample":
            target = x0
        else:
            raise ValueError(f"unsupported prediction_type {prediction_type!r}")
    return target.to(torch.float32)
