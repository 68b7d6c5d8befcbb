"""The Diffusion-DPO family against hand-computed numbers, and the DDIM inversion seam on a tiny UNet."""

from __future__ import annotations

import math

import pytest
import torch

from spin_diffusion.objectives.core import dpo_loss
from spin_diffusion.objectives.dpo_family import (
    adaptive_dpo_lite_loss,
    dmpo_loss,
    inversion_dpo_loss,
    kto_loss,
    see_dpo_loss,
)


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# d_w = 0.10 - 0.12 = -0.02, d_l = 0.15 - 0.14 = 0.01, u = -100 * (-0.02 - 0.01) = 3
PAIR = (torch.tensor([0.10]), torch.tensor([0.12]), torch.tensor([0.15]), torch.tensor([0.14]))
FLIPPED = (PAIR[2], PAIR[3], PAIR[0], PAIR[1])  # u = -3


def test_dmpo_is_the_bernoulli_kl_to_one_minus_alpha() -> None:
    p = sig(3.0)  # 0.952574
    expected = p * math.log(p / 0.99) + (1 - p) * math.log((1 - p) / 0.01)  # 0.0371129
    assert dmpo_loss(*PAIR, beta=100.0, alpha=0.01).item() == pytest.approx(expected, rel=1e-5)
    assert expected == pytest.approx(0.0371129, abs=1e-6)


def test_dmpo_is_minimal_with_zero_gradient_at_the_target_probability() -> None:
    """Unlike -logsigmoid, DMPO stops pushing once sigmoid(u) = 1 - alpha (u = logit 0.99)."""
    u_star = math.log(0.99 / 0.01)
    m_w = torch.tensor([-u_star], requires_grad=True)  # u = -beta * (m_w - m_l) with refs 0 and m_l = 0
    loss = dmpo_loss(m_w, torch.zeros(1), torch.zeros(1), torch.zeros(1), beta=1.0)
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    assert m_w.grad.abs().item() < 1e-5
    with pytest.raises(ValueError, match="alpha"):
        dmpo_loss(*PAIR, beta=1.0, alpha=1.0)


def test_see_dpo_adds_the_entropy_term_and_is_dpo_at_gamma_zero() -> None:
    # u = 3 - gamma * (m_w - m_l) = 3 - 20 * (0.10 - 0.15) = 4
    assert see_dpo_loss(*PAIR, beta=100.0, gamma=20.0).item() == pytest.approx(
        math.log(1 + math.exp(-4.0)), rel=1e-5
    )
    assert see_dpo_loss(*PAIR, beta=100.0, gamma=0.0).item() == pytest.approx(
        dpo_loss(*PAIR, beta=100.0).item(), rel=1e-6
    )


def test_adaptive_dpo_margins_confident_pairs_and_downweights_disagreeing_ones() -> None:
    c = sig(3.0)  # the model agrees: weight 1, margin 2c - 1
    agree = math.log(1 + math.exp(-(3.0 - (2 * c - 1))))  # 0.116082
    assert adaptive_dpo_lite_loss(*PAIR, beta=100.0, margin=1.0).item() == pytest.approx(agree, rel=1e-5)
    c = sig(-3.0)  # the model disagrees: weight 2c, no margin
    disagree = 2 * c * math.log(1 + math.exp(3.0))  # 0.289164
    assert adaptive_dpo_lite_loss(*FLIPPED, beta=100.0, margin=1.0).item() == pytest.approx(
        disagree, rel=1e-5
    )
    # at theta = reference (u = 0) it is Diffusion-DPO: weight 1, margin 0, loss log 2
    same = (torch.tensor([0.2]), torch.tensor([0.2]), torch.tensor([0.3]), torch.tensor([0.3]))
    assert adaptive_dpo_lite_loss(*same, beta=100.0).item() == pytest.approx(math.log(2), rel=1e-6)


def test_adaptive_dpo_weight_is_not_differentiated() -> None:
    """The confidence only scales the loss: the gradient is W * dl/du, not d(W l)/du."""
    m_w = torch.tensor([0.15], requires_grad=True)
    adaptive_dpo_lite_loss(m_w, PAIR[3], PAIR[0], PAIR[1], beta=100.0, margin=0.0).sum().backward()
    c = sig(-3.0)
    # dl/du at u = -3 is -(1 - sigmoid(-3)); du/dm_w = -100
    assert m_w.grad.item() == pytest.approx(2 * c * (1 - sig(-3.0)) * 100.0, rel=1e-5)


def test_kto_hand_computed() -> None:
    model = torch.tensor([0.10, 0.20, 0.30, 0.40])
    ref = torch.tensor([0.12, 0.18, 0.30, 0.45])
    desirable = torch.tensor([1, 0, 1, 0])
    # g = ref - model = [0.02, -0.02, 0, 0.05], z = mean = 0.0125; s * 10 * (g - z) = [.075, .325, -.125, -.375]
    expected = [1 - sig(0.075), 2 * (1 - sig(0.325)), 1 - sig(-0.125), 2 * (1 - sig(-0.375))]
    got = kto_loss(model, ref, desirable, beta=10.0, lambda_desirable=1.0, lambda_undesirable=2.0)
    assert got.tolist() == pytest.approx(expected, rel=1e-5)


def test_kto_reference_point_is_clamped_at_zero_and_detached() -> None:
    model = torch.tensor([0.2, 0.3], requires_grad=True)
    ref = torch.tensor([0.1, 0.1])  # g = [-0.1, -0.2]: mean < 0, so z = 0
    got = kto_loss(model, ref, torch.tensor([1, 1]), beta=10.0)
    assert got.tolist() == pytest.approx([1 - sig(-1.0), 1 - sig(-2.0)], rel=1e-5)
    got.sum().backward()
    # d/dm (1 - sigmoid(-10 m + ...)) = 10 sigmoid'(x); no contribution through z
    assert model.grad.tolist() == pytest.approx(
        [10 * sig(-1.0) * (1 - sig(-1.0)), 10 * sig(-2.0) * (1 - sig(-2.0))], rel=1e-5
    )


def test_inversion_dpo_hand_computed() -> None:
    # u = -100 * (0.10 - 0.13) = 3
    loss = inversion_dpo_loss(torch.tensor([0.10]), torch.tensor([0.13]), beta=100.0)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-3.0)), rel=1e-5)


# --------------------------------------------------------------------------- DDIM inversion


def test_ddim_inversion_with_a_constant_noise_prediction_is_forward_noising() -> None:
    """If the model always predicts e, every DDIM step keeps x0_hat: x_t = sqrt(a) x0_hat + sqrt(1-a) e,
    with x0_hat = (x0 - sqrt(1 - a_0) e) / sqrt(a_0) since the clean latent sits at abar_0."""
    from spin_diffusion.sampling.inversion import ddim_invert

    abar = torch.linspace(0.999, 0.01, 1000)
    x0 = torch.randn(3, 4, 2, 2, generator=torch.Generator().manual_seed(0))
    e = torch.randn(3, 4, 2, 2, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([10, 500, 999])
    x_t = ddim_invert(lambda x, tau: e, abar, x0, t, num_steps=7)
    a, a0 = abar[t].view(-1, 1, 1, 1), abar[0]
    x0_hat = (x0 - (1 - a0).sqrt() * e) / a0.sqrt()
    assert torch.allclose(x_t, a.sqrt() * x0_hat + (1 - a).sqrt() * e, atol=1e-5)


def test_inverted_errors_on_a_tiny_unet(tiny_pipeline_dir) -> None:
    """theta = reference: zero errors and loss log 2; a changed model has errors; inversion is deterministic."""
    from diffusers import StableDiffusionPipeline

    from spin_diffusion.config.run import TrainingConfig
    from spin_diffusion.model.families import Conditioning, encode_prompts
    from spin_diffusion.model.prediction import training_scheduler
    from spin_diffusion.model.weights import frozen_copy
    from spin_diffusion.training.batches import Batch
    from spin_diffusion.training.losses import compute_loss, inverted_errors
    from spin_diffusion.training.reference import ModuleReference

    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_pipeline_dir), safety_checker=None)
    sched = training_scheduler(pipe)
    g = torch.Generator().manual_seed(0)
    shape = (2, pipe.unet.config.in_channels, 8, 8)
    batch = Batch(
        indices=[0, 1],
        epoch=[0, 0],
        captions=["a red square", "a blue circle"],
        latents_a=torch.randn(shape, generator=g),
        latents_b=torch.randn(shape, generator=g),
        timesteps=torch.tensor([100, 700]),
        noise=torch.randn(shape, generator=g),
    )
    emb = Conditioning(encode_prompts(pipe.text_encoder, pipe.tokenizer, batch.captions))
    cfg = TrainingConfig(beta=1000.0, inversion={"steps": 3})
    ref = ModuleReference(frozen_copy(pipe.unet), sched)
    out = compute_loss("inversion-dpo", cfg, pipe.unet, sched, ref, batch, emb)
    assert out.loss.item() == pytest.approx(math.log(2), abs=1e-5)
    assert out.metrics["model_err_win"] == pytest.approx(0.0, abs=1e-8)

    changed = frozen_copy(pipe.unet)
    with torch.no_grad():
        for p in changed.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    e1 = inverted_errors(cfg, changed, sched, ref, batch, emb)
    e2 = inverted_errors(cfg, changed, sched, ref, batch, emb)
    assert (e1.m_a > 0).all() and (e1.r_a == 0).all()
    assert torch.equal(e1.m_a, e2.m_a) and torch.equal(e1.m_b, e2.m_b)


def test_kto_takes_a_given_batch_mean_as_its_reference_point() -> None:
    model = torch.tensor([0.10, 0.20])
    ref = torch.tensor([0.12, 0.18])  # g = [0.02, -0.02]: its own mean is 0
    got = kto_loss(model, ref, torch.tensor([1, 0]), beta=10.0, batch_mean=torch.tensor(0.01))
    assert got.tolist() == pytest.approx([1 - sig(0.1), 1 - sig(0.3)], rel=1e-5)


def _kto_on_rank(rank: int, init_file: str, results: dict) -> None:
    from spin_diffusion.config.run import TrainingConfig
    from spin_diffusion.training.losses import PairErrors, _kto

    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        # rank 0 sees pairs whose model beats the reference, rank 1 pairs where it does not
        m = torch.tensor([[0.10, 0.20], [0.30, 0.10, 0.20]][rank])
        r = torch.tensor([[0.14, 0.26], [0.30, 0.11, 0.20]][rank])
        e = PairErrors(m, r, m + 0.05, r + 0.01)
        results[rank] = _kto(e, TrainingConfig(beta=10.0)).tolist()
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.distributed
def test_kto_reference_point_is_the_mean_over_every_process(tmp_path) -> None:
    """Two gloo processes with different batches: each uses the global batch's mean reward."""
    import torch.multiprocessing as mp

    from spin_diffusion.config.run import TrainingConfig
    from spin_diffusion.training.losses import PairErrors, _kto

    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_kto_on_rank, args=(str(tmp_path / "init"), results), nprocs=2, join=True)
        results = dict(results)
    # one process holding both batches (same pairs; the per-pair losses do not depend on the split)
    m = torch.tensor([0.10, 0.20, 0.30, 0.10, 0.20])
    r = torch.tensor([0.14, 0.26, 0.30, 0.11, 0.20])
    whole = _kto(PairErrors(m, r, m + 0.05, r + 0.01), TrainingConfig(beta=10.0)).tolist()
    assert results[0] + results[1] == pytest.approx(whole, rel=1e-6)
    alone = _kto(PairErrors(m[:2], r[:2], m[:2] + 0.05, r[:2] + 0.01), TrainingConfig(beta=10.0)).tolist()
    assert results[0] != pytest.approx(alone, rel=1e-3)  # a per-process mean would have given this
