"""Shared fixtures: a tiny SD pipeline built from configs, saved once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_configure(config: pytest.Config) -> None:
    """One intra-op thread: the tiny models run faster, and results do not depend on the core count."""
    import torch

    torch.set_num_threads(1)


WORDS = ["a", "red", "blue", "green", "circle", "square", "on", "the", "left", "right"]


def tiny_spec(prediction_type: str = "epsilon"):
    from spin_diffusion.model.tiny import TinyPipelineSpec

    return TinyPipelineSpec(
        words=WORDS,
        image_size=16,
        vae_channels=(8, 16),
        unet_channels=(16, 32),
        norm_num_groups=8,
        attention_head_dim=8,
        text_hidden_size=16,
        text_layers=1,
        max_length=8,
        prediction_type=prediction_type,
    )


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from spin_diffusion.model.tiny import build_tiny_pipeline

    path = tmp_path_factory.mktemp("tiny") / "pipeline"
    build_tiny_pipeline(tiny_spec(), seed=0).save_pretrained(str(path), safe_serialization=True)
    return path


@pytest.fixture(scope="session")
def tiny_vpred_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from spin_diffusion.model.tiny import build_tiny_pipeline

    path = tmp_path_factory.mktemp("tiny_v") / "pipeline"
    build_tiny_pipeline(tiny_spec("v_prediction"), seed=1).save_pretrained(str(path), safe_serialization=True)
    return path


@pytest.fixture(scope="session")
def tiny_sdxl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny StableDiffusionXLPipeline (two text encoders, text_time UNet), saved like a real one."""
    from dataclasses import replace

    from spin_diffusion.model.tiny import build_tiny_sdxl_pipeline

    path = tmp_path_factory.mktemp("tiny_xl") / "pipeline"
    spec = replace(tiny_spec(), linear_projection=True)
    build_tiny_sdxl_pipeline(spec, seed=2).save_pretrained(str(path), safe_serialization=True)
    return path


@pytest.fixture(scope="session")
def tiny_sd2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SD-2.x-shaped pipeline: v-prediction and linear transformer projections."""
    from dataclasses import replace

    from spin_diffusion.model.tiny import build_tiny_pipeline

    path = tmp_path_factory.mktemp("tiny_sd2") / "pipeline"
    spec = replace(tiny_spec("v_prediction"), linear_projection=True)
    build_tiny_pipeline(spec, seed=3).save_pretrained(str(path), safe_serialization=True)
    return path
