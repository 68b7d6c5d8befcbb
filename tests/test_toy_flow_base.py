"""The flow-matching toy base: its pretraining (SD3 without T5, rectified flow), its alias, and the
toy studies taking the base as a setting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from spin_diffusion.errors import ConfigError, UserError
from spin_diffusion.model.shipped import MODEL_ALIASES, toy_base_path, toy_flow_base_path
from spin_diffusion.studies.reproduce import _check_compatible
from spin_diffusion.studies.runs import base_sampler, check_methods, methods_for_base, run_configs
from spin_diffusion.studies.settings import ALL_METHODS, ReproduceConfig
from spin_diffusion.toy.pretrain_flow import FlowPretrainConfig


def tiny_flow_config(**over) -> FlowPretrainConfig:
    sizes = {"transformer_layers": 2, "attention_heads": 2, "attention_head_dim": 8, "text_hidden_size": 16}
    return FlowPretrainConfig(**{**sizes, **over})


def test_merged_padding_token_equals_the_pipelines_256_zero_tokens() -> None:
    """Pretraining's one zero token with log(256) on its logit gives the plain forward's velocity."""
    import torch

    from spin_diffusion.config.flow import FlowConfig
    from spin_diffusion.model.conditioning import Conditioning
    from spin_diffusion.model.flow import sd3_process
    from spin_diffusion.toy.pretrain_flow import (
        MergedPaddingAttnProcessor,
        build_sd3_pipeline,
        t5_padding_tokens,
    )

    pipe = build_sd3_pipeline(tiny_flow_config())
    torch.manual_seed(0)
    for p in pipe.transformer.parameters():  # diffusers zero-initialises some layers: make them all matter
        p.data.normal_(0, 0.1)
    process = sd3_process(pipe, FlowConfig())
    captions = ["a big purple triangle in the top right", ""]
    noisy, sigmas = torch.randn(2, 16, 16, 16), torch.tensor([0.2, 0.8])

    def velocity(max_sequence_length: int) -> torch.Tensor:
        states, _, pooled, _ = pipe.encode_prompt(
            prompt=captions, prompt_2=None, prompt_3=None, do_classifier_free_guidance=False,
            max_sequence_length=max_sequence_length,
        )  # fmt: skip
        return process.call(pipe.transformer, noisy, sigmas, Conditioning(states, pooled), 1000)

    assert t5_padding_tokens(pipe) == 256
    with torch.no_grad():
        plain = velocity(256)
        one_token_plain = velocity(1)
        plain_processors = pipe.transformer.attn_processors
        pipe.transformer.set_attn_processor(MergedPaddingAttnProcessor(256))
        merged = velocity(1)
        pipe.transformer.set_attn_processor(dict(plain_processors))
    assert (merged - plain).abs().max() < 1e-5
    assert (one_token_plain - plain).abs().max() > 1e-2  # the log(256) term is what makes them equal


def test_calibrate_latents_centres_and_scales_what_the_denoiser_sees() -> None:
    import torch
    from diffusers import AutoencoderKL

    from spin_diffusion.toy.pretrain import calibrate_latents

    mean = 0.7 + 2.5 * torch.randn(64, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    std = torch.full_like(mean, 0.1)
    flow_vae = AutoencoderKL(latent_channels=4, shift_factor=0.0, norm_num_groups=8, block_out_channels=(8,))
    calibrate_latents(flow_vae, mean, std, torch.Generator().manual_seed(0))
    z = (mean - flow_vae.config.shift_factor) * flow_vae.config.scaling_factor
    assert abs(z.mean().item()) < 0.02 and abs(z.std().item() - 1) < 0.02
    sd_vae = AutoencoderKL(latent_channels=4, norm_num_groups=8, block_out_channels=(8,))
    calibrate_latents(sd_vae, mean, std, torch.Generator().manual_seed(0))
    assert sd_vae.config.shift_factor is None  # SD's VAE is scaled only, as before
    assert abs((mean * sd_vae.config.scaling_factor).std().item() - 1) < 0.02


def test_pretrain_config_file_picks_the_family(tmp_path: Path) -> None:
    from spin_diffusion.cli.toy import _load_pretrain_config
    from spin_diffusion.toy.pretrain import PretrainConfig

    flow = tmp_path / "flow.yaml"
    flow.write_text("family: sd3\nunet_steps: 5\n")
    cfg = _load_pretrain_config(flow)
    assert isinstance(cfg, FlowPretrainConfig) and cfg.unet_steps == 5 and cfg.latent_channels == 16
    sd = tmp_path / "sd.yaml"
    sd.write_text("family: sd\n")
    assert type(_load_pretrain_config(sd)) is PretrainConfig
    bad = tmp_path / "bad.yaml"
    bad.write_text("family: flux\n")
    with pytest.raises(UserError, match="'family'"):
        _load_pretrain_config(bad)


def test_flow_base_alias_and_the_studies_base_setting() -> None:
    assert MODEL_ALIASES["toy-flow-base"]() == toy_flow_base_path()
    flow = ReproduceConfig(base="toy-flow-base", seeds=[0], pairs=16)
    unet = ReproduceConfig(seeds=[0], pairs=16)
    assert unet.base == "toy-base"
    flow_runs = run_configs(flow, 0, Path("/tmp/seed-0"))
    assert {r["model"]["pretrained"] for r in flow_runs.values()} == {str(toy_flow_base_path().resolve())}
    assert {r["sampling"]["scheduler"] for r in flow_runs.values()} == {"pipeline"} == {base_sampler(flow)}
    assert base_sampler(unet) == "dpmsolver++"
    assert run_configs(unet, 0, Path("/tmp/seed-0"))["sft"]["model"]["pretrained"] == str(
        toy_base_path().resolve()
    )
    with pytest.raises(ConfigError, match="different base"):
        _check_compatible(unet, flow, Path("/tmp/study"))


def test_the_flow_base_leaves_out_the_methods_its_family_refuses() -> None:
    assert methods_for_base("toy-base", ALL_METHODS) == ALL_METHODS
    flow_methods = methods_for_base("toy-flow-base", ALL_METHODS)
    assert set(ALL_METHODS) - set(flow_methods) == {"spin-exact", "inversion-dpo"}
    check_methods(ReproduceConfig(base="toy-flow-base", methods=flow_methods))
    with pytest.raises(ConfigError, match="spin-exact is not available for StableDiffusion3Pipeline"):
        check_methods(ReproduceConfig(base="toy-flow-base", methods=["sft", "spin-exact"]))


def test_attribute_pass_rates_name_the_attribute_that_is_wrong() -> None:
    import numpy as np

    from spin_diffusion.toy.quick_eval import attribute_pass_rates
    from spin_diffusion.toy.render import render
    from spin_diffusion.toy.world import parse_prompt

    rng = np.random.default_rng(0)
    prompt = "a big red square in the top left"
    image = render(parse_prompt(prompt), 32, "curated", rng)
    right = attribute_pass_rates([image], [prompt])
    wrong = attribute_pass_rates([image], ["a big blue square in the top left"])
    assert right == {
        "pass_colour": 1.0,
        "pass_count": 1.0,
        "pass_position": 1.0,
        "pass_shape": 1.0,
        "pass_size": 1.0,
    }
    assert wrong["pass_colour"] == 0.0 and wrong["pass_shape"] == 1.0


@pytest.mark.slow
def test_flow_pretraining_writes_a_plain_sd3_pipeline(tmp_path: Path) -> None:
    from diffusers import StableDiffusion3Pipeline

    from spin_diffusion.toy.pretrain_flow import pretrain_flow

    cfg = tiny_flow_config(n_images=32, vae_curated_images=16, vae_steps=2, decoder_steps=1, unet_steps=2,
                           unet_batch_size=4, warmup_steps=1, threads=1)  # fmt: skip
    records: list[dict] = []
    pretrain_flow(cfg, tmp_path / "base", records.append)
    # plain diffusers, as its docs load SD3 without T5
    pipe = StableDiffusion3Pipeline.from_pretrained(tmp_path / "base", text_encoder_3=None, tokenizer_3=None)
    assert pipe.text_encoder_3 is None and pipe.vae.config.latent_channels == 16
    assert pipe.vae.config.shift_factor != 0.0 and pipe.vae.config.scaling_factor != 1.0
    summary = json.loads((tmp_path / "base" / "pretrain_summary.json").read_text())
    assert summary["config"]["family"] == "sd3"
    assert [r["step"] for r in records if r["stage"] == "denoiser"] == [0, 1]


@pytest.mark.slow
def test_toy_reproduce_runs_on_the_shipped_flow_base(tmp_path: Path) -> None:
    """`toy reproduce` from the shipped flow base at a tiny budget (8-step sampling)."""
    from typer.testing import CliRunner

    from spin_diffusion.cli.main import app

    config = tmp_path / "tiny.yaml"
    config.write_text(
        "base: toy-flow-base\nseeds: [0]\npairs: 16\neval_prompts: 2\nimages_per_prompt: 2\nsample_steps: 8\n"
        "batch_size: 4\nwarmup_steps: 1\n"
        "spin: {iterations: [{beta: 200, learning_rate: 1.0e-5, max_steps: 1}, "
        "{beta: 200, learning_rate: 1.0e-5, max_steps: 1}]}\n"
        "sft: {learning_rate: 1.0e-4, max_steps: 2, eval_every: 1}\n"
        "dpo: {beta: 2500, learning_rate: 1.0e-5, max_steps: 1}\n"
    )
    res = CliRunner().invoke(
        app, ["toy", "reproduce", "--out", str(tmp_path / "study"), "--config", str(config)]
    )
    assert res.exit_code == 0, res.output
    models = json.loads((tmp_path / "study" / "results.json").read_text())["seeds"]["0"]["models"]
    assert set(models) == {"base", "sft-1", "sft-2", "dpo", "spin-1", "spin-2", "spin-1-continued"}
    run = yaml.safe_load((tmp_path / "study" / "seed-0" / "spin" / "config.yaml").read_text())
    assert run["model"]["pretrained"] == str(toy_flow_base_path().resolve())
