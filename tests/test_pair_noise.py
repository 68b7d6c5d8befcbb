"""training.pair_noise: one noise draw per pair (shared) or one per member (independent, eq. 4.9)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from spin_diffusion.config.run import TrainingConfig, validate_config
from spin_diffusion.errors import ConfigError
from spin_diffusion.model.families import Conditioning, encode_prompts
from spin_diffusion.model.loading import load_pipeline
from spin_diffusion.model.prediction import training_scheduler
from spin_diffusion.model.weights import frozen_copy
from spin_diffusion.training.batches import make_batch
from spin_diffusion.training.losses import compute_loss
from spin_diffusion.training.reference import ModuleReference
from synthetic_pairs import SyntheticPairs

ITEMS = [(0, 0), (3, 0), (5, 1)]


def test_independent_members_get_their_own_reproducible_noise_and_the_same_t() -> None:
    data = SyntheticPairs()
    shared = make_batch(data, ITEMS, seed=5, num_train_timesteps=1000, pair_noise="shared")
    indep = make_batch(data, ITEMS, seed=5, num_train_timesteps=1000, pair_noise="independent")
    again = make_batch(data, ITEMS, seed=5, num_train_timesteps=1000, pair_noise="independent")
    assert shared.noise_b is None
    torch.testing.assert_close(shared.pair_noise()[:3], shared.pair_noise()[3:], rtol=0, atol=0)
    assert indep.noise_b is not None and indep.noise_b.shape == indep.noise.shape
    for k in range(len(ITEMS)):
        assert not torch.equal(indep.noise_b[k], indep.noise[k])
    torch.testing.assert_close(indep.noise_b, again.noise_b, rtol=0, atol=0)  # a pure function of the seeds
    # the timestep and the first member's noise are the same draws in both settings
    assert indep.timesteps.tolist() == shared.timesteps.tolist()
    torch.testing.assert_close(indep.noise, shared.noise, rtol=0, atol=0)
    torch.testing.assert_close(indep.pair_noise(), torch.cat([indep.noise, indep.noise_b]))
    other_seed = make_batch(data, ITEMS, seed=6, num_train_timesteps=1000, pair_noise="independent")
    assert not torch.equal(other_seed.noise_b, indep.noise_b)
    with pytest.raises(ValueError, match="pair_noise"):
        make_batch(data, ITEMS, seed=5, num_train_timesteps=1000, pair_noise="both")  # type: ignore[arg-type]


def _hand_errors(unet, sched, x0, eps, t, emb) -> torch.Tensor:
    noisy = sched.add_noise(x0, eps, t)
    with torch.no_grad():
        pred = unet(noisy, t, encoder_hidden_states=emb).sample
    return ((pred.float() - eps) ** 2).mean(dim=(1, 2, 3))  # epsilon prediction: the target is eps


@pytest.mark.parametrize("pair_noise", ["shared", "independent"])
def test_the_spin_loss_on_a_hand_batch_matches_a_hand_computation(
    tiny_pipeline_dir: Path, pair_noise
) -> None:
    pipe = load_pipeline(tiny_pipeline_dir)
    sched = training_scheduler(pipe)
    model = frozen_copy(pipe.unet)
    with torch.no_grad():  # the trained model differs from the reference
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    reference = frozen_copy(pipe.unet)
    batch = make_batch(SyntheticPairs(), ITEMS, seed=9, num_train_timesteps=1000, pair_noise=pair_noise)
    hidden = encode_prompts(pipe.text_encoder, pipe.tokenizer, batch.captions)
    emb = Conditioning(hidden)
    beta = 300.0
    cfg = TrainingConfig(beta=beta, pair_noise=pair_noise)
    with torch.no_grad():
        out = compute_loss("spin", cfg, model, sched, ModuleReference(reference, sched), batch, emb)

    eps_gen = batch.noise if pair_noise == "shared" else batch.noise_b
    t = batch.timesteps
    d_real = _hand_errors(model, sched, batch.latents_a, batch.noise, t, hidden) - _hand_errors(
        reference, sched, batch.latents_a, batch.noise, t, hidden
    )
    d_gen = _hand_errors(model, sched, batch.latents_b, eps_gen, t, hidden) - _hand_errors(
        reference, sched, batch.latents_b, eps_gen, t, hidden
    )
    hand = (-F.logsigmoid(-beta * (d_real - d_gen))).mean()
    assert out.loss.item() == pytest.approx(hand.item(), rel=1e-4)  # batched vs per-side forwards
    assert out.metrics["d_gen"] == pytest.approx(d_gen.mean().item(), rel=1e-4, abs=1e-7)
    # the other setting scores the generated member at another noise: another loss
    other = "independent" if pair_noise == "shared" else "shared"
    batch2 = make_batch(SyntheticPairs(), ITEMS, seed=9, num_train_timesteps=1000, pair_noise=other)
    with torch.no_grad():
        out2 = compute_loss(
            "spin", cfg.model_copy(update={"pair_noise": other}), model, sched,
            ModuleReference(reference, sched), batch2, emb,
        )  # fmt: skip
    assert out2.metrics["d_real"] == pytest.approx(out.metrics["d_real"], rel=1e-6, abs=1e-9)
    assert out2.metrics["d_gen"] != pytest.approx(out.metrics["d_gen"], rel=1e-3, abs=1e-9)


def test_pair_noise_is_a_validated_setting() -> None:
    raw = {
        "name": "r",
        "model": {"pretrained": "x"},
        "data": {"source": "imagefolder", "path": "d", "resolution": 32},
        "training": {"pair_noise": "both"},
    }
    with pytest.raises(ConfigError, match="training.pair_noise"):
        validate_config(raw)
    raw["training"]["pair_noise"] = "independent"
    assert validate_config(raw).training.pair_noise == "independent"


@pytest.fixture(scope="module")
def perturbed(tiny_pipeline_dir: Path):
    pipe = load_pipeline(tiny_pipeline_dir)
    model = frozen_copy(pipe.unet)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel() + 1)))
    return pipe, model, ModuleReference(frozen_copy(pipe.unet), training_scheduler(pipe))


@pytest.mark.parametrize("method", ["dpo", "dmpo", "see-dpo", "adaptive-dpo-lite", "kto"])
def test_every_noised_pair_method_scores_the_second_member_at_its_own_noise(perturbed, method: str) -> None:
    pipe, model, reference = perturbed
    sched = training_scheduler(pipe)
    out = {}
    for setting in ("shared", "independent"):
        batch = make_batch(SyntheticPairs(), ITEMS, seed=4, num_train_timesteps=1000, pair_noise=setting)
        emb = Conditioning(encode_prompts(pipe.text_encoder, pipe.tokenizer, batch.captions))
        cfg = TrainingConfig(beta=300.0, pair_noise=setting)
        with torch.no_grad():
            out[setting] = compute_loss(method, cfg, model, sched, reference, batch, emb).metrics
    assert out["shared"]["d_win"] == pytest.approx(out["independent"]["d_win"], rel=1e-6, abs=1e-9)
    assert out["shared"]["d_lose"] != pytest.approx(out["independent"]["d_lose"], rel=1e-3, abs=1e-9)
