"""A method's own state across steps (Adaptive-DPO's EMA annotators): stepped, checkpointed, resumed."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from spin_diffusion.training.annotators import EmaAnnotators


def test_annotators_round_trip_through_a_checkpoint(tmp_path: Path) -> None:
    params = [torch.nn.Parameter(torch.randn(3, 2)), torch.nn.Parameter(torch.randn(4))]
    state = EmaAnnotators(params, (0.9999, 0.5), warmup_steps=2)
    assert not state.ready
    for _ in range(3):
        with torch.no_grad():
            for p in params:
                p.add_(1.0)
        state.after_optimizer_step(params)
    assert state.ready and state.steps == 3
    state.save(tmp_path, ["a", "b"])
    fresh = EmaAnnotators(params, (0.9999, 0.5), warmup_steps=2)
    fresh.load(tmp_path, ["a", "b"])
    assert fresh.steps == 3
    for old, new in zip(state.emas, fresh.emas, strict=True):
        assert all(torch.equal(x, y) for x, y in zip(old.shadow_params, new.shadow_params, strict=True))
    # swapping an annotator in and out leaves the trained weights as they were
    before = [p.detach().clone() for p in params]
    seen = state.scores(params, lambda: params[1].detach().clone())
    assert not torch.equal(seen[0], before[1]) and all(
        torch.equal(p, b) for p, b in zip(params, before, strict=True)
    )


def _trainer(pipe, out_dir: Path, max_steps: int):
    from accelerate import Accelerator

    from spin_diffusion.config.run import TrainingConfig
    from spin_diffusion.model.families import prompt_encoder
    from spin_diffusion.model.prediction import training_scheduler
    from spin_diffusion.model.weights import frozen_copy
    from spin_diffusion.training.reference import ModuleReference
    from spin_diffusion.training.trainer import Trainer
    from synthetic_pairs import SyntheticPairs

    unet = frozen_copy(pipe.unet).requires_grad_(True)
    sched = training_scheduler(pipe)
    cfg = TrainingConfig(
        beta=1000.0,
        max_steps=max_steps,
        batch_size=3,
        learning_rate=1e-3,
        lr_scheduler="constant",
        warmup_steps=0,
        checkpointing_steps=1,
        checkpoints_total_limit=None,
        trackers=[],
        adaptive_dpo={"ema_warmup_steps": 1},
    )
    return Trainer(
        method="adaptive-dpo",
        cfg=cfg,
        accelerator=Accelerator(cpu=True),
        unet=unet,
        noise_scheduler=sched,
        prompts=prompt_encoder(pipe),
        data=SyntheticPairs(),
        reference=ModuleReference(frozen_copy(pipe.unet), sched),
        out_dir=out_dir,
        seed=3,
        show_progress=False,
    )


def test_the_trainer_steps_checkpoints_and_resumes_the_annotators(
    tmp_path: Path, tiny_pipeline_dir: Path
) -> None:
    """Three steps straight equal two steps, a fresh trainer resuming its checkpoint (annotators included),
    and a third: the annotators score from step 1 on, so a lost annotator state would change step 3."""
    from spin_diffusion.model.loading import load_pipeline

    pipe = load_pipeline(tiny_pipeline_dir)
    straight = _trainer(pipe, tmp_path / "a", 3)
    straight.train()
    assert (tmp_path / "a" / "checkpoints" / "step-2" / "annotator-1.safetensors").is_file()
    assert straight.method_state.steps == 3

    _trainer(pipe, tmp_path / "b", 2).train()
    resumed = _trainer(pipe, tmp_path / "b", 3)
    result = resumed.train()
    assert result.resumed_from == 2 and resumed.method_state.steps == 3
    a, b = straight.final_unet.state_dict(), resumed.final_unet.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    log = [json.loads(line) for line in (tmp_path / "a" / "train_log.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["loss"]) for r in log) and log[0]["loss"] == pytest.approx(
        math.log(2), abs=1e-3
    )
