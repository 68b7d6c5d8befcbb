"""training.stop_when: an iteration ends when the opponent is beaten, and a resume stops at the same step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from spin_diffusion.config.run import TrainingConfig, validate_config
from spin_diffusion.config.stopping import StopWhenConfig
from spin_diffusion.errors import ConfigError
from spin_diffusion.model.families import prompt_encoder
from spin_diffusion.model.loading import load_pipeline
from spin_diffusion.model.prediction import training_scheduler
from spin_diffusion.model.weights import fingerprint_module, frozen_copy
from spin_diffusion.training.checkpointing import write_summary
from spin_diffusion.training.reference import ModuleReference
from spin_diffusion.training.stopping import StopRule
from spin_diffusion.training.trainer import Trainer
from synthetic_pairs import SyntheticPairs


def test_the_rule_waits_for_a_full_window_and_names_the_threshold_met() -> None:
    rule = StopRule.from_config(StopWhenConfig(implicit_acc=0.75, window=3))
    assert rule is not None and StopRule.from_config(None) is None
    accs = [1.0, 1.0, 0.5, 0.5, 1.0, 1.0, 1.0]
    verdicts = [rule.observe(i + 1, {"implicit_acc": a, "loss": 0.1}) for i, a in enumerate(accs)]
    # means of the last three: -, -, 0.83 (stop) ...; the first full window already meets 0.75
    assert verdicts[:2] == [None, None] and verdicts[2]["reason"] == "implicit_acc"
    rule = StopRule.from_config(StopWhenConfig(implicit_acc=0.9, window=3))
    verdicts = [rule.observe(i + 1, {"implicit_acc": a, "loss": 0.1}) for i, a in enumerate(accs)]
    assert [v is not None for v in verdicts] == [False, False, False, False, False, False, True]
    assert verdicts[-1]["step"] == 7 and verdicts[-1]["window_mean_implicit_acc"] == 1.0
    by_loss = StopRule.from_config(StopWhenConfig(loss=0.2, window=2))
    assert (
        by_loss.observe(1, {"loss": 0.1}) is None and by_loss.observe(2, {"loss": 0.25})["reason"] == "loss"
    )
    with pytest.raises(ValueError, match="pairwise"):
        StopRule(window=1, implicit_acc=0.5).observe(1, {"loss": 0.3})


def test_stop_when_is_validated() -> None:
    with pytest.raises(ValueError, match="implicit_acc or loss"):
        StopWhenConfig(window=5)
    with pytest.raises(ValueError):
        StopWhenConfig(implicit_acc=1.5)
    raw = {
        "name": "r",
        "method": "sft",
        "model": {"pretrained": "x"},
        "data": {"source": "imagefolder", "path": "d", "resolution": 32},
        "training": {"stop_when": {"implicit_acc": 0.9}},
    }
    with pytest.raises(ConfigError, match="sft has no implicit accuracy"):
        validate_config(raw)
    raw["method"] = "spin"
    assert validate_config(raw).training.stop_when.window == 20


@pytest.fixture(scope="module")
def pipe(tiny_pipeline_dir: Path):
    return load_pipeline(tiny_pipeline_dir)


def _trainer(pipe, out_dir: Path, cfg: TrainingConfig) -> Trainer:
    from accelerate import Accelerator

    unet = frozen_copy(pipe.unet)
    unet.requires_grad_(True)
    sched = training_scheduler(pipe)
    return Trainer(
        method="spin",
        cfg=cfg,
        accelerator=Accelerator(cpu=True),
        unet=unet,
        noise_scheduler=sched,
        prompts=prompt_encoder(pipe),
        data=SyntheticPairs(),
        reference=ModuleReference(frozen_copy(pipe.unet), sched),
        out_dir=out_dir,
        seed=11,
        show_progress=False,
    )


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def test_an_iteration_ends_when_beaten_and_a_resumed_one_ends_at_the_same_step(pipe, tmp_path: Path) -> None:
    # the loss threshold is chosen from an uncapped run's own log, so the stop falls mid-run
    base = TrainingConfig(
        max_steps=8,
        batch_size=3,
        learning_rate=1e-3,
        beta=2000.0,
        checkpointing_steps=2,
        trackers=[],
        lr_scheduler="constant",  # a shorter first part must not change the schedule
    )
    free = _trainer(pipe, tmp_path / "free", base)
    assert free.train().ended == {"reason": "max_steps", "step": 8}
    losses = [r["loss"] for r in _log(tmp_path / "free")]
    window = 2
    means = [sum(losses[i - window + 1 : i + 1]) / window for i in range(window - 1, len(losses))]
    # the first window past the first two whose mean is a new low: its mean is met there and not before
    j = next(j for j in range(2, len(means)) if means[j] < min(means[:j]))
    threshold, expected = means[j], j + window
    assert window < expected < 8

    cfg = base.model_copy(update={"stop_when": StopWhenConfig(loss=threshold, window=window)})
    straight = _trainer(pipe, tmp_path / "straight", cfg)
    result = straight.train()
    assert result.steps == expected and result.ended["reason"] == "loss" and result.ended["step"] == expected
    write_summary(tmp_path / "straight", result)
    assert json.loads((tmp_path / "straight" / "train_summary.json").read_text())["ended"]["step"] == expected

    # interrupted one step before the stop (its checkpoint holds the window), then resumed
    first = _trainer(pipe, tmp_path / "resumed", cfg.model_copy(update={"max_steps": expected - 1}))
    assert first.train().ended["reason"] == "max_steps"
    second = _trainer(pipe, tmp_path / "resumed", cfg)
    resumed = second.train()
    assert resumed.resumed_from is not None and resumed.resumed_from < expected
    assert resumed.steps == expected and resumed.ended == result.ended
    assert fingerprint_module(second.acc.unwrap_model(second.unet)) == fingerprint_module(
        straight.acc.unwrap_model(straight.unet)
    )
