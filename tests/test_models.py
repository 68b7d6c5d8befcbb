"""Model I/O on a tiny pipeline built from configs: load, errors, LoRA/full save loaded by plain diffusers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from spin_diffusion.errors import CheckpointError, ConfigError
from spin_diffusion.model.families import Conditioning
from spin_diffusion.model.loading import check_same_architecture, load_pipeline, load_trained_into
from spin_diffusion.model.lora import LoraSettings, adapters_disabled, add_lora, check_lora_targets
from spin_diffusion.model.prediction import prediction_error, training_scheduler
from spin_diffusion.model.saving import save_full_pipeline, save_trained_unet
from spin_diffusion.model.weights import fingerprint_module, frozen_copy


def _sample(pipe, seed: int = 0) -> torch.Tensor:
    out = pipe(
        ["a red circle", "a blue square"],
        num_inference_steps=3,
        guidance_scale=2.0,
        generator=[torch.Generator().manual_seed(seed + i) for i in range(2)],
        output_type="np",
    )
    return torch.from_numpy(out.images)


def _train_steps(unet, pipe, steps: int = 3, lr: float = 1e-2) -> None:
    sched = training_scheduler(pipe)
    opt = torch.optim.AdamW([p for p in unet.parameters() if p.requires_grad], lr=lr)
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 4, 8, 8, generator=gen)
    emb = Conditioning(torch.randn(2, 8, 16, generator=gen))
    for _ in range(steps):
        t = torch.randint(0, 1000, (2,), generator=gen)
        eps = torch.randn(x0.shape, generator=gen)
        loss = prediction_error(unet, sched, x0, emb, t, eps).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()


def test_tiny_pipeline_round_trips_through_loader(tiny_pipeline_dir: Path) -> None:
    pipe = load_pipeline(tiny_pipeline_dir)
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    images = _sample(pipe)
    assert images.shape == (2, 16, 16, 3) and torch.isfinite(images).all()
    # same seeds -> same images
    torch.testing.assert_close(images, _sample(pipe))


def test_load_errors_are_one_line_and_actionable(tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_pipeline(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no model_index.json"):
        load_pipeline(tmp_path / "empty")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="offline") as info:
        load_pipeline("nobody-here/no-such-model")
    assert "\n" not in str(info.value)


def test_prediction_error_uses_scheduler_target(tiny_pipeline_dir: Path, tiny_vpred_dir: Path) -> None:
    for path, kind in ((tiny_pipeline_dir, "epsilon"), (tiny_vpred_dir, "v_prediction")):
        pipe = load_pipeline(path)
        sched = training_scheduler(pipe)
        assert sched.config.prediction_type == kind
        gen = torch.Generator().manual_seed(0)
        x0, eps = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 4, 8, 8, generator=gen)
        emb = Conditioning(torch.randn(2, 8, 16, generator=gen))
        t = torch.tensor([10, 900])
        err = prediction_error(pipe.unet, sched, x0, emb, t, eps)
        abar = sched.alphas_cumprod[t].view(-1, 1, 1, 1)
        noisy = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
        target = eps if kind == "epsilon" else abar.sqrt() * eps - (1 - abar).sqrt() * x0
        pred = pipe.unet(noisy, t, emb.hidden_states).sample
        torch.testing.assert_close(err, ((pred - target) ** 2).mean(dim=(1, 2, 3)), rtol=1e-4, atol=1e-6)


def test_lora_output_loads_in_plain_diffusers(tiny_pipeline_dir: Path, tmp_path: Path) -> None:
    from diffusers import StableDiffusionPipeline

    pipe = load_pipeline(tiny_pipeline_dir)
    base_images = _sample(pipe)
    unet = pipe.unet
    add_lora(unet, LoraSettings(rank=2, alpha=2.0))
    trainable = [n for n, p in unet.named_parameters() if p.requires_grad]
    assert trainable and all("lora" in n for n in trainable)
    _train_steps(unet, pipe, lr=5e-2)
    out = save_trained_unet(unet, tmp_path / "model")
    assert (out / "pytorch_lora_weights.safetensors").is_file()

    plain = StableDiffusionPipeline.from_pretrained(str(tiny_pipeline_dir), safety_checker=None)
    plain.load_lora_weights(str(out), weight_name="pytorch_lora_weights.safetensors")
    lora_images = _sample(plain)
    assert torch.isfinite(lora_images).all()
    assert (lora_images - base_images).abs().max() > 1e-4
    # the reference (adapters disabled) is still the base network
    plain_base = StableDiffusionPipeline.from_pretrained(str(tiny_pipeline_dir), safety_checker=None)
    x = torch.randn(1, 4, 8, 8)
    emb = torch.randn(1, 8, 16)
    with torch.no_grad(), adapters_disabled(unet):
        ref_out = unet(x, torch.tensor([5]), emb).sample
    with torch.no_grad():
        base_out = plain_base.unet(x, torch.tensor([5]), emb).sample
    torch.testing.assert_close(ref_out, base_out)


def test_full_finetune_output_loads_in_plain_diffusers(tiny_pipeline_dir: Path, tmp_path: Path) -> None:
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    pipe = load_pipeline(tiny_pipeline_dir)
    reference = frozen_copy(pipe.unet)
    assert not any(p.requires_grad for p in reference.parameters()) and not reference.training
    pipe.unet.requires_grad_(True)
    _train_steps(pipe.unet, pipe)
    out = save_trained_unet(pipe.unet, tmp_path / "model")
    unet = UNet2DConditionModel.from_pretrained(str(out / "unet"))
    assert fingerprint_module(unet) == fingerprint_module(pipe.unet) != fingerprint_module(reference)
    plain = StableDiffusionPipeline.from_pretrained(str(tiny_pipeline_dir), unet=unet, safety_checker=None)
    assert torch.isfinite(_sample(plain)).all()
    # our own loader applies it too, and a full pipeline save is loadable as a whole
    fresh = load_pipeline(tiny_pipeline_dir)
    load_trained_into(fresh, out)
    assert fingerprint_module(fresh.unet) == fingerprint_module(unet)
    full = save_full_pipeline(fresh, fresh.unet, tmp_path / "full")
    assert fingerprint_module(load_pipeline(full).unet) == fingerprint_module(unet)


def test_checkpoint_from_another_model_is_refused(tiny_pipeline_dir: Path, tmp_path: Path) -> None:
    from spin_diffusion.model.tiny import TinyPipelineSpec, build_tiny_pipeline

    other = build_tiny_pipeline(TinyPipelineSpec(image_size=16, vae_channels=(8, 16), unet_channels=(8, 16)))
    other.unet.save_pretrained(str(tmp_path / "model" / "unet"))
    pipe = load_pipeline(tiny_pipeline_dir)
    with pytest.raises(CheckpointError, match="does not match"):
        load_trained_into(pipe, tmp_path / "model")
    with pytest.raises(CheckpointError, match="does not match"):
        check_same_architecture(pipe.unet, other.unet, "x")
    with pytest.raises(CheckpointError, match="neither"):
        load_trained_into(pipe, tmp_path)


def test_atomic_save_leaves_nothing_on_failure(tiny_pipeline_dir: Path, tmp_path: Path, monkeypatch) -> None:
    pipe = load_pipeline(tiny_pipeline_dir)

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(type(pipe.unet), "save_pretrained", boom)
    with pytest.raises(RuntimeError):
        save_trained_unet(pipe.unet, tmp_path / "model")
    assert list(tmp_path.iterdir()) == []


def test_saved_tokenizer_is_word_level(tiny_pipeline_dir: Path) -> None:
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(tiny_pipeline_dir / "tokenizer"))
    ids = tok("a red circle on the left").input_ids
    assert len(ids) == 2 + 6  # bos + one token per word + eos
    assert (
        json.loads((tiny_pipeline_dir / "model_index.json").read_text())["_class_name"]
        == "StableDiffusionPipeline"
    )


def test_merge_lora_gives_a_plain_unet_with_the_same_output(tiny_pipeline_dir: Path) -> None:
    import copy

    from spin_diffusion.model.lora import merge_lora

    unet = load_pipeline(tiny_pipeline_dir).unet
    base_keys = set(unet.state_dict())
    add_lora(unet, LoraSettings(rank=2, alpha=2.0))
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.05, generator=torch.Generator().manual_seed(0))
    x, emb, t = torch.randn(1, 4, 8, 8), torch.randn(1, 8, 16), torch.tensor([3])
    with torch.no_grad():
        expected = unet(x, t, emb).sample
        merged = merge_lora(copy.deepcopy(unet))
        torch.testing.assert_close(merged(x, t, emb).sample, expected, atol=1e-5, rtol=1e-5)
    assert set(merged.state_dict()) == base_keys  # loads into a plain UNet2DConditionModel


def test_word_tokenizer_gives_one_token_per_word_even_when_words_overlap() -> None:
    from spin_diffusion.model.tiny import build_word_tokenizer
    from spin_diffusion.toy.world import VOCABULARY

    # "and" / "triangle", "or" / "orange", "a" / "an": merges of one word occur inside others
    words = [*VOCABULARY, "and", "an", "or", "angle", "tri"]
    tok = build_word_tokenizer(words, max_length=40)
    for w in words:
        assert len(tok(w, add_special_tokens=False).input_ids) == 1, w
    ids = tok("a purple triangle and an orange cross").input_ids
    assert len(ids) == 2 + 7


def test_lora_targets_that_match_no_layer_are_refused_before_peft(tiny_pipeline_dir: Path) -> None:
    unet = load_pipeline(tiny_pipeline_dir).unet
    check_lora_targets(unet, ["to_q", "to_k", "to_v", "to_out.0"])  # the defaults fit
    check_lora_targets(unet, ["attn1.to_q", "proj_in", "conv1"])  # longer suffixes and conv layers
    # "to_qq" is a typo, "attn1" is an attention block (not a layer peft can wrap)
    with pytest.raises(ConfigError, match=r"model\.lora\.target_modules: to_qq, attn1 match no") as info:
        check_lora_targets(unet, ["to_q", "to_qq", "attn1"])
    assert "\n" not in str(info.value) and "to_q," not in str(info.value).split("match no")[0]
    with pytest.raises(ConfigError, match="model.lora.target_modules"):
        add_lora(unet, LoraSettings(rank=2, target_modules=("query", "key")))
    assert not getattr(unet, "peft_config", None)  # refused before anything was attached
    assert not any(p.requires_grad is False for p in unet.parameters())
