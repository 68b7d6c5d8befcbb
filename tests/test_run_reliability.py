"""Run-directory honesty: a no-op start leaves config.yaml alone, checkpoints are never resumed on
other samples, an infinite gradient stops the run, and run-wide steps never overlap."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import pytest
import yaml

from spin_diffusion.cli.main import main
from spin_diffusion.config.run import validate_config
from spin_diffusion.errors import CheckpointError
from spin_diffusion.selfplay.driver import run
from spin_diffusion.selfplay.tracking import global_step_offset
from spin_diffusion.training.trainer import Trainer, TrainingInterrupted
from tiny_runs import colour_squares


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return colour_squares(tmp_path_factory.mktemp("reliability") / "d", ["red", "blue", "green"])


def _raw(tmp_path: Path, pipeline: Path, data: Path, **training) -> dict:
    return {
        "name": "t",
        "output_dir": str(tmp_path / "runs"),
        "method": "spin",
        "model": {"pretrained": str(pipeline)},
        "data": {"source": "imagefolder", "path": str(data), "resolution": 16},
        "sampling": {"num_inference_steps": 2, "guidance_scale": 2.0, "batch_size": 4, "num_previews": 0},
        "training": {"max_steps": 1, "batch_size": 3, "learning_rate": 1e-3, "trackers": [],
                     "validation_prompts": 0, "checkpointing_steps": 1, **training},
        "iterations": [{"beta": 500}],
    }  # fmt: skip


def _write(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_a_finished_run_keeps_its_config_when_a_start_has_nothing_to_train(
    tmp_path: Path, tiny_pipeline_dir: Path, data: Path
) -> None:
    config = _write(tmp_path, _raw(tmp_path, tiny_pipeline_dir, data))
    assert main(["train", str(config)]) == 0
    saved = (tmp_path / "runs" / "t" / "config.yaml").read_bytes()
    argv = [
        "train",
        str(config),
        "--set",
        "training.learning_rate=3e-3",
        "--set",
        "iterations.0.max_steps=50",
    ]
    assert main(argv) == 0
    assert (tmp_path / "runs" / "t" / "config.yaml").read_bytes() == saved


def _interrupt_at(monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    original = Trainer.train_step

    def train_step(trainer: Trainer):
        out = original(trainer)
        if out is not None and trainer.step == step:
            os.kill(os.getpid(), signal.SIGINT)
        return out

    monkeypatch.setattr(Trainer, "train_step", train_step)


def test_checkpoints_are_not_resumed_on_samples_made_with_other_settings(
    tmp_path: Path, tiny_pipeline_dir: Path, data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = _raw(tmp_path, tiny_pipeline_dir, data, max_steps=3)
    with monkeypatch.context() as m:
        _interrupt_at(m, 1)
        with pytest.raises(TrainingInterrupted):
            run(validate_config(raw), show_progress=False)
    iter_dir = tmp_path / "runs" / "t" / "iter-1"
    raw["sampling"]["num_inference_steps"] = 3
    with pytest.raises(CheckpointError, match="checkpoints"):  # the advice names the checkpoints too
        run(validate_config(raw), show_progress=False)
    shutil.rmtree(iter_dir / "samples")  # following only half of it
    with pytest.raises(CheckpointError, match="sampling.num_inference_steps.*delete .*checkpoints"):
        run(validate_config(raw), show_progress=False)
    shutil.rmtree(iter_dir / "checkpoints")
    run(validate_config(raw), show_progress=False)
    summary = json.loads((iter_dir / "iteration.json").read_text())
    assert summary["sampler"]["num_inference_steps"] == 3 and summary["resumed_from"] is None


def test_an_infinite_gradient_norm_stops_the_run_naming_beta(
    tmp_path: Path, tiny_pipeline_dir: Path, data: Path, capsys
) -> None:
    raw = _raw(tmp_path, tiny_pipeline_dir, data)
    raw["iterations"] = [{"beta": 1e30}]
    assert main(["train", str(_write(tmp_path, raw))]) != 0
    err = capsys.readouterr().err
    assert "gradient norm became inf" in err and "beta" in err, err
    assert not (tmp_path / "runs" / "t" / "iter-1" / "iteration.json").exists()


def test_run_wide_steps_count_the_steps_a_finished_iteration_ran(tmp_path: Path) -> None:
    raw = {"name": "t", "output_dir": str(tmp_path), "model": {"pretrained": "m"},
           "data": {"source": "imagefolder", "path": "d", "resolution": 16},
           "training": {"max_steps": 2}, "iterations": [{}, {}, {}]}  # fmt: skip
    cfg = validate_config(raw)
    (tmp_path / "t" / "iter-1").mkdir(parents=True)
    # max_steps was lowered to 2 after a checkpoint at step 5: iteration 1 stopped at step 5
    (tmp_path / "t" / "iter-1" / "iteration.json").write_text(json.dumps({"steps": 5}))
    assert global_step_offset(cfg, 2) == 5
    assert global_step_offset(cfg, 3) == 7
