"""The exact SPIN-Diffusion objective (paper eq. 4.8), memory-flat in two passes.

What is computed, per example (real latent ``x0``, caption ``c``, the
opponent's stored K-step trajectory ``x'_0 .. x'_K`` from noise to sample, and
the solver's timesteps ``t_0 .. t_{K-1}``)::

    u    = -(beta / K) * sum_k [ (m_real_k - r_real_k) - (m_gen_k - r_gen_k) ]     (eq. 4.8)
    loss = l(u)

``m`` are errors of the trained model theta, ``r`` of the opponent theta_k
(the reference, as for approximate SPIN). The per-step terms come from the
Gaussian reverse transitions of eq. 4.7: ``||x_prev - mu_theta(x_t, c, t)||^2``
with the deterministic DDIM mean (sigma_t -> 0, as the paper's appendix C
derivations take it) equals ``h_t^2 ||target - theta(x_t, c, t)||^2`` in the
model's prediction space, and, as in approximate SPIN, ``beta_t h_t^2 / T`` is
one constant ``beta / K`` (the project's beta convention, objectives.py: no
factor 1/2). So each term is a per-sample mean squared error:

- generated side, step k: the pair ``(x'_k, x'_{k+1})`` of the stored trajectory;
  the target is the prediction whose DDIM step lands exactly on ``x'_{k+1}``
  (:func:`spin_diffusion.sampling.trajectories.transition_target`), input ``x'_k`` at ``t_k``.
  The trajectory was made with classifier-free guidance and (for DPM-Solver++)
  a multistep update: the terms score the *observed* transitions under the
  model's unguided conditional Gaussian step, which is the modelling choice.
- real side, step k: the forward trajectory of ``x0`` at the same timesteps.
  With sigma -> 0 the DDIM forward process noises every step with the same
  ``eps`` (``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps``), the example's
  seeded noise, so the pair ``(x_{t_k}, x_{t_{k+1}})`` implies exactly ``eps``
  and the term is the ordinary denoising error at ``t_k``.

Memory. Pass 1 computes every ``m`` and ``r`` without gradients, a chunk of
(example, step) terms at a time, and from them ``u`` and ``l'(u)``. Pass 2
back-propagates ``c * (m_real_k - m_gen_k)`` with ``c = -l'(u) beta / K``
(:func:`spin_diffusion.objectives.core.trajectory_step_coefficients`), again one
chunk at a time, calling the trainer's backward per chunk: the gradients sum to
``grad l(u)`` while only one chunk's graph is alive, so memory does not grow
with K. Optionally pass 2 visits only ``m`` of each example's K steps (a seeded
uniform subset without replacement, each weighted ``K / m``): an unbiased
estimate of the same gradient; the loss value still uses all K steps.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from spin_diffusion.errors import ConfigError
from spin_diffusion.model.families import Conditioning
from spin_diffusion.model.prediction import diffusion_target
from spin_diffusion.objectives.core import (
    denoising_error,
    implicit_accuracy,
    margin_loss,
    trajectory_margin,
    trajectory_step_coefficients,
)
from spin_diffusion.sampling.trajectories import transition_target
from spin_diffusion.training.loss_types import Backprop, LossOutput
from spin_diffusion.training.reference import ModuleReference, Reference

if TYPE_CHECKING:
    import torch

    from spin_diffusion.config.run import TrainingConfig
    from spin_diffusion.training.batches import Batch


class StepInputs:
    """Builds the UNet inputs and targets of (example, step) terms on both sides of a batch."""

    def __init__(self, batch: Batch, noise_scheduler: Any, emb: Conditioning):
        import torch

        if batch.trajectory is None:
            raise ValueError("spin-exact needs batches with the opponent's trajectory and its schedule")
        schedule = batch.trajectory.schedule
        device = emb.device
        self.trajectory = batch.trajectory.points.to(device)  # [B, K+1, C, h, w]
        if (
            self.trajectory.dim() != batch.latents_a.dim() + 1
            or self.trajectory.shape[1] != schedule.num_steps + 1
        ):
            raise ValueError(
                f"trajectory of shape {tuple(self.trajectory.shape)} does not have the schedule's "
                f"{schedule.num_steps + 1} points"
            )
        self.x0 = batch.latents_a.to(device)
        self.noise = batch.noise.to(device)
        self.emb = emb
        self.sched = noise_scheduler
        self.timesteps = torch.tensor(schedule.timesteps, dtype=torch.long, device=device)
        self.abar_in = torch.tensor(schedule.alphas_in, dtype=torch.float64, device=device)
        self.abar_out = torch.tensor(schedule.alphas_out, dtype=torch.float64, device=device)
        self.num_steps = schedule.num_steps

    def __call__(self, b: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(noisy, timesteps, emb, target) for the real terms then the generated terms: ``2n`` rows."""
        import torch

        t = self.timesteps[k]
        x0, eps = self.x0[b], self.noise[b]
        real_noisy = self.sched.add_noise(x0, eps, t)
        real_target = diffusion_target(self.sched, x0, eps, t)
        gen_noisy = self.trajectory[b, k]
        gen_target = transition_target(
            gen_noisy,
            self.trajectory[b, k + 1],
            self.abar_in[k],
            self.abar_out[k],
            self.sched.config.prediction_type,
        )
        return (
            torch.cat([real_noisy, gen_noisy]),
            torch.cat([t, t]),
            self._conditioning(b),
            torch.cat([real_target, gen_target]),
        )

    def _conditioning(self, b: torch.Tensor) -> Conditioning:
        """Rows ``b`` for the real terms, then ``b`` again for the generated ones (their own size ids)."""
        import torch

        c = self.emb
        second = c.pair_time_ids if c.pair_time_ids is not None else c.time_ids
        return Conditioning(
            torch.cat([c.hidden_states[b], c.hidden_states[b]]),
            None if c.text_embeds is None else torch.cat([c.text_embeds[b], c.text_embeds[b]]),
            None if c.time_ids is None else torch.cat([c.time_ids[b], second[b]]),
        )


def _chunks(b: torch.Tensor, k: torch.Tensor, size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for start in range(0, len(b), size):
        yield b[start : start + size], k[start : start + size]


def _errors(
    unet: Any, noisy: torch.Tensor, t: torch.Tensor, emb: Conditioning, target: torch.Tensor
) -> torch.Tensor:
    dtype = next(unet.parameters()).dtype
    return denoising_error(unet(noisy.to(dtype), t, **emb.unet_kwargs(dtype)).sample, target)


def grad_steps(batch: Batch, num_grad_steps: int | None) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The (example, step) terms pass 2 back-propagates, and their weight ``K / m``.

    All steps when ``num_grad_steps`` is None; else the first ``m`` of each
    example's seeded step order (``Trajectory.step_order``): a uniform subset.
    """
    import torch

    if batch.trajectory is None:
        raise ValueError("spin-exact needs batches with the opponent's trajectory and its schedule")
    k_all = batch.trajectory.schedule.num_steps
    n = len(batch.indices)
    if num_grad_steps is None or num_grad_steps >= k_all:
        b, k = torch.meshgrid(torch.arange(n), torch.arange(k_all), indexing="ij")
        return b.reshape(-1), k.reshape(-1), 1.0
    picked = batch.trajectory.step_order[:, :num_grad_steps]
    b = torch.arange(n).unsqueeze(1).expand_as(picked)
    return b.reshape(-1), picked.reshape(-1), k_all / num_grad_steps


def exact_spin_output(
    cfg: TrainingConfig,
    unet: Any,
    noise_scheduler: Any,
    reference: Reference | None,
    batch: Batch,
    emb: Conditioning,
) -> LossOutput:
    """Pass 1 now (loss, metrics, the per-example slopes); pass 2 as ``LossOutput.backward``."""
    import torch

    if not isinstance(reference, ModuleReference):
        raise ConfigError(
            "method spin-exact needs the opponent as a live reference model at every solver step; "
            "set training.precompute_reference: false"
        )
    inputs = StepInputs(batch, noise_scheduler, emb)
    n, k_all = len(batch.indices), inputs.num_steps
    chunk = cfg.trajectory_chunk_size
    device = emb.device

    # pass 1: every per-step error, no graph
    m = torch.zeros(2, n * k_all, device=device)
    r = torch.zeros(2, n * k_all, device=device)
    b_all, k_grid = torch.meshgrid(torch.arange(n), torch.arange(k_all), indexing="ij")
    b_all, k_grid = b_all.reshape(-1).to(device), k_grid.reshape(-1).to(device)
    with torch.no_grad():
        for start in range(0, n * k_all, chunk):
            sl = slice(start, start + chunk)
            noisy, t, e, target = inputs(b_all[sl], k_grid[sl])
            size = len(b_all[sl])
            m[:, sl] = _errors(unet, noisy, t, e, target).reshape(2, size)
            r[:, sl] = denoising_error(reference.predict(noisy, t, e), target).reshape(2, size)
    m_real, m_gen = m[0].reshape(n, k_all), m[1].reshape(n, k_all)
    r_real, r_gen = r[0].reshape(n, k_all), r[1].reshape(n, k_all)
    u = trajectory_margin(m_real, r_real, m_gen, r_gen, cfg.beta)
    loss = margin_loss(u, cfg.loss_type).mean()
    coeff = trajectory_step_coefficients(u, cfg.beta, k_all, cfg.loss_type) / n  # d loss / d m_real[b, k]

    b_sel, k_sel, weight = grad_steps(batch, cfg.trajectory_grad_steps)
    b_sel, k_sel = b_sel.to(device), k_sel.to(device)

    def backward(backprop: Backprop) -> None:
        """Pass 2: one chunk's graph at a time; gradient sync only on the last chunk (see loss_types.Backprop)."""
        pieces = list(_chunks(b_sel, k_sel, chunk))
        for i, (b, k) in enumerate(pieces):
            last = i == len(pieces) - 1
            with contextlib.nullcontext() if last else backprop.no_sync():
                noisy, t, e, target = inputs(b, k)
                err = _errors(unet, noisy, t, e, target).reshape(2, len(b))
                surrogate = (coeff[b] * weight * (err[0] - err[1])).sum()
                backprop.backward(surrogate)

    metrics = {
        "loss": loss.item(),
        "implicit_acc": implicit_accuracy(u),
        "d_real": (m_real - r_real).mean().item(),
        "d_gen": (m_gen - r_gen).mean().item(),
        "u_mean": u.mean().item(),
        "model_err_real": m_real.mean().item(),
        "model_err_gen": m_gen.mean().item(),
        "ref_err_real": r_real.mean().item(),
        "ref_err_gen": r_gen.mean().item(),
        "trajectory_steps": float(k_all),
        "grad_steps": float(len(b_sel) // max(n, 1)),
    }
    return LossOutput(loss.detach(), metrics, backward=backward)
