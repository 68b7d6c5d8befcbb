"""Peak memory of one exact-SPIN loss + backward on a small UNet, in a fresh process (prints JSON).

``python exact_memory_probe.py exact|direct STEPS``: ``exact`` runs the two-pass
objective (spin_diffusion.training.exact_spin), ``direct`` the one-graph autograd version
(exact_direct). A short warm-up run first touches every code path, so the
reported peak RSS (``ru_maxrss``) is set by the STEPS-long run.
"""

from __future__ import annotations

import contextlib
import json
import resource
import sys

import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DConditionModel

from exact_direct import direct_exact_loss
from spin_diffusion.config.run import TrainingConfig
from spin_diffusion.model.families import Conditioning
from spin_diffusion.model.weights import frozen_copy
from spin_diffusion.sampling.trajectories import solver_schedule
from spin_diffusion.training.batches import Batch, Trajectory
from spin_diffusion.training.exact_spin import exact_spin_output
from spin_diffusion.training.loss_types import Backprop
from spin_diffusion.training.reference import ModuleReference

B, SIZE, CHUNK = 1, 16, 4


def run(mode: str, steps: int, unet, ref, sched) -> None:
    schedule = solver_schedule(DDIMScheduler.from_config(sched.config), steps)
    g = torch.Generator().manual_seed(steps)
    traj = torch.randn(B, steps + 1, 4, SIZE, SIZE, generator=g)
    x0, eps = torch.randn(B, 4, SIZE, SIZE, generator=g), torch.randn(B, 4, SIZE, SIZE, generator=g)
    emb = Conditioning(torch.randn(B, 4, 32, generator=g))
    unet.zero_grad(set_to_none=True)
    if mode == "direct":
        direct_exact_loss(unet, ref.unet, x0, eps, traj, schedule, emb.hidden_states, 100.0).backward()
        return
    batch = Batch(
        indices=list(range(B)), epoch=[0] * B, captions=[""] * B, latents_a=x0, latents_b=None,
        timesteps=torch.zeros(B, dtype=torch.long), noise=eps,
        trajectory=Trajectory(traj, schedule, torch.arange(schedule.num_steps).repeat(B, 1)),
    )  # fmt: skip
    out = exact_spin_output(
        TrainingConfig(beta=100.0, trajectory_chunk_size=CHUNK), unet, sched, ref, batch, emb
    )
    out.backward(Backprop(lambda loss: loss.backward(), contextlib.nullcontext))


def main() -> None:
    mode, steps = sys.argv[1], int(sys.argv[2])
    torch.manual_seed(0)
    torch.set_num_threads(1)
    unet = UNet2DConditionModel(
        sample_size=SIZE,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=1,
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    sched = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    ref = ModuleReference(frozen_copy(unet), sched)
    run(mode, 2, unet, ref, sched)  # warm-up: allocator pools, lazy kernels
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    run(mode, steps, unet, ref, sched)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"mode": mode, "steps": steps, "before_kb": before, "peak_kb": peak}))


if __name__ == "__main__":
    main()
