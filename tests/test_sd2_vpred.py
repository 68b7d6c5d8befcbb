"""A tiny SD-2.x-shaped pipeline (v-prediction, linear projections) through every method end to end."""

from __future__ import annotations

from pathlib import Path

import pytest

from family_runs import (
    check_dpo_precomputed,
    check_resume_after_interruption,
    check_sft_lora,
    check_spin_two_iterations,
    fresh_accelerator_state,  # noqa: F401 - autouse: a fresh accelerate state per run
)


@pytest.fixture()
def sd_class():
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline


def test_the_tiny_sd2_is_a_v_prediction_stable_diffusion_pipeline(tiny_sd2_dir: Path) -> None:
    from spin_diffusion.model.families import SD, prompt_encoder
    from spin_diffusion.model.loading import load_pipeline
    from spin_diffusion.model.prediction import training_scheduler

    pipe = load_pipeline(tiny_sd2_dir)
    assert training_scheduler(pipe).config.prediction_type == "v_prediction"
    assert pipe.unet.config.use_linear_projection
    assert type(prompt_encoder(pipe)) is SD.encoder


def test_spin_two_iterations(tmp_path: Path, tiny_sd2_dir: Path, sd_class, monkeypatch) -> None:
    check_spin_two_iterations(tmp_path, tiny_sd2_dir, sd_class, monkeypatch, evaluate=False)


def test_sft_lora(tmp_path: Path, tiny_sd2_dir: Path, sd_class) -> None:
    check_sft_lora(tmp_path, tiny_sd2_dir, sd_class)


def test_dpo_with_precomputed_reference(tmp_path: Path, tiny_sd2_dir: Path, sd_class) -> None:
    check_dpo_precomputed(tmp_path, tiny_sd2_dir, sd_class)


def test_resume_after_an_interruption(tmp_path: Path, tiny_sd2_dir: Path, monkeypatch) -> None:
    check_resume_after_interruption(tmp_path, tiny_sd2_dir, monkeypatch)
