"""Checkpoints that survive kills, torn files and a full disk: verify, fall back, clean up, no repeated log lines."""

from __future__ import annotations

import errno
import json
import logging
from pathlib import Path

import pytest

from spin_diffusion.config.run import TrainingConfig
from spin_diffusion.errors import UserError
from spin_diffusion.model.families import prompt_encoder
from spin_diffusion.model.loading import load_pipeline
from spin_diffusion.model.prediction import training_scheduler
from spin_diffusion.model.weights import fingerprint_module, frozen_copy
from spin_diffusion.training.checkpoints import list_checkpoints
from spin_diffusion.training.reference import ModuleReference
from spin_diffusion.training.trainer import Trainer
from synthetic_pairs import SyntheticPairs

CAPTIONS = ["a red circle", "a blue square", "a green circle", "a red square"]


CFG = TrainingConfig(
    max_steps=4,
    batch_size=2,
    checkpointing_steps=2,
    checkpoints_total_limit=None,
    learning_rate=1e-3,
    lr_scheduler="constant",  # a shorter first run then follows the same schedule
    trackers=[],
)


@pytest.fixture(scope="module")
def pipe(tiny_pipeline_dir: Path):
    return load_pipeline(tiny_pipeline_dir)


def _trainer(pipe, out_dir: Path, cfg: TrainingConfig = CFG, unet=None, reference=None) -> Trainer:
    from accelerate import Accelerator

    sched = training_scheduler(pipe)
    if unet is None:
        unet = frozen_copy(pipe.unet)
        unet.requires_grad_(True)
    return Trainer(
        method="spin",
        cfg=cfg,
        accelerator=Accelerator(cpu=True),
        unet=unet,
        noise_scheduler=sched,
        prompts=prompt_encoder(pipe),
        data=SyntheticPairs(CAPTIONS),
        reference=reference or ModuleReference(frozen_copy(pipe.unet), sched),
        out_dir=out_dir,
        seed=5,
        show_progress=False,
    )


def _weights(trainer: Trainer) -> str:
    return fingerprint_module(trainer.acc.unwrap_model(trainer.unet))


def _log_steps(out_dir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out_dir / "train_log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def straight(pipe, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Weights after an uninterrupted 4-step run."""
    trainer = _trainer(pipe, tmp_path_factory.mktemp("straight"))
    trainer.train()
    return _weights(trainer)


def test_a_kill_during_a_save_does_not_repeat_log_lines(pipe, tmp_path: Path, straight: str) -> None:
    out = tmp_path / "run"
    _trainer(pipe, out).train()
    assert _log_steps(out) == [1, 2, 3, 4]
    # SIGKILL while step 4 was being saved: its line is logged, its checkpoint is still a temporary,
    # and the kill tore a line being appended
    ckpts = out / "checkpoints"
    (ckpts / "step-4").rename(ckpts / ".step-4.tmp")
    with open(out / "train_log.jsonl", "a") as f:
        f.write('{"step": 5, "lo')
    again = _trainer(pipe, out)
    result = again.train()
    assert result.resumed_from == 2
    assert _log_steps(out) == [1, 2, 3, 4]
    assert _weights(again) == straight
    assert not list(ckpts.glob(".step-*.tmp"))  # the stray temporary is gone


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    "damage",
    [
        lambda ckpt: _truncate(ckpt / "model.safetensors"),
        lambda ckpt: (ckpt / "train_state.json").write_text(""),
        lambda ckpt: _truncate(ckpt / "optimizer.bin"),
        lambda ckpt: (ckpt / "complete.json").unlink(),
    ],
    ids=["truncated-model", "empty-train-state", "truncated-optimizer", "no-marker"],
)
def test_a_damaged_latest_checkpoint_falls_back_to_the_newest_intact_one(
    pipe, tmp_path: Path, straight: str, caplog, damage
) -> None:
    out = tmp_path / "run"
    _trainer(pipe, out, CFG.model_copy(update={"max_steps": 3, "checkpointing_steps": 1})).train()
    ckpts = out / "checkpoints"
    assert [s for s, _ in list_checkpoints(ckpts)] == [1, 2, 3]
    assert (
        json.loads((ckpts / "step-3" / "complete.json").read_text())["files"]["model.safetensors"]["size"] > 0
    )
    damage(ckpts / "step-3")
    with caplog.at_level(logging.WARNING, logger="spin_diffusion.training.trainer"):
        again = _trainer(pipe, out)
        result = again.train()
    assert result.resumed_from == 2 and result.steps == 4
    lines = [r.getMessage() for r in caplog.records if "skipping checkpoint" in r.getMessage()]
    assert len(lines) == 1 and "step-3" in lines[0] and "resuming from step-2" in lines[0]
    assert _weights(again) == straight  # the run went on from step 2 exactly
    assert _log_steps(out) == [1, 2, 3, 4]
    assert (ckpts / ".step-3.damaged").is_dir()  # moved aside, not counted as a checkpoint
    assert [s for s, _ in list_checkpoints(ckpts)] == [1, 2, 4]


def _torch_write_failed() -> Exception:
    return RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")


@pytest.mark.parametrize(
    ("error", "nearly_full"),
    [
        (lambda: OSError(errno.ENOSPC, "No space left on device"), False),
        (
            lambda: Exception(
                'IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'
            ),
            False,
        ),
        (_torch_write_failed, True),
    ],
    ids=["oserror", "safetensors", "torch-save"],
)
def test_a_full_disk_during_a_save_is_one_line_and_leaves_no_temporary(
    pipe, tmp_path: Path, monkeypatch, error, nearly_full: bool
) -> None:
    import shutil
    from collections import namedtuple

    out = tmp_path / "run"
    stray = out / "checkpoints" / ".step-9.tmp"
    stray.mkdir(parents=True)  # left by an earlier failed save: a re-run cleans it
    trainer = _trainer(pipe, out, CFG.model_copy(update={"max_steps": 2}))

    def full_disk(path: str) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / "model.safetensors").write_bytes(b"partial")
        raise error()

    monkeypatch.setattr(trainer.acc, "save_state", full_disk)
    if nearly_full:
        usage = namedtuple("usage", "total used free")
        monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 * 2**30, 10 * 2**30 - 2**20, 2**20))
    with pytest.raises(UserError, match="disk full") as info:
        trainer.train()
    message = str(info.value)
    assert "\n" not in message and str(out / "checkpoints" / "step-2") in message and "resume" in message
    assert not stray.exists()
    assert not list((out / "checkpoints").glob(".step-*"))  # the partial save was removed
    assert list_checkpoints(out / "checkpoints") == []


def test_another_save_failure_is_not_called_a_full_disk_and_leaves_no_temporary(
    pipe, tmp_path: Path, monkeypatch
) -> None:
    import shutil
    from collections import namedtuple

    out = tmp_path / "run"
    trainer = _trainer(pipe, out, CFG.model_copy(update={"max_steps": 2}))

    def broken(path: str) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)
        raise _torch_write_failed()  # with plenty of free space: not a full disk

    monkeypatch.setattr(trainer.acc, "save_state", broken)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 * 2**30, 2**30, 9 * 2**30))
    with pytest.raises(RuntimeError, match="file write failed"):
        trainer.train()
    assert not list((out / "checkpoints").glob(".step-*"))


def _lora_trainer(pipe, out_dir: Path, max_steps: int) -> Trainer:
    import torch

    from spin_diffusion.model.lora import LoraSettings, add_lora

    unet = frozen_copy(pipe.unet)
    torch.manual_seed(3)  # the adapter's initial A: the same in every run of this test
    add_lora(unet, LoraSettings(rank=2, alpha=2.0))
    cfg = CFG.model_copy(update={"max_steps": max_steps, "use_ema": True, "ema_decay": 0.9})
    reference = ModuleReference(unet, training_scheduler(pipe), disable_adapters=True)
    return _trainer(pipe, out_dir, cfg, unet=unet, reference=reference)


def test_a_lora_checkpoint_holds_only_the_adapter_and_resumes_exactly(pipe, tmp_path: Path) -> None:
    from safetensors import safe_open

    straight = _lora_trainer(pipe, tmp_path / "straight", 4)
    straight.train()
    ckpt = tmp_path / "straight" / "checkpoints" / "step-2"
    assert not (ckpt / "model.safetensors").exists()
    with safe_open(str(ckpt / "adapter.safetensors"), framework="pt") as f:
        keys = list(f.keys())  # noqa: SIM118
    trainable = [n for n, p in straight.final_unet.named_parameters() if p.requires_grad]
    assert sorted(keys) == sorted(trainable) and all("lora_" in k for k in keys)
    # the EMA follows the adapter only
    assert len(straight.ema.shadow_params) == len(trainable)
    with safe_open(str(ckpt / "ema.safetensors"), framework="pt") as f:
        assert sorted(f.keys()) == sorted(trainable)  # noqa: SIM118
    base_bytes = sum(t.numel() * t.element_size() for t in pipe.unet.state_dict().values())
    ckpt_bytes = sum(p.stat().st_size for p in ckpt.rglob("*") if p.is_file())
    assert ckpt_bytes < base_bytes / 4  # adapter + its Adam state + EMA, no base weights

    _lora_trainer(pipe, tmp_path / "resumed", 2).train()
    again = _lora_trainer(pipe, tmp_path / "resumed", 4)
    assert again.train().resumed_from == 2
    assert fingerprint_module(again.final_unet) == fingerprint_module(straight.final_unet)
