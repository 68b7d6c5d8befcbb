"""Trackers and precision: one run-wide step, validation images, the resolved config, accelerate's precision."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from spin_diffusion.cli.main import main
from tiny_runs import colour_squares, tiny_spin_config


@pytest.fixture(scope="module")
def imagefolder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return colour_squares(tmp_path_factory.mktemp("imagefolder"), ["red", "blue", "green", "red"])


def _config(tmp_path: Path, pipeline: Path, data: Path, **training) -> Path:
    return tiny_spin_config(
        tmp_path,
        pipeline,
        data,
        training={"max_steps": 2, "batch_size": 2, "checkpointing_steps": 10, **training},
        iterations=[{"beta": 2000}, {"beta": 5000, "max_steps": 1}],
    )


def _events(run: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted((run / "logs").rglob("events.out.tfevents.*"))
    assert files, f"no event file under {run / 'logs'}"
    scalars, images, texts = {}, {}, {}
    for f in files:  # hparams are written by a second writer into a subdirectory
        acc = EventAccumulator(str(f), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars[tag] = [e.step for e in acc.Scalars(tag)]
        for tag in acc.Tags()["images"]:
            images[tag] = acc.Images(tag)
        for tag in acc.Tags()["tensors"]:
            texts[tag] = acc.Tensors(tag)
    return scalars, images, texts


def test_tensorboard_gets_run_wide_steps_validation_images_and_the_config(
    tmp_path: Path, tiny_pipeline_dir: Path, imagefolder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = _config(
        tmp_path,
        tiny_pipeline_dir,
        imagefolder,
        trackers=["tensorboard"],
        validation_prompts=2,
        validation_every=1,
    )
    with caplog.at_level(logging.INFO, logger="spin_diffusion"):
        assert main(["train", str(cfg)]) == 0
    run = tmp_path / "runs" / "run"
    scalars, images, texts = _events(run)
    # iteration 1 has steps 1-2, iteration 2 continues at 3: one curve that never goes backwards
    assert scalars["train/loss"] == [1, 2, 3]
    # every step (validation_every=1) and the end of each iteration; 2 prompts -> 2 images per event
    shots = images["validation"]
    assert sorted({e.step for e in shots}) == [1, 2, 3]
    first = Image.open(io.BytesIO(shots[0].encoded_image_string))
    assert first.size == (2 * 16, 16)  # tensorboard tiles the two 16x16 images side by side
    assert any(tag.startswith("validation/prompts") for tag in texts)
    # the resolved config went to init_trackers (hparams.yml next to the hparams event file)
    hparams = yaml.safe_load(next((run / "logs").rglob("hparams.yml")).read_text())
    assert hparams["training.beta"] == 2000.0 and hparams["training.mixed_precision"] == "no"
    assert json.loads(hparams["iterations"])[1]["max_steps"] == 1
    summary = [r.getMessage() for r in caplog.records if "optimizer steps" in r.getMessage()]
    assert len(summary) == 1 and "4 examples" in summary[0] and "2/1 optimizer steps" in summary[0]
    assert "mixed precision no" in summary[0] and "global batch 2" in summary[0]


def test_validation_images_are_the_same_prompts_and_seeds_every_time(
    tiny_pipeline_dir: Path,
) -> None:
    from spin_diffusion.config.sampling import SamplingConfig
    from spin_diffusion.model.loading import load_pipeline
    from spin_diffusion.selfplay.validation_images import (
        ValidationSet,
        generate_validation_images,
        validation_prompts,
    )

    assert validation_prompts(["a", "b", "a", " ", "c"], 3) == ["a", "b", "c"]
    pipe = load_pipeline(tiny_pipeline_dir)
    vset = ValidationSet(["a red square", "a blue circle"], 7, SamplingConfig(num_inference_steps=2))
    scheduler = pipe.scheduler
    pipe.unet.train()
    one = generate_validation_images(pipe, pipe.unet, vset)
    two = generate_validation_images(pipe, pipe.unet, vset)
    assert pipe.scheduler is scheduler and pipe.unet.training  # the pipeline is left as it was
    assert [np.asarray(i).tolist() for i in one] == [np.asarray(i).tolist() for i in two]
    assert np.asarray(one[0]).tolist() != np.asarray(one[1]).tolist()


@pytest.fixture
def fresh_accelerate_state():
    """Accelerate keeps its precision in a process-wide singleton: start and leave it clean."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.mark.parametrize(("configured", "used"), [(None, "bf16"), ("no", "no")])
def test_unset_mixed_precision_follows_accelerate_and_is_recorded(
    tmp_path: Path,
    tiny_pipeline_dir: Path,
    imagefolder: Path,
    monkeypatch: pytest.MonkeyPatch,
    fresh_accelerate_state: None,
    configured: str | None,
    used: str,
) -> None:
    # what `accelerate launch --mixed_precision bf16` sets for the process it starts
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    extra = {} if configured is None else {"mixed_precision": configured}
    cfg = _config(tmp_path, tiny_pipeline_dir, imagefolder, trackers=[], validation_prompts=0, **extra)
    assert main(["train", str(cfg), "--set", "method=sft", "--set", "iterations=[{}]"]) == 0
    run = tmp_path / "runs" / "run"
    assert yaml.safe_load((run / "config.yaml").read_text())["training"]["mixed_precision"] == used
    assert json.loads((run / "iter-1" / "iteration.json").read_text())["training"]["mixed_precision"] == used
