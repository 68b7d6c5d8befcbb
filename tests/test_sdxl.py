"""SDXL end to end: the conditioning seam against diffusers' own encode_prompt, the cached sizes in
add_time_ids, every method on a tiny SDXL pipeline, and a clear refusal of unsupported pipelines."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from family_runs import (
    SIZES,
    check_dpo_precomputed,
    check_resume_after_interruption,
    check_sft_lora,
    check_spin_two_iterations,
    fresh_accelerator_state,  # noqa: F401 - autouse: a fresh accelerate state per run
    make_imagefolder,
)
from spin_diffusion.cli.main import main
from spin_diffusion.errors import CheckpointError
from spin_diffusion.model.families import FAMILIES, SDXL, family_of_directory, prompt_encoder
from spin_diffusion.model.loading import load_pipeline
from spin_diffusion.model.prediction import prediction_error, training_scheduler

CAPTIONS = ["a red circle", "a blue square on the left", ""]


@pytest.fixture(scope="module")
def xl(tiny_sdxl_dir: Path):
    return load_pipeline(tiny_sdxl_dir)


@pytest.fixture()
def xl_class():
    from diffusers import StableDiffusionXLPipeline

    return StableDiffusionXLPipeline


def test_the_tiny_sdxl_loads_through_the_same_loader_as_a_real_one(tiny_sdxl_dir: Path, xl) -> None:
    index = json.loads((tiny_sdxl_dir / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLPipeline"
    assert {"text_encoder", "text_encoder_2", "tokenizer_2"} <= set(index)
    assert type(xl).__name__ == "StableDiffusionXLPipeline"
    assert xl.unet.config.addition_embed_type == "text_time"
    assert type(xl.text_encoder_2).__name__ == "CLIPTextModelWithProjection"
    assert family_of_directory(tiny_sdxl_dir) is SDXL


def test_conditioning_equals_the_pipelines_encode_prompt(xl) -> None:
    cond = prompt_encoder(xl).encode(CAPTIONS[:2], latent_hw=(8, 8))
    embeds, _, pooled, _ = xl.encode_prompt(CAPTIONS[:2], do_classifier_free_guidance=False)
    assert cond.hidden_states.shape[-1] == xl.text_encoder.config.hidden_size * 2  # both encoders
    assert torch.equal(cond.hidden_states, embeds)
    assert torch.equal(cond.text_embeds, pooled)


def test_an_empty_caption_is_the_unconditional_input_guidance_samples_with(xl) -> None:
    """Caption dropout trains the branch CFG uses: zeros, as force_zeros_for_empty_prompt says."""
    assert xl.config.force_zeros_for_empty_prompt
    cond = prompt_encoder(xl).encode(CAPTIONS, latent_hw=(8, 8))
    _, negative, _, negative_pooled = xl.encode_prompt(CAPTIONS[:1], do_classifier_free_guidance=True)
    assert torch.equal(cond.hidden_states[2:], negative) and torch.equal(
        cond.text_embeds[2:], negative_pooled
    )
    assert cond.hidden_states[:2].abs().sum() > 0  # the other captions are not zeroed


def test_time_ids_are_the_pipelines_for_the_same_sizes(xl) -> None:
    sizes = [(40, 24, 4, 0, 16, 16), (16, 32, 0, 9, 16, 16), None]
    cond = prompt_encoder(xl).encode(CAPTIONS, sizes, latent_hw=(8, 8))
    proj = xl.text_encoder_2.config.projection_dim
    for row, size in zip(cond.time_ids, sizes, strict=True):
        original, crop, target = (size[:2], size[2:4], size[4:]) if size else ((16, 16), (0, 0), (16, 16))
        expected = xl._get_add_time_ids(
            original, crop, target, torch.float32, text_encoder_projection_dim=proj
        )
        assert torch.equal(row[None], expected)


def test_add_time_ids_carry_the_cached_original_sizes_and_crops(tmp_path: Path, xl) -> None:
    from spin_diffusion.config.data import DataConfig
    from spin_diffusion.data.latents import ensure_latent_cache
    from spin_diffusion.data.transforms import ImageTransform
    from spin_diffusion.selfplay.training_data import RealData, SelfPlayTrajectoryData
    from spin_diffusion.training.batches import batch_conditioning, make_batch

    root = make_imagefolder(tmp_path / "data")
    cfg = DataConfig(source="imagefolder", path=str(root), resolution=16, center_crop=False, random_flip=True)
    cache = ensure_latent_cache(cfg, xl.vae, tmp_path / "cache", show_progress=False)
    transform = ImageTransform(cfg)
    from PIL import Image

    by_id = {}
    for i, ex_id in enumerate(cache.ids):
        with Image.open(root / f"{ex_id.split('/')[-1].split('.')[0]}.png") as img:
            w, h = img.size
            expected = transform.size_cond(img, ex_id)
            mirrored = transform.size_cond(img, ex_id, flip=True)
        size = cache.size_cond(i)
        assert size == expected and size[:2] == (h, w) and size[4:] == (16, 16)
        assert (w, h) in SIZES
        flipped = cache.size_cond(i, flip=True)
        assert flipped == mirrored and flipped[3] == round(w * 16 / min(w, h)) - size[3] - 16
        by_id[i] = (size, flipped)
    assert len({s[:4] for s, _ in by_id.values()}) > 1  # the sizes really differ per example

    data = RealData(cache, flip=True)
    batch = make_batch(data, [(i, 0) for i in range(len(cache))], seed=0, num_train_timesteps=1000)
    cond = batch_conditioning(prompt_encoder(xl), batch)
    for i, row in enumerate(cond.time_ids):
        assert tuple(int(v) for v in row) in by_id[i]  # the flipped or unflipped crop of this example
    assert [tuple(int(v) for v in r) for r in cond.time_ids] == batch.size_cond_a
    # spin-exact's data gives its real member the same sizes (the flip is drawn first in both)
    trajectories = SimpleNamespace(
        schedule=SimpleNamespace(num_steps=2), trajectory=lambda ex_id: torch.zeros(1, 3, 4, 2, 2)
    )
    exact = make_batch(
        SelfPlayTrajectoryData(cache, flip=True, samples=trajectories),
        [(i, 0) for i in range(len(cache))],
        seed=0,
        num_train_timesteps=1000,
    )
    assert exact.size_cond_a == batch.size_cond_a and exact.size_cond_b == [None] * len(cache)

    # the UNet sees them: the same batch at the default (uncropped) sizes gives other errors
    sched = training_scheduler(xl)
    lat, t, eps = batch.latents_a, batch.timesteps, batch.noise
    uncropped = prompt_encoder(xl).encode(batch.captions, latent_hw=tuple(lat.shape[-2:]))
    with torch.no_grad():
        assert not torch.allclose(
            prediction_error(xl.unet, sched, lat, cond, t, eps),
            prediction_error(xl.unet, sched, lat, uncropped, t, eps),
        )


def test_pairs_keep_each_members_own_time_ids(xl) -> None:
    enc = prompt_encoder(xl)
    a, b = [(20, 30, 2, 3, 16, 16)] * 2, [None, (16, 16, 0, 0, 16, 16)]
    pair = enc.encode(CAPTIONS[:2], a, latent_hw=(8, 8), pair_sizes=b).pair()
    assert pair.hidden_states.shape[0] == 4 and torch.equal(pair.text_embeds[:2], pair.text_embeds[2:])
    assert pair.time_ids.tolist() == [list(map(float, s)) for s in a] + [[16.0, 16.0, 0, 0, 16, 16]] * 2


def test_an_unsupported_pipeline_class_is_refused_naming_what_is_supported(tmp_path: Path, capsys) -> None:
    sd3 = tmp_path / "qwen"  # a pipeline class no family covers
    sd3.mkdir()
    (sd3 / "model_index.json").write_text(
        json.dumps(
            {"_class_name": "QwenImagePipeline", "transformer": ["diffusers", "QwenImageTransformer2DModel"]}
        )
    )
    with pytest.raises(CheckpointError) as err:
        load_pipeline(sd3)
    msg = str(err.value)
    assert "QwenImagePipeline" in msg and all(name in msg for name in FAMILIES)
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        json.dumps(
            {
                "name": "r",
                "output_dir": str(tmp_path / "runs"),
                "model": {"pretrained": str(sd3)},
                "data": {
                    "source": "imagefolder",
                    "path": str(make_imagefolder(tmp_path / "d")),
                    "resolution": 16,
                },
            }
        )
    )
    assert main(["train", str(cfg)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("error: ") and "supported: StableDiffusionPipeline" in lines[-1]
    assert not (tmp_path / "runs" / "r").exists()  # refused before anything was written


def test_spin_two_iterations(tmp_path: Path, tiny_sdxl_dir: Path, xl_class, monkeypatch) -> None:
    check_spin_two_iterations(tmp_path, tiny_sdxl_dir, xl_class, monkeypatch)  # and evaluation


def test_sft_lora_in_bf16_mixed_precision(tmp_path: Path, tiny_sdxl_dir: Path, xl_class) -> None:
    check_sft_lora(tmp_path, tiny_sdxl_dir, xl_class, mixed_precision="bf16")


def test_dpo_with_precomputed_reference(tmp_path: Path, tiny_sdxl_dir: Path, xl_class) -> None:
    check_dpo_precomputed(tmp_path, tiny_sdxl_dir, xl_class)


def test_resume_after_an_interruption(tmp_path: Path, tiny_sdxl_dir: Path, monkeypatch) -> None:
    check_resume_after_interruption(tmp_path, tiny_sdxl_dir, monkeypatch)


def test_the_sdxl_configs_default_to_lora_and_state_diffusion_dpos_beta_on_our_scale() -> None:
    from spin_diffusion.config.run import load_config

    repo = Path(__file__).resolve().parents[1]
    dpo, spin = (
        load_config(repo / "configs" / "sdxl-dpo.yaml"),
        load_config(repo / "configs" / "sdxl-spin.yaml"),
    )
    assert dpo.model.lora.enabled and spin.model.lora.enabled
    assert dpo.training_for(1).beta == 5000 / 2  # official beta_dpo 5000 times its factor 1/2
    assert dpo.training.learning_rate == pytest.approx(1e-8 * 2048)  # --scale_lr over 2048 pairs
    assert dpo.data.resolution == spin.data.resolution == 1024
