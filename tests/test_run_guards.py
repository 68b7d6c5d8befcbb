"""The run driver's guards: exact resume in every iteration, flat memory and checkpoints across
iterations, refusal of changed data, one writer per run directory, and no trace of a failed start."""

from __future__ import annotations

import gc
import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from spin_diffusion.cli.main import main
from spin_diffusion.config.run import validate_config
from spin_diffusion.errors import ConfigError
from spin_diffusion.selfplay.driver import run
from spin_diffusion.training.trainer import Trainer, TrainingInterrupted


@pytest.fixture()
def imagefolder(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    root.mkdir()
    rows = []
    rng = np.random.default_rng(0)
    for i in range(8):
        img = np.full((16, 16, 3), 255, np.uint8)
        y, x = rng.integers(0, 8, 2)
        img[y : y + 8, x : x + 8] = (220, 30, 30) if i % 2 else (30, 30, 220)
        Image.fromarray(img).save(root / f"{i}.png")
        rows.append(json.dumps({"file_name": f"{i}.png", "text": f"a {'red' if i % 2 else 'blue'} square"}))
    (root / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    return root


def _raw(tmp_path: Path, pipeline: Path, data: Path, name: str = "run", iterations: int = 3) -> dict:
    return {
        "name": name,
        "output_dir": str(tmp_path / "runs"),
        "method": "spin",
        "model": {"pretrained": str(pipeline)},
        "data": {"source": "imagefolder", "path": str(data), "resolution": 16},
        "sampling": {"num_inference_steps": 2, "guidance_scale": 2.0, "batch_size": 8, "num_previews": 0},
        "training": {
            "max_steps": 4,
            "batch_size": 4,
            "checkpointing_steps": 1,
            "checkpoints_total_limit": None,
            "keep_checkpoints": True,
            "learning_rate": 1e-3,
            "trackers": [],
        },
        "iterations": [{"beta": 500}] * iterations,
    }


class _Interrupt:
    """Sends this process SIGINT once, after optimizer step ``step`` of iteration ``iteration``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, iteration: int, step: int) -> None:
        self.target = (f"iter-{iteration}", step)
        self.fired = False
        original = Trainer.train_step

        def train_step(trainer: Trainer):
            out = original(trainer)
            if not self.fired and out is not None and (trainer.out_dir.name, trainer.step) == self.target:
                self.fired = True
                os.kill(os.getpid(), signal.SIGINT)
            return out

        monkeypatch.setattr(Trainer, "train_step", train_step)


def _unet_state(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "unet" / "diffusion_pytorch_model.safetensors"))


def _dir_bytes(path: Path) -> int:
    return sum(
        p.stat().st_size for p in path.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".bin")
    )


def _live_tensor_bytes() -> int:
    gc.collect()
    seen, total = set(), 0
    for obj in gc.get_objects():
        if torch.is_tensor(obj) and id(obj) not in seen and obj.device.type == "cpu":
            seen.add(id(obj))
            total += obj.numel() * obj.element_size()
    return total


def test_kill_and_resume_in_iterations_2_and_3_gives_the_uninterrupted_model(
    tmp_path: Path, tiny_pipeline_dir: Path, imagefolder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    memory: dict[str, int] = {}
    original_train = Trainer.train

    def train(trainer: Trainer):
        result = original_train(trainer)
        memory[trainer.out_dir.name] = _live_tensor_bytes()
        return result

    monkeypatch.setattr(Trainer, "train", train)
    straight = validate_config(_raw(tmp_path, tiny_pipeline_dir, imagefolder, "straight"))
    run(straight, show_progress=False)
    ref = straight.run_dir

    # peak memory and checkpoint size of iteration 3 equal those of iteration 1
    assert memory["iter-3"] < 1.05 * memory["iter-1"], memory
    ckpt = [_dir_bytes(ref / f"iter-{k}" / "checkpoints" / "step-4") for k in (1, 2, 3)]
    assert ckpt[0] > 0 and ckpt[2] == ckpt[0] and ckpt[1] == ckpt[0], ckpt

    rng = random.Random(0)  # a "random" step, fixed so the test is deterministic
    stops = [(2, rng.randint(1, 3)), (3, rng.randint(1, 3))]
    resumed = validate_config(_raw(tmp_path, tiny_pipeline_dir, imagefolder, "resumed"))
    for iteration, step in stops:
        with monkeypatch.context() as m:
            _Interrupt(m, iteration, step)
            with pytest.raises(TrainingInterrupted):
                run(resumed, show_progress=False)
        assert not (resumed.run_dir / f"iter-{iteration}" / "iteration.json").exists()
    run(resumed, show_progress=False)
    for k in (1, 2, 3):
        a, b = _unet_state(ref / f"iter-{k}" / "model"), _unet_state(resumed.run_dir / f"iter-{k}" / "model")
        assert all(torch.equal(a[key], b[key]) for key in a), f"iteration {k} differs after resume"
        summary = json.loads((resumed.run_dir / f"iter-{k}" / "iteration.json").read_text())
        assert summary["data_fingerprint"]
    log = [
        json.loads(line) for line in (resumed.run_dir / "iter-2" / "train_log.jsonl").read_text().splitlines()
    ]
    straight_log = [
        json.loads(line) for line in (ref / "iter-2" / "train_log.jsonl").read_text().splitlines()
    ]
    assert [r["loss"] for r in log] == [r["loss"] for r in straight_log]


def test_changed_image_pixels_before_a_resume_are_refused(
    tmp_path: Path, tiny_pipeline_dir: Path, imagefolder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = validate_config(_raw(tmp_path, tiny_pipeline_dir, imagefolder, iterations=1))
    with monkeypatch.context() as m:
        _Interrupt(m, 1, 2)
        with pytest.raises(TrainingInterrupted):
            run(cfg, show_progress=False)
    manifest = (cfg.run_dir / "real_latents" / "manifest.json").read_text()
    img = np.asarray(Image.open(imagefolder / "3.png")).copy()
    img[0, 0] = (0, 0, 0)  # one pixel, same caption
    Image.fromarray(img).save(imagefolder / "3.png")
    os.utime(imagefolder / "3.png", (1, 1))
    with pytest.raises(ConfigError, match="data under data.path changed"):
        run(cfg, show_progress=False)
    assert (cfg.run_dir / "real_latents" / "manifest.json").read_text() == manifest  # nothing rebuilt
    fresh = validate_config(_raw(tmp_path, tiny_pipeline_dir, imagefolder, name="fresh", iterations=1))
    assert run(fresh, show_progress=False)["iterations"]  # a new run on the new data is fine


def _write(tmp_path: Path, raw: dict) -> Path:
    import yaml

    path = tmp_path / f"{raw['name']}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_a_second_train_on_a_locked_run_directory_is_refused_and_a_stale_lock_is_not(
    tmp_path: Path, tiny_pipeline_dir: Path, imagefolder: Path, capsys
) -> None:
    raw = _raw(tmp_path, tiny_pipeline_dir, imagefolder, iterations=1)
    raw["training"]["max_steps"] = 1
    cfg_path = _write(tmp_path, raw)
    run_dir = tmp_path / "runs" / "run"
    run_dir.mkdir(parents=True)
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
         "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, str(os.getpid()).encode()); print('locked', flush=True); "
         "time.sleep(120)", str(run_dir / ".lock")],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main(["train", str(cfg_path)]) == 2
        err = capsys.readouterr().err
        assert "in use by another training process" in err and str(holder.pid) in err
        assert not (run_dir / "iter-1").exists()
    finally:
        holder.kill()
        holder.wait()
    assert (run_dir / ".lock").is_file()  # left behind by the dead holder: stale, not an obstacle
    assert main(["train", str(cfg_path)]) == 0
    assert "results" in capsys.readouterr().out  # train ends with one line naming the results file


def test_a_failed_start_writes_nothing_into_the_run_directory(
    tmp_path: Path, tiny_pipeline_dir: Path, imagefolder: Path, capsys
) -> None:
    raw = _raw(tmp_path, tiny_pipeline_dir, imagefolder, iterations=1)
    raw["training"]["max_steps"] = 1
    run_dir = tmp_path / "runs" / "run"
    for broken in ({"model": {"pretrained": str(tmp_path / "no-such-model")}},
                   {"data": {**raw["data"], "path": str(tmp_path / "no-such-data")}}):  # fmt: skip
        assert main(["train", str(_write(tmp_path, {**raw, **broken}))]) == 2
        assert "error:" in capsys.readouterr().err
        assert not run_dir.exists()
    assert main(["train", str(_write(tmp_path, raw))]) == 0  # the corrected config is not "a different run"


def test_a_global_batch_that_does_not_fit_is_refused_before_any_work(
    tmp_path: Path, tiny_pipeline_dir: Path, imagefolder: Path
) -> None:
    raw = _raw(tmp_path, tiny_pipeline_dir, imagefolder, iterations=2)
    raw["training"]["global_batch_size"] = 12
    raw["iterations"] = [{"beta": 500}, {"beta": 500}]
    raw["training"]["batch_size"] = 4
    cfg = validate_config(raw)
    cfg = cfg.model_copy(update={"training": cfg.training.model_copy(update={"batch_size": 5})})
    with pytest.raises(ConfigError, match="global_batch_size"):
        run(cfg, show_progress=False)
    assert not cfg.run_dir.exists()
