"""Losses against hand-computed numbers and the properties DESIGN.md section 2 requires."""

from __future__ import annotations

import math

import pytest
import torch

from spin_diffusion.objectives.core import (
    denoising_error,
    dpo_loss,
    margin_loss,
    min_snr_weights,
    pair_diagnostics,
    sft_loss,
    spin_loss,
)

# d_real = 0.5 - 0.4 = 0.1, d_gen = 0.3 - 0.35 = -0.05, u = -10 * (0.1 + 0.05) = -1.5
ERRS = dict(
    model_err_real=torch.tensor([0.5]),
    ref_err_real=torch.tensor([0.4]),
    model_err_gen=torch.tensor([0.3]),
    ref_err_gen=torch.tensor([0.35]),
)


@pytest.mark.parametrize(
    ("loss_type", "expected"),
    [("logistic", math.log(1 + math.exp(1.5))), ("hinge", 2.5), ("correlation", 2.5)],
)
def test_spin_loss_hand_computed(loss_type: str, expected: float) -> None:
    loss = spin_loss(**ERRS, beta=10.0, loss_type=loss_type)
    assert loss.shape == (1,)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_hinge_is_zero_beyond_margin() -> None:
    # u = -10 * ((0.3-0.4) - (0.5-0.35)) = 2.5 -> hinge 0, correlation -1.5
    args = (torch.tensor([0.3]), torch.tensor([0.4]), torch.tensor([0.5]), torch.tensor([0.35]))
    assert spin_loss(*args, beta=10.0, loss_type="hinge").item() == 0.0
    assert spin_loss(*args, beta=10.0, loss_type="correlation").item() == pytest.approx(-1.5)


def test_logistic_is_log2_when_model_equals_reference() -> None:
    err = torch.rand(7)
    gen = torch.rand(7)
    loss = spin_loss(err, err.clone(), gen, gen.clone(), beta=5000.0)
    torch.testing.assert_close(loss, torch.full((7,), math.log(2.0)))


def test_gradient_step_prefers_real_over_generated() -> None:
    m_real = torch.tensor([0.30, 0.20], requires_grad=True)
    m_gen = torch.tensor([0.25, 0.40], requires_grad=True)
    ref_real, ref_gen = torch.tensor([0.30, 0.20]), torch.tensor([0.25, 0.40])
    before = (m_real - m_gen).detach().clone()
    spin_loss(m_real, ref_real, m_gen, ref_gen, beta=10.0).mean().backward()
    assert (m_real.grad > 0).all() and (m_gen.grad < 0).all()
    with torch.no_grad():
        m_real -= 0.01 * m_real.grad
        m_gen -= 0.01 * m_gen.grad
    assert ((m_real - m_gen) < before).all()


@pytest.mark.parametrize("loss_type", ["logistic", "hinge", "correlation"])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_extreme_margins_stay_finite(loss_type: str, sign: float) -> None:
    m_real = torch.tensor([sign * 1.0], requires_grad=True)
    loss = spin_loss(m_real, torch.zeros(1), torch.zeros(1), torch.zeros(1), beta=1e4, loss_type=loss_type)
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(m_real.grad).all()
    if loss_type == "logistic":
        assert loss.item() == pytest.approx(1e4 if sign > 0 else 0.0, abs=1e-3)


def test_dpo_is_the_same_function_without_half_factor() -> None:
    a, b, c, d = (torch.rand(5) for _ in range(4))
    torch.testing.assert_close(dpo_loss(a, b, c, d, 2500.0), spin_loss(a, b, c, d, 2500.0))
    # official Diffusion-DPO: -logsigmoid(-0.5 * beta_dpo * (model_diff - ref_diff)) with beta_dpo = 5000
    official = -torch.nn.functional.logsigmoid(-0.5 * 5000.0 * ((a - c) - (b - d)))
    torch.testing.assert_close(dpo_loss(a, b, c, d, 2500.0), official)


def test_unknown_loss_type_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown loss_type"):
        margin_loss(torch.zeros(1), "sigmoid")  # type: ignore[arg-type]


def test_denoising_error_means_over_non_batch_dims_in_fp32() -> None:
    pred = torch.zeros(2, 3, 4, 4, dtype=torch.float16)
    target = torch.ones(2, 3, 4, 4, dtype=torch.float16)
    target[1] *= 2
    err = denoising_error(pred, target)
    assert err.dtype == torch.float32
    torch.testing.assert_close(err, torch.tensor([1.0, 4.0]))
    with pytest.raises(ValueError, match="shape"):
        denoising_error(pred, target[:, :2])


def test_sft_loss_and_min_snr_weights() -> None:
    err = torch.tensor([1.0, 3.0])
    assert sft_loss(err).item() == pytest.approx(2.0)
    snr = torch.tensor([1.0, 10.0])
    w_eps = min_snr_weights(snr, gamma=5.0)
    torch.testing.assert_close(w_eps, torch.tensor([1.0, 0.5]))
    w_v = min_snr_weights(snr, gamma=5.0, prediction_type="v_prediction")
    torch.testing.assert_close(w_v, torch.tensor([0.5, 5.0 / 11.0]))
    assert sft_loss(err, w_eps).item() == pytest.approx((1.0 + 1.5) / 2)


def test_pair_diagnostics() -> None:
    # pair 0: u = -1 * ((0.1-0.2) - (0.3-0.3)) = 0.1 > 0; pair 1: u = -1 * ((0.5-0.2) - 0) = -0.3
    diag = pair_diagnostics(
        torch.tensor([0.1, 0.5]),
        torch.tensor([0.2, 0.2]),
        torch.tensor([0.3, 0.3]),
        torch.tensor([0.3, 0.3]),
        1.0,
    )
    assert diag.implicit_acc == 0.5
    assert diag.margin_a == pytest.approx(0.1)
    assert diag.margin_b == pytest.approx(0.0)
    assert set(diag.as_dict("win", "lose")) == {"implicit_acc", "d_win", "d_lose", "u_mean"}


# --------------------------------------------------------------------------- exact SPIN (eq. 4.8)


def _trajectory_errors(b: int = 5, k: int = 7, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(b, k, generator=g) * 1e-3 + 0.1 for _ in range(4)]


def test_trajectory_margin_averages_the_per_step_margins_inside_l() -> None:
    from spin_diffusion.objectives.core import exact_spin_loss, preference_margin, trajectory_margin

    m_r, r_r, m_g, r_g = _trajectory_errors()
    per_step = preference_margin(m_r, r_r, m_g, r_g, 3000.0)  # [B, K] elementwise
    torch.testing.assert_close(trajectory_margin(m_r, r_r, m_g, r_g, 3000.0), per_step.mean(dim=1))
    one = [e[:, :1] for e in (m_r, r_r, m_g, r_g)]  # K = 1: the approximate objective's margin
    torch.testing.assert_close(
        trajectory_margin(*one, 3000.0), preference_margin(*[e[:, 0] for e in one], 3000.0)
    )
    # Lemma 4.1 (Jensen, l convex): exact <= mean over steps of the approximate per-step losses
    for loss_type in ("logistic", "hinge", "correlation"):
        exact = exact_spin_loss(m_r, r_r, m_g, r_g, 3000.0, loss_type)
        approx = spin_loss(m_r, r_r, m_g, r_g, 3000.0, loss_type).mean(dim=1)
        assert bool((exact <= approx + 1e-6).all())
    assert bool(
        (exact_spin_loss(m_r, r_r, m_g, r_g, 3000.0) < spin_loss(m_r, r_r, m_g, r_g, 3000.0).mean(1)).any()
    )


@pytest.mark.parametrize("loss_type", ["logistic", "hinge", "correlation"])
def test_margin_loss_slope_is_l_prime(loss_type: str) -> None:
    from spin_diffusion.objectives.core import margin_loss_slope

    u = torch.tensor([-30.0, -1.0, 0.0, 0.5, 2.0, 40.0])
    closed = {
        "logistic": -torch.sigmoid(-u),
        "hinge": -(u < 1).float(),
        "correlation": -torch.ones_like(u),
    }[loss_type]
    torch.testing.assert_close(margin_loss_slope(u, loss_type), closed)


def test_step_coefficients_give_the_gradient_of_the_exact_loss() -> None:
    from spin_diffusion.objectives.core import (
        exact_spin_loss,
        trajectory_margin,
        trajectory_step_coefficients,
    )

    m_r, r_r, m_g, r_g = _trajectory_errors()
    m_r.requires_grad_(True)
    m_g.requires_grad_(True)
    exact_spin_loss(m_r, r_r, m_g, r_g, 3000.0).sum().backward()
    u = trajectory_margin(m_r.detach(), r_r, m_g.detach(), r_g, 3000.0)
    c = trajectory_step_coefficients(u, 3000.0, m_r.shape[1])
    torch.testing.assert_close(m_r.grad, c[:, None].expand_as(m_r))
    torch.testing.assert_close(m_g.grad, -c[:, None].expand_as(m_g))


def test_implicit_accuracy_counts_ties_as_one_half() -> None:
    """diffusers' DPO scripts: (u > 0) + 0.5 (u == 0); at theta = reference every u is 0: chance, not 0."""
    from spin_diffusion.objectives.core import implicit_accuracy

    assert implicit_accuracy(torch.tensor([0.0, 0.0, 1.0, -1.0])) == 0.5
    assert implicit_accuracy(torch.tensor([0.0, 2.0])) == 0.75
    same = torch.tensor([0.1, 0.2])
    assert pair_diagnostics(same, same, same, same, beta=100.0).implicit_acc == 0.5
