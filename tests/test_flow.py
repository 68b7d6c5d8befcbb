"""The flow-matching seam (SD3, FLUX.1): conditioning, noising, target, network call and stored samples
equal what diffusers' pipelines and training scripts compute, on tiny pipelines built offline."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from spin_diffusion.config.flow import FlowConfig
from spin_diffusion.errors import CheckpointError, ConfigError
from spin_diffusion.model.families import (
    FAMILIES,
    FLUX,
    SANA,
    SD3,
    denoiser_of,
    family_for_class,
    prompt_encoder,
)
from spin_diffusion.model.loading import load_pipeline
from spin_diffusion.model.prediction import prediction_error, training_scheduler
from spin_diffusion.model.tiny_flow import (
    TinyFlowSpec,
    build_tiny_flux_pipeline,
    build_tiny_sana_pipeline,
    build_tiny_sd3_pipeline,
)

WORDS = ["a", "red", "blue", "green", "circle", "square", "on", "the", "left", "right"]
CAPTIONS = ["a red circle", "a blue square on the left", ""]


def sd3_spec(t5: bool = True) -> TinyFlowSpec:
    return TinyFlowSpec(words=WORDS, image_size=16, vae_channels=(8, 16), t5=t5)


def flux_spec(guidance_embeds: bool = True) -> TinyFlowSpec:
    return TinyFlowSpec(
        words=WORDS,
        image_size=16,
        vae_channels=(8, 16),
        vae_scaling_factor=0.3611,
        vae_shift_factor=0.1159,
        guidance_embeds=guidance_embeds,
    )


@pytest.fixture(scope="module")
def sd3() -> Any:
    return build_tiny_sd3_pipeline(sd3_spec())


@pytest.fixture(scope="module")
def flux() -> Any:
    return build_tiny_flux_pipeline(flux_spec())


@pytest.fixture(scope="module")
def sana() -> Any:
    return build_tiny_sana_pipeline()


def test_tiny_flow_pipelines_load_through_the_same_loader_as_real_ones(
    tmp_path: Path, sd3, flux, sana
) -> None:
    for pipe, family in ((sd3, SD3), (flux, FLUX), (sana, SANA)):
        path = tmp_path / family.pipeline_class
        pipe.save_pretrained(str(path), safe_serialization=True)
        assert json.loads((path / "model_index.json").read_text())["_class_name"] == family.pipeline_class
        loaded = load_pipeline(path)
        assert type(loaded).__name__ == family.pipeline_class
        assert type(denoiser_of(loaded)).__name__ == family.denoiser_class


def test_sd3_without_t5_loads_and_encodes(tmp_path: Path) -> None:
    build_tiny_sd3_pipeline(sd3_spec(t5=False)).save_pretrained(str(tmp_path / "p"))
    pipe = load_pipeline(tmp_path / "p")
    assert pipe.text_encoder_3 is None
    cond = prompt_encoder(pipe).encode(CAPTIONS)
    assert cond.hidden_states.shape[0] == 3 and torch.isfinite(cond.hidden_states).all()


def test_the_unsupported_pipeline_error_lists_every_family() -> None:
    with pytest.raises(CheckpointError) as err:
        family_for_class("QwenImagePipeline", "some/dir")
    message = str(err.value)
    assert "\n" not in message and "QwenImagePipeline" in message
    assert all(name in message for name in FAMILIES) and len(FAMILIES) >= 4


# ----------------------------------------------------------------------------- conditioning


def _sd3_reference_conditioning(pipe: Any, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """SD3 conditioning as diffusers' SD3 training scripts assemble it (penultimate CLIP states, pooled
    projections concatenated, zero-padded to T5's width, T5 states appended), written out here."""
    states, pooled = [], []
    for tok, enc in ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)):
        ids = tok(captions, padding="max_length", max_length=tok.model_max_length, truncation=True).input_ids
        out = enc(torch.tensor(ids), output_hidden_states=True)
        states.append(out.hidden_states[-2])
        pooled.append(out[0])
    clip = torch.cat(states, dim=-1)
    ids = pipe.tokenizer_3(captions, padding="max_length", max_length=256, truncation=True).input_ids
    t5 = pipe.text_encoder_3(torch.tensor(ids))[0]
    clip = torch.nn.functional.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
    return torch.cat([clip, t5], dim=-2), torch.cat(pooled, dim=-1)


def test_sd3_conditioning_equals_encode_prompt_and_the_training_scripts_assembly(sd3) -> None:
    cond = prompt_encoder(sd3).encode(CAPTIONS)
    with torch.no_grad():
        states, _, pooled, _ = sd3.encode_prompt(CAPTIONS, None, None, do_classifier_free_guidance=False)
    torch.testing.assert_close(cond.hidden_states, states)
    torch.testing.assert_close(cond.text_embeds, pooled)
    with torch.no_grad():
        ref_states, ref_pooled = _sd3_reference_conditioning(sd3, CAPTIONS)
    torch.testing.assert_close(cond.hidden_states, ref_states)
    torch.testing.assert_close(cond.text_embeds, ref_pooled)


def test_flux_conditioning_equals_encode_prompt_and_the_training_scripts_assembly(flux) -> None:
    cond = prompt_encoder(flux).encode(CAPTIONS)
    with torch.no_grad():
        states, pooled, text_ids = flux.encode_prompt(CAPTIONS, None)
    torch.testing.assert_close(cond.hidden_states, states)
    torch.testing.assert_close(cond.text_embeds, pooled)
    assert torch.equal(text_ids, torch.zeros(states.shape[1], 3))  # rebuilt as zeros at the network call
    tok = flux.tokenizer
    with torch.no_grad():
        ids = tok(CAPTIONS, padding="max_length", max_length=tok.model_max_length, truncation=True).input_ids
        ref_pooled = flux.text_encoder(torch.tensor(ids)).pooler_output
        ids2 = flux.tokenizer_2(CAPTIONS, padding="max_length", max_length=512, truncation=True).input_ids
        ref_states = flux.text_encoder_2(torch.tensor(ids2))[0]
    torch.testing.assert_close(cond.text_embeds, ref_pooled)
    torch.testing.assert_close(cond.hidden_states, ref_states)


def test_sana_conditioning_is_encode_prompts_states_and_mask(sana) -> None:
    cond = prompt_encoder(sana).encode(CAPTIONS)
    with torch.no_grad():
        states, mask, _, _ = sana.encode_prompt(CAPTIONS, do_classifier_free_guidance=False)
    torch.testing.assert_close(cond.hidden_states, states)
    assert torch.equal(cond.attention_mask, mask) and cond.text_embeds is None
    pair = cond.pair()
    assert torch.equal(pair.attention_mask, torch.cat([mask, mask])) and len(pair) == 6


# ----------------------------------------------------------------------------- the training formulas


def test_the_sigma_densities_are_diffusers_compute_density_for_timestep_sampling() -> None:
    """Each density is a transform of one uniform draw: fed the draw diffusers makes, it gives diffusers' u."""
    from diffusers.training_utils import compute_density_for_timestep_sampling

    from spin_diffusion.model.flow import density_transform

    mode = FlowConfig(timestep_sampling="mode", mode_scale=1.29)
    ours = density_transform(torch.rand(64, generator=torch.Generator().manual_seed(3)), mode)
    theirs = compute_density_for_timestep_sampling(
        "mode", 64, mode_scale=1.29, generator=torch.Generator().manual_seed(3)
    )
    torch.testing.assert_close(ours, theirs)
    logit = FlowConfig(timestep_sampling="logit_normal", logit_mean=0.3, logit_std=0.8)
    z = torch.randn(
        64, generator=torch.Generator().manual_seed(4)
    ).double()  # diffusers' normal, standardised
    theirs = compute_density_for_timestep_sampling(
        "logit_normal", 64, logit_mean=0.3, logit_std=0.8, generator=torch.Generator().manual_seed(4)
    )
    uniform_draw = 0.5 * (1 + torch.erf(z / math.sqrt(2)))  # Phi(z): the uniform draw z stands for
    torch.testing.assert_close(density_transform(uniform_draw, logit).float(), theirs)


def test_sd3_sigmas_are_the_pipeline_schedulers_shifted_sigmas(sd3) -> None:
    """Uniform sampling: index t of the training schedule of a FlowMatchEulerDiscreteScheduler(shift=3)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    process = training_scheduler(sd3, FlowConfig(timestep_sampling="uniform"))
    t = torch.tensor([0, 1, 250, 500, 999])
    expected = FlowMatchEulerDiscreteScheduler(shift=3.0).sigmas[t]
    torch.testing.assert_close(process.sigmas(t, (8, 8)), expected.float())
    unshifted = (1000 - t) / 1000
    torch.testing.assert_close(expected.double(), 3 * unshifted / (1 + 2 * unshifted), check_dtype=False)


def test_flux_sigmas_carry_the_samplers_resolution_dependent_shift(flux) -> None:
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    process = training_scheduler(flux, FlowConfig(timestep_sampling="uniform"))
    t = torch.tensor([0, 100, 600, 999])
    base = (1000 - t).double() / 1000
    cfg = flux.scheduler.config
    for hw in ((8, 8), (16, 32)):
        mu = calculate_shift(
            (hw[0] // 2) * (hw[1] // 2),
            cfg.base_image_seq_len,
            cfg.max_image_seq_len,
            cfg.base_shift,
            cfg.max_shift,
        )
        expected = math.exp(mu) / (math.exp(mu) + (1 / base - 1))
        torch.testing.assert_close(process.sigmas(t, hw), expected.float())


def _latents(seed: int, hw: tuple[int, int] = (8, 8)) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(3, 16, *hw, generator=g), torch.randn(3, 16, *hw, generator=g)


@pytest.mark.parametrize("weighting", ["none", "sigma_sqrt", "cosmap"])
def test_sd3_error_equals_the_diffusers_sd3_training_step(sd3, weighting: str) -> None:
    """x_t = (1 - s) x0 + s eps; transformer(x_t, timestep=s * 1000, ...); target eps - x0; weighted mean."""
    from diffusers.training_utils import compute_loss_weighting_for_sd3

    process = training_scheduler(sd3, FlowConfig(weighting=weighting))
    cond = prompt_encoder(sd3).encode(CAPTIONS)
    x0, eps = _latents(0)
    t = torch.tensor([3, 480, 977])
    with torch.no_grad():
        ours = prediction_error(sd3.transformer, process, x0, cond, t, eps)
        s = process.sigmas(t, (8, 8)).view(-1, 1, 1, 1)
        noisy = (1.0 - s) * x0 + s * eps
        torch.testing.assert_close(process.add_noise(x0, eps, t), noisy)
        pred = sd3.transformer(
            hidden_states=noisy,
            timestep=s.flatten() * 1000,
            encoder_hidden_states=cond.hidden_states,
            pooled_projections=cond.text_embeds,
        ).sample
        w = compute_loss_weighting_for_sd3(weighting, s)
        theirs = (w * (pred - (eps - x0)) ** 2).reshape(3, -1).mean(1)
    torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("guidance_embeds", [True, False])
def test_flux_error_equals_the_diffusers_flux_training_step(guidance_embeds: bool) -> None:
    """Packed x_t with img_ids, zero txt_ids, timestep s (the script's t / 1000), the embedded guidance
    (dev only), the prediction unpacked, target eps - x0."""
    from diffusers import FluxPipeline

    pipe = build_tiny_flux_pipeline(flux_spec(guidance_embeds))
    process = training_scheduler(pipe, FlowConfig(guidance=3.5))
    cond = prompt_encoder(pipe).encode(CAPTIONS)
    x0, eps = _latents(1, (8, 12))
    t = torch.tensor([10, 500, 990])
    with torch.no_grad():
        ours = prediction_error(pipe.transformer, process, x0, cond, t, eps)
        s = process.sigmas(t, (8, 12)).view(-1, 1, 1, 1)
        noisy = (1.0 - s) * x0 + s * eps
        packed = FluxPipeline._pack_latents(noisy, 3, 16, 8, 12)
        img_ids = FluxPipeline._prepare_latent_image_ids(3, 4, 6, x0.device, x0.dtype)
        pred = pipe.transformer(
            hidden_states=packed,
            timestep=s.flatten(),
            guidance=torch.full((3,), 3.5) if guidance_embeds else None,
            pooled_projections=cond.text_embeds,
            encoder_hidden_states=cond.hidden_states,
            txt_ids=torch.zeros(cond.hidden_states.shape[1], 3),
            img_ids=img_ids,
        ).sample
        pred = FluxPipeline._unpack_latents(
            pred, 8 * pipe.vae_scale_factor, 12 * pipe.vae_scale_factor, pipe.vae_scale_factor
        )
        theirs = ((pred - (eps - x0)) ** 2).reshape(3, -1).mean(1)
    torch.testing.assert_close(ours, theirs)


def test_sana_error_equals_the_diffusers_sana_training_step(sana) -> None:
    """Sigmas of FlowMatchEulerDiscreteScheduler(shift=flow_shift); transformer(x_t, Gemma states and their
    mask, timestep s * 1000); target eps - x0 (diffusers' train_dreambooth_lora_sana.py's step)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    process = training_scheduler(sana, FlowConfig(timestep_sampling="uniform"))
    cond = prompt_encoder(sana).encode(CAPTIONS)
    g = torch.Generator().manual_seed(2)
    x0, eps = torch.randn(3, 8, 16, 16, generator=g), torch.randn(3, 8, 16, 16, generator=g)
    t = torch.tensor([5, 333, 990])
    expected = FlowMatchEulerDiscreteScheduler(shift=sana.scheduler.config.flow_shift).sigmas[t].float()
    torch.testing.assert_close(process.sigmas(t, (16, 16)), expected)
    with torch.no_grad():
        ours = prediction_error(sana.transformer, process, x0, cond, t, eps)
        s = expected.view(-1, 1, 1, 1)
        pred = sana.transformer(
            hidden_states=(1.0 - s) * x0 + s * eps,
            encoder_hidden_states=cond.hidden_states,
            encoder_attention_mask=cond.attention_mask,
            timestep=s.flatten() * 1000,
        ).sample
        theirs = ((pred - (eps - x0)) ** 2).reshape(3, -1).mean(1)
    torch.testing.assert_close(ours, theirs)


# ----------------------------------------------------------------------------- sampling


@pytest.mark.parametrize("build", ["sd3", "flux", "sana"])
def test_stored_opponent_latents_equal_the_plain_pipelines(build: str, sd3, flux, sana) -> None:
    """Batched generate_latents gives, per prompt and seed, what one plain pipeline call gives."""
    from diffusers import FluxPipeline

    from spin_diffusion.model.families import family_of
    from spin_diffusion.sampling.generate import generate_latents

    pipe = {"sd3": sd3, "flux": flux, "sana": sana}[build]
    size = 32 if build == "sana" else 16  # Sana's pipeline asks for multiples of 32 px
    family_of(pipe).sample_at(pipe, size)
    prompts, seeds = ["a red circle", "a blue square", "a green circle"], [5, 6, 7]
    stored = generate_latents(pipe, prompts, seeds, num_inference_steps=3, guidance_scale=2.0, batch_size=2)
    channels = pipe.transformer.config.out_channels if build == "sana" else 16
    assert stored.shape == (3, channels, size // pipe.vae_scale_factor, size // pipe.vae_scale_factor)
    unbinned = {"use_resolution_binning": False} if build == "sana" else {}
    for i, (prompt, seed) in enumerate(zip(prompts, seeds, strict=True)):
        out = pipe(
            prompt=prompt,
            num_inference_steps=3,
            guidance_scale=2.0,
            height=size,
            width=size,
            generator=torch.Generator().manual_seed(seed),
            output_type="latent",
            **unbinned,
        ).images
        if build == "flux":
            out = FluxPipeline._unpack_latents(out, 16, 16, pipe.vae_scale_factor)
        torch.testing.assert_close(stored[i], out[0].float(), atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("family", [SD3, FLUX, SANA])
def test_methods_and_settings_a_flow_family_lacks_are_refused_in_one_line(family) -> None:
    family.check_run("spin", "pipeline", None)
    family.check_run("dpo", "pipeline", None)
    for args in (("spin-exact", "pipeline", None), ("inversion-dpo", "pipeline", None)):
        with pytest.raises(
            ConfigError, match=f"method: {args[0]} is not available for {family.pipeline_class}"
        ):
            family.check_run(*args)
    with pytest.raises(ConfigError, match="sampling.scheduler: dpmsolver\\+\\+ does not apply"):
        family.check_run("spin", "dpmsolver++", None)
    with pytest.raises(ConfigError, match="training.snr_gamma"):
        family.check_run("sft", "pipeline", 5.0)
