"""Parity with each method's public code: our loss and gradient equal its lines, re-derived here.

Every test builds the same inputs (a tiny random UNet as the trained model, a
perturbed copy as the reference, a DDPM scheduler, two pairs of latents with
fixed t and noise), computes the public script's loss lines directly with
torch (never through our objectives), and compares loss and gradient with
``compute_loss``. Each names the public file it follows; a drift in our sign,
scale, reduction or target convention makes it fail.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from spin_diffusion.config.run import TrainingConfig
from spin_diffusion.model.families import Conditioning
from spin_diffusion.training.batches import Batch
from spin_diffusion.training.losses import compute_loss
from spin_diffusion.training.reference import ModuleReference

CAPTIONS = ["a red square", "a blue circle"]


@pytest.fixture(scope="module")
def world():
    from spin_diffusion.model.prediction import training_scheduler
    from spin_diffusion.model.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline(seed=0)
    sched = training_scheduler(pipe)
    g = torch.Generator().manual_seed(0)
    ref_unet = pipe.unet.eval().requires_grad_(False)
    unet = copy.deepcopy(ref_unet).requires_grad_(True)
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
    shape = (2, unet.config.in_channels, 8, 8)
    batch = Batch(
        indices=[0, 1],
        epoch=[0, 0],
        captions=CAPTIONS,
        latents_a=torch.randn(shape, generator=g),
        latents_b=torch.randn(shape, generator=g),
        timesteps=torch.tensor([150, 720]),
        noise=torch.randn(shape, generator=g),
    )
    ids = pipe.tokenizer(
        CAPTIONS,
        padding="max_length",
        max_length=pipe.tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    with torch.no_grad():
        hidden = pipe.text_encoder(ids)[0]
    return {"unet": unet, "ref": ref_unet, "sched": sched, "batch": batch, "hidden": hidden}


def _v_scheduler(sched):
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(sched.config, prediction_type="v_prediction")


def _public_losses(w, unet, sched):
    """The per-image errors as the public DPO scripts compute them: winners first, then losers."""
    b = w["batch"]
    latents = torch.cat([b.latents_a, b.latents_b])
    noise = b.noise.repeat(2, 1, 1, 1)  # the scripts' chunk(2)[0].repeat(2): shared within a pair
    t = b.timesteps.repeat(2)
    noisy = sched.add_noise(latents, noise, t)
    hidden = w["hidden"].repeat(2, 1, 1)
    epsilon = sched.config.prediction_type == "epsilon"
    target = noise if epsilon else sched.get_velocity(latents, noise, t)
    pred = unet(noisy, t, hidden).sample
    losses = F.mse_loss(pred.float(), target.float(), reduction="none")
    return losses.mean(dim=list(range(1, losses.dim())))


def _ours(w, method, cfg, sched=None, state=None, pairs=True):
    unet = w["unet"]
    unet.zero_grad(set_to_none=True)
    sched = sched or w["sched"]
    batch = w["batch"] if pairs else Batch(**{**w["batch"].__dict__, "latents_b": None})
    ref = ModuleReference(w["ref"], sched) if pairs else None
    out = compute_loss(method, cfg, unet, sched, ref, batch, Conditioning(w["hidden"]), state)
    out.loss.backward()
    return out, [p.grad.clone() for p in unet.parameters()]


def _public(w, loss_fn):
    unet = w["unet"]
    unet.zero_grad(set_to_none=True)
    loss = loss_fn()
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in unet.parameters()]


def _same(ours, public, rtol=1e-4):
    (out, g_ours), (loss, g_pub) = ours, public
    assert out.loss.item() == pytest.approx(loss.item(), rel=rtol, abs=1e-7)
    norm = torch.sqrt(sum((g**2).sum() for g in g_pub))
    diff = torch.sqrt(sum(((a - b) ** 2).sum() for a, b in zip(g_ours, g_pub, strict=True)))
    assert norm > 0 and diff <= rtol * norm, (float(diff), float(norm))


def _diffs(w, sched):
    m = _public_losses(w, w["unet"], sched)
    with torch.no_grad():
        r = _public_losses(w, w["ref"], sched)
    m_w, m_l = m.chunk(2)
    r_w, r_l = r.chunk(2)
    return m_w - m_l, r_w - r_l, (m, r)


def test_dpo_matches_diffusers_sd15_script_without_a_half(world) -> None:
    """huggingface/diffusers examples/research_projects/diffusion_dpo/train_diffusion_dpo.py (eps):
    ``-logsigmoid(beta_dpo * (ref_diff - model_diff))``, no 1/2: its 2500 is our 2500."""
    beta_dpo = 2500.0

    def public():
        model_diff, ref_diff, _ = _diffs(world, world["sched"])
        return -F.logsigmoid(beta_dpo * (ref_diff - model_diff)).mean()

    _same(_ours(world, "dpo", TrainingConfig(beta=beta_dpo)), _public(world, public))


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_dpo_matches_salesforce_and_diffusers_sdxl_with_a_half(world, prediction: str) -> None:
    """SalesforceAIResearch/DiffusionDPO train.py (eps) and diffusers train_diffusion_dpo_sdxl.py (eps, v):
    ``-logsigmoid(-0.5 * beta_dpo * (model_diff - ref_diff))``: their 5000 is our 2500."""
    sched = world["sched"] if prediction == "epsilon" else _v_scheduler(world["sched"])
    beta_dpo = 5000.0 if prediction == "epsilon" else 20.0  # the v errors of this random pair differ more

    def public():
        model_diff, ref_diff, _ = _diffs(world, sched)
        return -F.logsigmoid(-0.5 * beta_dpo * (model_diff - ref_diff)).mean()

    _same(_ours(world, "dpo", TrainingConfig(beta=beta_dpo / 2), sched), _public(world, public))


@pytest.mark.parametrize("loss_type", ["logistic", "hinge", "correlation"])
def test_spin_matches_the_paper_eq_4_9(world, loss_type: str) -> None:
    """SPIN-Diffusion eq. 4.9 / C.5 (uclaml/SPIN's logistic ``-logsigmoid(beta * logits)``, logp ~ -err)."""
    beta = 30.0  # keeps u below 1 so that the hinge has a gradient

    def public():
        model_diff, ref_diff, _ = _diffs(world, world["sched"])
        u = -beta * (model_diff - ref_diff)
        return {"logistic": -F.logsigmoid(u), "hinge": F.relu(1 - u), "correlation": 1 - u}[loss_type].mean()

    cfg = TrainingConfig(beta=beta, loss_type=loss_type)
    _same(_ours(world, "spin", cfg), _public(world, public))


@pytest.mark.parametrize("snr_gamma", [None, 5.0])
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_sft_matches_diffusers_text_to_image_min_snr(world, snr_gamma, prediction: str) -> None:
    """SFT: Salesforce train.py ``F.mse_loss(pred, target)``; min-SNR: diffusers
    examples/text_to_image/train_text_to_image.py (``min(snr, gamma) / snr``, ``/ (snr + 1)`` for v)."""
    sched = world["sched"] if prediction == "epsilon" else _v_scheduler(world["sched"])
    b = world["batch"]

    def public():
        latents, noise, t = b.latents_a, b.noise, b.timesteps
        noisy = sched.add_noise(latents, noise, t)
        target = noise if prediction == "epsilon" else sched.get_velocity(latents, noise, t)
        pred = world["unet"](noisy, t, world["hidden"]).sample
        if snr_gamma is None:
            return F.mse_loss(pred.float(), target.float(), reduction="mean")
        abar = sched.alphas_cumprod[t]
        snr = (abar.sqrt() / (1 - abar).sqrt()) ** 2
        weights = torch.stack([snr, snr_gamma * torch.ones_like(t)], dim=1).min(dim=1)[0]
        weights = weights / snr if prediction == "epsilon" else weights / (snr + 1)
        loss = F.mse_loss(pred.float(), target.float(), reduction="none")
        return (loss.mean(dim=list(range(1, loss.dim()))) * weights).mean()

    cfg = TrainingConfig(snr_gamma=snr_gamma)
    _same(_ours(world, "sft", cfg, sched, pairs=False), _public(world, public))


def test_dmpo_matches_the_diffusion_sdpo_dmpo_branch(world) -> None:
    """AIDC-AI/Diffusion-SDPO train.py, ``train_method == 'dmpo'``: KL(Bern(p) || Bern(1 - alpha)) with
    ``p = sigmoid(-0.5 beta_dpo (model_diff - ref_diff))``; its beta_dpo 2000 is our 1000."""
    beta_dpo, alpha = 2000.0, 0.01

    def public():
        model_diff, ref_diff, _ = _diffs(world, world["sched"])
        ut = -0.5 * beta_dpo * (model_diff - ref_diff)
        p = torch.sigmoid(ut)
        q = torch.tensor([1.0 - alpha])
        loss = p * (-F.softplus(-ut) - torch.log(q)) + (1 - p) * (-F.softplus(ut) - torch.log1p(-q))
        return loss.mean()

    cfg = TrainingConfig(beta=beta_dpo / 2, dmpo={"alpha": alpha})
    _same(_ours(world, "dmpo", cfg), _public(world, public))


def test_kto_matches_the_official_kto_lines(world) -> None:
    """jacklishufan/diffusion-kto train_kto_sd_v1.5.py (``--loss kto --halo sigmoid``): per image
    ``lambda_y (1 - sigmoid(sgn beta (g - max(0, mean g))))``, g = ref_err - model_err, no 1/2.
    Winners are the desirable images, losers the undesirable ones (t and noise shared per pair here;
    the official code draws them per image: docs/methods.md)."""
    beta = 1000.0

    def public():
        _, _, (m, r) = _diffs(world, world["sched"])
        labels = torch.tensor([1, 1, 0, 0])
        g = -m - (-r)
        kl = g.mean().detach().clamp(min=0)
        h = torch.sigmoid((2 * labels - 1) * beta * (g - kl))
        w_y = 1.0 * (labels == 1) + 1.0 * (labels != 1)
        return (w_y * (1 - h)).mean()

    _same(_ours(world, "kto", TrainingConfig(beta=beta)), _public(world, public))


def test_adaptive_dpo_matches_the_official_ema_annotator_branch(world) -> None:
    """fanfanffff1/Adaptive-DPO dpo_train_un.py with its README flags (EMA annotators 0.9999 / 0.5,
    rho 15, logits normalisation, quadratic margin, linear weight 1 / (10 w + 1), beta_dpo 1000, no 1/2)."""
    from spin_diffusion.training.annotators import EmaAnnotators

    unet, beta, rho = world["unet"], 1000.0, 15.0
    params = [p for p in unet.parameters() if p.requires_grad]
    state = EmaAnnotators(params, (0.9999, 0.5), warmup_steps=2)
    g = torch.Generator().manual_seed(3)
    saved = [p.detach().clone() for p in params]
    for _ in range(3):  # three "optimizer steps": move the weights, step the EMAs
        with torch.no_grad():
            for p in params:
                p.add_(0.005 * torch.randn(p.shape, generator=g))
        state.after_optimizer_step(params)
    annotators = []
    for ema in state.emas:
        twin = copy.deepcopy(unet)
        with torch.no_grad():
            for p, s in zip(
                [p for p in twin.parameters() if p.requires_grad], ema.shadow_params, strict=True
            ):
                p.copy_(s)
        annotators.append(twin)

    def public():
        model_diff, ref_diff, _ = _diffs(world, world["sched"])
        logits = ref_diff - model_diff
        logits0 = logits.detach()
        others = []
        for twin in annotators:
            with torch.no_grad():
                m1 = _public_losses(world, twin, world["sched"])
            m1_w, m1_l = m1.chunk(2)
            others.append((ref_diff - (m1_w - m1_l)).detach())
        stacked = torch.stack([logits0, *others])
        stacked = stacked / torch.norm(stacked, dim=1, keepdim=True)
        x = stacked * rho
        std = torch.clamp(x.std(dim=0), max=1)
        weight = torch.abs(torch.sigmoid(x).mean(dim=0) - torch.ones_like(logits0)) * std
        batch_weight = torch.reciprocal(weight * 10 + 1).detach()
        return (
            -1
            * (batch_weight * F.logsigmoid(beta * logits - (-weight * weight / beta + logits0.mean()))).mean()
        )

    cfg = TrainingConfig(beta=beta)
    try:
        _same(_ours(world, "adaptive-dpo", cfg, state=state), _public(world, public))
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved, strict=True):
                p.copy_(s)


def test_adaptive_dpo_single_model_branch_at_the_reference_is_log2_over_6(world) -> None:
    """The official branch without EMA: w = |sigmoid(rho * 0) - 1| = 1/2, weight 1/6, loss ~ log(2) / 6."""
    unet = world["unet"]
    saved = [p.detach().clone() for p in unet.parameters()]
    with torch.no_grad():
        for p, r in zip(unet.parameters(), world["ref"].parameters(), strict=True):
            p.copy_(r)
    try:
        cfg = TrainingConfig(beta=1000.0, adaptive_dpo={"ema_annotators": False})
        out, _ = _ours(world, "adaptive-dpo", cfg)
    finally:
        with torch.no_grad():
            for p, s in zip(unet.parameters(), saved, strict=True):
                p.copy_(s)
    assert out.loss.item() == pytest.approx(torch.log(torch.tensor(2.0)).item() / 6, rel=1e-3)
    # logged from the logit the loss uses: the official margin shifts u = 0 to w^2 / beta = 0.25 / 1000
    assert (
        out.metrics["u_mean"] == pytest.approx(0.25 / 1000, rel=1e-3) and out.metrics["implicit_acc"] == 1.0
    )


def test_inversion_dpo_error_and_loss_follow_train_ddim_up_to_the_stated_differences(world) -> None:
    """MIGHTYEZ/Inversion-DPO train_ddim.py: per step ``mean((eps_theta - eps_ref)^2)`` at the inverted
    latent, logit ``+0.5 beta_dpo (diff_w - diff_l)``. Ours: one step (K = 1), no 1/(2 abar_t) weight and
    the DPO sign ``-beta (m_w - m_l)`` (docs/methods.md says why); this pins exactly those differences."""
    from spin_diffusion.sampling.inversion import ddim_invert

    b, sched, beta_dpo = world["batch"], world["sched"], 5000.0
    cfg = TrainingConfig(beta=beta_dpo / 2, inversion={"steps": 3})

    def public():
        x0 = torch.cat([b.latents_a, b.latents_b])
        t = b.timesteps.repeat(2)
        hidden = world["hidden"].repeat(2, 1, 1)
        with torch.no_grad():
            x_t = ddim_invert(
                lambda x, tau: world["ref"](x, tau, hidden).sample, sched.alphas_cumprod, x0, t, 3
            )
            e_ref = world["ref"](x_t, t, hidden).sample
        e_theta = world["unet"](x_t, t, hidden).sample
        diff = ((e_theta.float() - e_ref.float()) ** 2).mean(dim=[1, 2, 3])
        win, lose = diff.chunk(2)
        return -F.logsigmoid(
            -(0.5 * (win - lose) * beta_dpo)
        ).mean()  # official sign flipped, K = 1, weight 1

    _same(_ours(world, "inversion-dpo", cfg), _public(world, public))


def test_lora_inversion_dpo_has_exactly_zero_gradient_and_is_refused(world) -> None:
    """Why LoRA is refused: with B = 0 the adapter is the reference, every inverted error is 0 and so
    is every gradient (AdamW then never moves B off 0)."""
    from spin_diffusion.config.run import validate_config
    from spin_diffusion.errors import ConfigError
    from spin_diffusion.model.lora import LoraSettings, add_lora

    unet = copy.deepcopy(world["ref"])
    add_lora(unet, LoraSettings(rank=2, alpha=2.0))
    ref = ModuleReference(unet, world["sched"], disable_adapters=True)
    cfg = TrainingConfig(beta=2500.0, inversion={"steps": 2})
    emb = Conditioning(world["hidden"])
    out = compute_loss("inversion-dpo", cfg, unet, world["sched"], ref, world["batch"], emb)
    out.loss.backward()
    grads = [p.grad for p in unet.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.count_nonzero(g) == 0 for g in grads)
    base = {"name": "t", "model": {"pretrained": "m", "lora": {"enabled": True}}, "method": "inversion-dpo"}
    base["data"] = {"source": "imagefolder", "path": "d", "resolution": 64}
    with pytest.raises(ConfigError, match="inversion-dpo cannot train a LoRA adapter"):
        validate_config(base)


def test_v_space_error_is_epsilon_error_over_abar(world) -> None:
    """diffusers' v = sqrt(a) eps - sqrt(1-a) x0: err_eps = abar_t * err_v (so error_space: epsilon scales by abar)."""
    from spin_diffusion.objectives.core import epsilon_space_factor

    sched = _v_scheduler(world["sched"])
    b = world["batch"]
    x0, eps, t = b.latents_a, b.noise, b.timesteps
    x_t = sched.add_noise(x0, eps, t)
    v = sched.get_velocity(x0, eps, t)
    v_hat = v + 0.1 * torch.randn(v.shape, generator=torch.Generator().manual_seed(1))
    a = sched.alphas_cumprod[t].view(-1, 1, 1, 1)
    eps_hat = a.sqrt() * v_hat + (1 - a).sqrt() * x_t
    err_v = ((v_hat - v) ** 2).mean(dim=[1, 2, 3])
    err_eps = ((eps_hat - eps) ** 2).mean(dim=[1, 2, 3])
    factor = epsilon_space_factor(sched.alphas_cumprod[t], "v_prediction")
    assert torch.allclose(err_eps, factor * err_v, rtol=1e-4)
    abar = sched.alphas_cumprod[b.timesteps].repeat(2)

    def public():  # the diffusers v-prediction lines, with each error taken to epsilon space
        m = _public_losses(world, world["unet"], sched) * abar
        with torch.no_grad():
            r = _public_losses(world, world["ref"], sched) * abar
        (m_w, m_l), (r_w, r_l) = m.chunk(2), r.chunk(2)
        return -F.logsigmoid(20.0 * ((r_w - r_l) - (m_w - m_l))).mean()

    _same(
        _ours(world, "dpo", TrainingConfig(beta=20.0, error_space="epsilon"), sched), _public(world, public)
    )


def test_ddim_inversion_reproduces_the_official_40_step_loop() -> None:
    """MIGHTYEZ/Inversion-DPO train_ddim.py ``ddim_inversion`` with ``_next_step_scheduler``: 40 steps over
    t = 0, 25, ..., 975 of a DDIMScheduler(scaled_linear 0.00085-0.012, set_alpha_to_one=False); step t goes
    from abar[t - 25] (abar_0 at t = 0: an identity step) to abar[t] with the noise predicted at (x, t)."""
    from diffusers import DDIMScheduler

    from spin_diffusion.sampling.inversion import ddim_invert

    sched = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
    )
    sched.set_timesteps(40)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 4, 4, 4, generator=g)
    w = torch.randn(4, 4, generator=g) * 0.5

    def predict(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # any smooth function of (x, t)
        tt = torch.as_tensor(t, dtype=torch.float32).reshape(-1, 1, 1, 1)
        return torch.tanh(torch.einsum("bchw,cd->bdhw", x, w) + tt / 1000)

    latent = x0.clone()
    for i in range(sched.num_inference_steps):
        t = int(sched.timesteps[len(sched.timesteps) - i - 1])
        prev = t - sched.config.num_train_timesteps // sched.num_inference_steps
        alpha_t = sched.alphas_cumprod[prev] if prev >= 0 else sched.final_alpha_cumprod
        alpha_next = sched.alphas_cumprod[t]
        eps = predict(latent, torch.full((2,), t))
        x0_pred = (latent - (1 - alpha_t) ** 0.5 * eps) / alpha_t**0.5
        latent = alpha_next**0.5 * x0_pred + (1 - alpha_next) ** 0.5 * eps
    ours = ddim_invert(predict, sched.alphas_cumprod, x0, torch.tensor([975, 975]), num_steps=39)
    assert torch.allclose(ours, latent, atol=1e-5), float((ours - latent).abs().max())


def test_full_fine_tuning_inversion_dpo_leaves_the_reference_through_weight_decay(world) -> None:
    """At theta = reference the gradient is exactly 0; AdamW's decoupled weight decay still moves every
    weight at step 1, after which the gradient is non-zero: why validation asks for weight_decay > 0."""
    unet = copy.deepcopy(world["ref"]).requires_grad_(True)
    ref = ModuleReference(world["ref"], world["sched"])
    cfg = TrainingConfig(beta=2500.0, inversion={"steps": 2})
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-3, weight_decay=1e-2)
    grads = []
    for _ in range(2):
        opt.zero_grad(set_to_none=False)
        compute_loss(
            "inversion-dpo", cfg, unet, world["sched"], ref, world["batch"], Conditioning(world["hidden"])
        ).loss.backward()
        grads.append(torch.sqrt(sum((p.grad**2).sum() for p in unet.parameters())).item())
        opt.step()
    assert grads[0] == 0.0 and grads[1] > 0.0


def test_see_dpo_logs_the_logit_its_loss_uses(world) -> None:
    """SEE-DPO's u includes -gamma (m_w - m_l): u_mean and implicit_acc are taken from that u."""
    beta, ratio = 300.0, 0.5
    out, _ = _ours(world, "see-dpo", TrainingConfig(beta=beta, see_dpo={"entropy_ratio": ratio}))
    with torch.no_grad():
        m = _public_losses(world, world["unet"], world["sched"])
        r = _public_losses(world, world["ref"], world["sched"])
    (m_w, m_l), (r_w, r_l) = m.chunk(2), r.chunk(2)
    u = -beta * ((m_w - r_w) - (m_l - r_l)) - ratio * beta * (m_w - m_l)
    assert out.metrics["u_mean"] == pytest.approx(u.mean().item(), rel=1e-4)
    assert out.metrics["implicit_acc"] == ((u > 0).float() + 0.5 * (u == 0).float()).mean().item()
    assert out.loss.item() == pytest.approx(-F.logsigmoid(u).mean().item(), rel=1e-4)
