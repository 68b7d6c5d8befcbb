"""The exact SPIN objective (eq. 4.8): trajectory capture, step targets, two-pass gradient, memory."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from exact_direct import direct_exact_loss
from spin_diffusion.config.run import TrainingConfig
from spin_diffusion.model.families import Conditioning, encode_prompts
from spin_diffusion.model.loading import load_pipeline
from spin_diffusion.model.prediction import training_scheduler
from spin_diffusion.model.weights import frozen_copy
from spin_diffusion.sampling.generate import generate_latents, use_scheduler
from spin_diffusion.sampling.trajectories import solver_schedule, transition_target
from spin_diffusion.training.batches import Batch, Trajectory
from spin_diffusion.training.exact_spin import exact_spin_output
from spin_diffusion.training.loss_types import Backprop
from spin_diffusion.training.reference import ModuleReference

CAPTIONS = ["a red circle", "a blue square on the left"]
TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def pipe(tiny_pipeline_dir: Path):
    return load_pipeline(tiny_pipeline_dir)


@pytest.fixture(scope="module")
def vpipe(tiny_vpred_dir: Path):
    return load_pipeline(tiny_vpred_dir)


def _trajectory(pipe, scheduler: str, steps: int, guidance: float = 2.0):
    use_scheduler(pipe, scheduler)
    traj = generate_latents(
        pipe, CAPTIONS, [3, 4], num_inference_steps=steps, guidance_scale=guidance, trajectory=True
    )
    return traj, solver_schedule(pipe.scheduler, steps)


def _batch(traj, schedule, seed: int = 0, step_order=None) -> Batch:
    g = torch.Generator().manual_seed(seed)
    n = traj.shape[0]
    x0 = torch.randn(traj[:, 0].shape, generator=g)
    noise = torch.randn(x0.shape, generator=g)
    order = (
        step_order
        if step_order is not None
        else torch.stack([torch.randperm(schedule.num_steps, generator=g) for _ in range(n)])
    )
    return Batch(
        indices=list(range(n)),
        epoch=[0] * n,
        captions=CAPTIONS[:n],
        latents_a=x0,
        latents_b=None,
        timesteps=torch.zeros(n, dtype=torch.long),
        noise=noise,
        trajectory=Trajectory(traj, schedule, order),
    )


def _models(pipe, perturb: float = 0.02):
    """theta (the opponent nudged by seeded noise, so the two sides differ) and the opponent as reference."""
    unet = frozen_copy(pipe.unet)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(perturb * torch.randn(p.shape, generator=g) * p.abs().mean())
    unet.requires_grad_(True)
    return unet, ModuleReference(frozen_copy(pipe.unet), training_scheduler(pipe))


def _plain_backprop() -> tuple[Backprop, list[bool]]:
    synced: list[bool] = []

    @contextlib.contextmanager
    def no_sync():
        synced.append(False)
        yield

    def backward(loss):
        loss.backward()
        synced.append(True)

    return Backprop(backward, no_sync), synced


def _grads(unet) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in unet.parameters() if p.grad is not None])


def test_stored_trajectory_ends_at_the_plain_sample_and_follows_the_schedule(pipe) -> None:
    for name in ("ddim", "dpmsolver++"):
        traj, schedule = _trajectory(pipe, name, 4)
        plain = generate_latents(pipe, CAPTIONS, [3, 4], num_inference_steps=4, guidance_scale=2.0)
        assert traj.shape == (2, 5, *plain.shape[1:])
        assert torch.equal(traj[:, -1], plain)  # storing the trajectory does not change the samples
        assert schedule.num_steps == 4 and schedule.alphas_out[-1] == pytest.approx(1.0, abs=2e-3)
        assert list(schedule.timesteps) == sorted(schedule.timesteps, reverse=True)


def test_unguided_ddim_steps_imply_exactly_the_opponents_own_prediction(pipe) -> None:
    """Without guidance a DDIM step is mu_theta_k: the reference's generated-side error must vanish."""
    traj, schedule = _trajectory(pipe, "ddim", 5, guidance=1.0)
    batch = _batch(traj, schedule)
    unet, ref = _models(pipe)
    emb = Conditioning(encode_prompts(pipe.text_encoder, pipe.tokenizer, batch.captions))
    out = exact_spin_output(TrainingConfig(beta=100.0), unet, ref.noise_scheduler, ref, batch, emb)
    assert out.metrics["ref_err_gen"] < 1e-8 * out.metrics["ref_err_real"]
    assert out.metrics["model_err_gen"] > 1e-6  # theta differs from theta_k


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
def test_a_forward_trajectory_implies_its_own_noise(kind: str) -> None:
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    a_t, a_p = torch.tensor([0.1, 0.4, 0.9]), torch.tensor([0.3, 0.5, 1.0])
    point = lambda a: a.sqrt().view(-1, 1, 1, 1) * x0 + (1 - a).sqrt().view(-1, 1, 1, 1) * eps  # noqa: E731
    target = transition_target(point(a_t), point(a_p), a_t, a_p, kind)
    want = {
        "epsilon": eps,
        "sample": x0,
        "v_prediction": a_t.sqrt().view(-1, 1, 1, 1) * eps - (1 - a_t).sqrt().view(-1, 1, 1, 1) * x0,
    }[kind]
    torch.testing.assert_close(target, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("which", "scheduler", "kind", "loss_type", "beta"),
    [
        ("pipe", "ddim", "epsilon", "logistic", 500.0),
        ("pipe", "dpmsolver++", "epsilon", "hinge", 50.0),  # u < 1: inside the hinge's sloped part
        ("vpipe", "ddim", "v_prediction", "logistic", 500.0),
    ],
)
def test_two_pass_loss_and_gradient_equal_direct_autograd(
    request, which, scheduler, kind, loss_type, beta
) -> None:
    p = request.getfixturevalue(which)
    traj, schedule = _trajectory(p, scheduler, 5)
    batch = _batch(traj, schedule)
    unet, ref = _models(p)
    emb = Conditioning(encode_prompts(p.text_encoder, p.tokenizer, batch.captions))
    cfg = TrainingConfig(
        beta=beta, loss_type=loss_type, trajectory_chunk_size=3
    )  # chunks cut across examples

    out = exact_spin_output(cfg, unet, ref.noise_scheduler, ref, batch, emb)
    backprop, synced = _plain_backprop()
    out.backward(backprop)
    two_pass = _grads(unet)
    # 10 terms in chunks of 3 = 4 backward calls, all but the last under no_sync
    assert synced == [False, True, False, True, False, True, True]

    unet.zero_grad(set_to_none=True)
    direct = direct_exact_loss(
        unet,
        ref.unet,
        batch.latents_a,
        batch.noise,
        traj,
        schedule,
        emb.hidden_states,
        cfg.beta,
        kind,
        loss_type,
    )
    direct.backward()
    assert out.loss.item() == pytest.approx(direct.item(), rel=1e-4)  # fp32 errors x beta
    reference = _grads(unet)
    assert reference.norm() > 0
    # fp32 UNet backward with another batching: agreement to ~1e-5 of the largest entry
    torch.testing.assert_close(two_pass, reference, rtol=1e-3, atol=1e-4 * float(reference.abs().max()))


def test_random_step_subsets_average_to_the_full_gradient(pipe) -> None:
    """Every 2-of-4 subset, weighted K/m = 2, averages to the all-steps gradient: the estimator is unbiased."""
    traj, schedule = _trajectory(pipe, "ddim", 4)
    traj = traj[:1]
    unet, ref = _models(pipe)
    emb = Conditioning(encode_prompts(pipe.text_encoder, pipe.tokenizer, CAPTIONS[:1]))

    def gradient(grad_steps, order):
        unet.zero_grad(set_to_none=True)
        batch = _batch(traj, schedule, step_order=order)
        cfg = TrainingConfig(beta=500.0, trajectory_chunk_size=2, trajectory_grad_steps=grad_steps)
        out = exact_spin_output(cfg, unet, ref.noise_scheduler, ref, batch, emb)
        out.backward(_plain_backprop()[0])
        return _grads(unet).clone(), out.loss.item()

    full, full_loss = gradient(None, None)
    estimates = []
    for subset in itertools.combinations(range(4), 2):
        rest = [k for k in range(4) if k not in subset]
        g, loss = gradient(2, torch.tensor([[*subset, *rest]]))
        assert loss == pytest.approx(full_loss)  # the loss value always uses every step
        estimates.append(g)
    assert not torch.allclose(estimates[0], full, rtol=1e-3)  # one subset alone is not the full gradient
    torch.testing.assert_close(
        torch.stack(estimates).mean(0), full, rtol=1e-4, atol=1e-6 * float(full.abs().max())
    )


def test_precomputed_reference_is_refused(pipe) -> None:
    from spin_diffusion.errors import ConfigError
    from spin_diffusion.training.reference import PrecomputedReference

    traj, schedule = _trajectory(pipe, "ddim", 2)
    batch = _batch(traj, schedule)
    emb = Conditioning(encode_prompts(pipe.text_encoder, pipe.tokenizer, batch.captions))
    with pytest.raises(ConfigError, match="precompute_reference"):
        exact_spin_output(
            TrainingConfig(),
            pipe.unet,
            training_scheduler(pipe),
            PrecomputedReference(torch.zeros(1, 2, 2)),
            batch,
            emb,
        )


def _peak_kb(mode: str, steps: int) -> int:
    env = {**os.environ, "PYTHONPATH": f"{TESTS.parent / 'src'}{os.pathsep}{TESTS}", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(TESTS / "exact_memory_probe.py"), mode, str(steps)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])["peak_kb"]


def test_peak_memory_is_flat_in_the_trajectory_length_and_direct_autograd_is_not() -> None:
    exact20, exact50 = _peak_kb("exact", 20), _peak_kb("exact", 50)
    direct20, direct50 = _peak_kb("direct", 20), _peak_kb("direct", 50)
    assert abs(exact50 - exact20) < 0.10 * exact20, (exact20, exact50)
    assert direct50 - direct20 > 0.25 * direct20, (direct20, direct50)  # the probe can see growth
    assert abs(exact50 - exact20) < 0.1 * (direct50 - direct20), (exact20, exact50, direct20, direct50)


def test_sampling_stores_trajectories_memory_mapped_and_they_are_part_of_the_identity(
    pipe, tmp_path: Path
) -> None:
    from spin_diffusion.config.sampling import SamplingConfig
    from spin_diffusion.errors import CheckpointError
    from spin_diffusion.sampling.opponent import sample_opponent
    from spin_diffusion.sampling.samples import OpponentSamples

    ids, caps = ["p0", "p1", "p2"], ["a red circle", "a blue square", "a green circle"]
    settings = SamplingConfig(
        num_inference_steps=3,
        guidance_scale=2.0,
        batch_size=2,
        shard_size=2,
        num_previews=0,
        num_samples_per_prompt=2,
    )
    kwargs = {"seed": 5, "model_fingerprint": "fp", "show_progress": False}
    samples = sample_opponent(pipe, ids, caps, settings, tmp_path / "traj", trajectory=True, **kwargs)
    assert samples.schedule == solver_schedule(pipe.scheduler, 3)
    traj = samples.trajectory("p2")
    assert traj.shape == (2, 4, 4, 8, 8) and traj.dtype == torch.float32
    torch.testing.assert_close(traj[:, -1].half(), samples.latents("p2"))  # the final point is the sample
    plain = sample_opponent(pipe, ids, caps, settings, tmp_path / "plain", **kwargs)
    torch.testing.assert_close(
        plain.latents("p2"), samples.latents("p2")
    )  # both objectives see the same samples
    assert plain.schedule is None
    with pytest.raises(CheckpointError, match="no trajectories"):
        plain.trajectory("p2")
    with pytest.raises(CheckpointError, match="different trajectory"):  # a final-latents dir is not reused
        sample_opponent(pipe, ids, caps, settings, tmp_path / "plain", trajectory=True, **kwargs)
    # a shard that lost its trajectory tensor is not accepted as complete: it is sampled again
    from safetensors.torch import load_file, save_file

    shard = tmp_path / "traj" / "shard-00000.safetensors"
    before = load_file(str(shard))["trajectory"][0]
    save_file(
        {"latents": load_file(str(shard))["latents"]}, str(shard), metadata={"ids": json.dumps(ids[:2])}
    )
    with pytest.raises(CheckpointError, match="shard-00000"):
        OpponentSamples(tmp_path / "traj").trajectory("p0")
    again = sample_opponent(pipe, ids, caps, settings, tmp_path / "traj", trajectory=True, **kwargs)
    torch.testing.assert_close(again.trajectory("p0"), before)  # seeded: the same trajectories again


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"sampling": {"scheduler": "euler"}}, "sampling.scheduler"),
        ({"sampling": {"scheduler": "ddim", "eta": 0.5}}, "sampling.eta"),
        ({"sampling": {"latents": "reencoded"}}, "sampling.latents"),
        ({"training": {"precompute_reference": True}}, "training.precompute_reference"),
        ({"model": {"pretrained": "x", "lora": {"enabled": True, "dropout": 0.1}}}, "model.lora.dropout"),
        ({"training": {"trajectory_grad_steps": 30}}, "training.trajectory_grad_steps"),
    ],
)
def test_settings_spin_exact_cannot_honour_are_refused_by_name(override: dict, field: str) -> None:
    from spin_diffusion.config.run import validate_config
    from spin_diffusion.errors import ConfigError

    raw = {
        "name": "r",
        "method": "spin-exact",
        "model": {"pretrained": "x"},
        "data": {"source": "imagefolder", "path": "d", "resolution": 16},
    }
    raw.update(override)
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        validate_config(raw)
    raw["method"] = "spin"
    if field not in ("model.lora.dropout", "training.trajectory_grad_steps", "sampling.eta"):
        validate_config(raw)  # approximate SPIN accepts them
