"""The toy base model: pretraining code runs end to end, and the shipped pipeline loads and samples
with plain diffusers (the same path SD-1.5 takes)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from spin_diffusion.toy import base_model_path
from spin_diffusion.toy.world import VOCABULARY


@pytest.fixture(scope="module")
def base_pipe():
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(base_model_path())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_shipped_base_is_a_small_safetensors_diffusers_pipeline():
    root = base_model_path()
    index = json.loads((root / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    files = [p for p in root.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 25e6
    assert not [p for p in files if p.suffix in (".bin", ".pt", ".pkl", ".ckpt")]
    assert {p.parent.name for p in files if p.suffix == ".safetensors"} == {"unet", "vae", "text_encoder"}
    assert (root / "TRAINING.md").is_file()


def test_shipped_base_tokenizer_spells_every_grammar_word_losslessly(base_pipe):
    tok = base_pipe.tokenizer
    for word in VOCABULARY:
        ids = tok(word, add_special_tokens=False).input_ids
        assert tok.unk_token_id not in ids and tok.decode(ids).strip() == word, word


def test_shipped_base_tokenizer_has_one_token_per_word(base_pipe):
    tok = base_pipe.tokenizer
    assert all(len(tok(w, add_special_tokens=False).input_ids) == 1 for w in VOCABULARY)


def test_shipped_base_latents_are_unit_scaled(base_pipe):
    from spin_diffusion.toy.render import render
    from spin_diffusion.toy.world import parse_prompt, sample_spec

    rng = np.random.default_rng(0)
    imgs = [render(sample_spec(rng), 32, "web", rng) for _ in range(32)]
    x = torch.from_numpy(np.stack([np.asarray(i) for i in imgs])).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.inference_mode():
        z = base_pipe.vae.encode(x).latent_dist.sample() * base_pipe.vae.config.scaling_factor
    assert 0.7 < z.std().item() < 1.4
    assert parse_prompt("a red circle")  # grammar import sanity


def test_shipped_base_samples_deterministically_through_the_project_loader():
    from spin_diffusion.model.loading import load_pipeline

    pipe = load_pipeline(base_model_path())
    pipe.set_progress_bar_config(disable=True)
    prompts = ["a large red square in the center", "a blue circle in the top left"]

    def sample(seed: int) -> np.ndarray:
        gens = [torch.Generator().manual_seed(seed + i) for i in range(2)]
        out = pipe(prompts, height=32, width=32, num_inference_steps=8, generator=gens, output_type="np")
        return out.images

    a, b, c = sample(0), sample(0), sample(1)
    assert a.shape == (2, 32, 32, 3) and np.isfinite(a).all()
    assert np.array_equal(a, b) and not np.array_equal(a, c)


@pytest.mark.slow
def test_pretrain_smoke_writes_a_loadable_pipeline(tmp_path):
    from diffusers import StableDiffusionPipeline

    from spin_diffusion.toy.pretrain import PretrainConfig, pretrain

    cfg = PretrainConfig(n_images=32, vae_curated_images=8, vae_steps=3, decoder_steps=2, vae_batch_size=4, unet_steps=3, unet_batch_size=4,
                         warmup_steps=1, snapshot_every=2)  # fmt: skip
    records = []
    pretrain(cfg, tmp_path / "base", log=records.append)
    stages = [r["stage"] for r in records]
    assert stages[0] == "data" and "vae_done" in stages and "snapshot" in stages and stages[-1] == "done"
    assert "decoder_done" in stages
    vae_done = next(r for r in records if r["stage"] == "vae_done")
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "base")
    assert pipe.vae.config.scaling_factor == pytest.approx(vae_done["scaling_factor"])
    assert (tmp_path / "base.step-2" / "model_index.json").is_file()
    summary = json.loads((tmp_path / "base" / "pretrain_summary.json").read_text())
    assert summary["config"]["n_images"] == 32
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base", "base.step-2"]  # no temp dirs left


def test_pretrain_config_rejects_unknown_and_bad_fields(tmp_path):
    from spin_diffusion.cli.main import main

    bad = tmp_path / "cfg.yaml"
    bad.write_text("unet_steps: 0\n")
    assert main(["toy", "pretrain", str(tmp_path / "out"), "--config", str(bad)]) == 2
    bad.write_text("unet_stepz: 10\n")
    assert main(["toy", "pretrain", str(tmp_path / "out"), "--config", str(bad)]) == 2
    assert not (tmp_path / "out").exists()
