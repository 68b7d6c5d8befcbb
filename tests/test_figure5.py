"""Figure 5 as the paper ran it: the plateau of iteration 1, then both arms from it (tiny budget)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from spin_diffusion.studies.figure5 import Figure5Config, figure5, plateau_step


def test_the_plateau_is_the_first_snapshot_within_the_tolerance_of_the_best() -> None:
    curve = {10: 0.40, 20: 0.55, 30: 0.59, 40: 0.60, 50: 0.58}
    assert plateau_step(curve, 0.0) == 40
    assert plateau_step(curve, 0.015) == 30
    assert plateau_step(curve, 0.06) == 20
    assert plateau_step({50: 0.1, 10: 0.3}, 0.0) == 10  # order of the dict does not matter
    with pytest.raises(ValueError):
        plateau_step({}, 0.01)


def test_the_steps_must_line_up_with_the_snapshots() -> None:
    with pytest.raises(ValueError, match="arm_steps must be a multiple"):
        Figure5Config(snapshot_every=40, search_steps=480, arm_steps=100)
    assert Figure5Config().as_study().batch_size == Figure5Config().batch_size


def tiny() -> Figure5Config:
    return Figure5Config.model_validate(
        {
            "seeds": [0],
            "pairs": 16,
            "eval_prompts": 4,
            "images_per_prompt": 1,
            "sample_steps": 8,
            "batch_size": 4,
            "warmup_steps": 1,
            "snapshot_every": 1,
            "search_steps": 2,
            "arm_steps": 2,
            "tolerance": 1.0,  # every snapshot is "on the plateau": the first one, step 1, is taken
            "pair_noise": "independent",
        }
    )


def _log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_both_arms_start_from_the_plateau_and_run_the_same_steps(tmp_path: Path) -> None:
    from spin_diffusion.model.loading import load_pipeline
    from spin_diffusion.model.weights import fingerprint_module
    from spin_diffusion.toy import base_model_path

    cfg = tiny()
    out = tmp_path / "fig5"
    result = figure5(cfg, out, "test-command", show_progress=False)
    summary = result["seeds"][0]
    assert summary["plateau_step"] == 1
    seed_dir = out / "seed-0"

    # arm (a) is iteration 1 itself, past the plateau: 2 + 2 steps against theta_0, snapshots at each
    first = seed_dir / "figure5-iter1"
    assert [r["step"] for r in _log(first / "iter-1" / "train_log.jsonl")] == [1, 2, 3, 4]
    assert first.joinpath("iter-1", "snapshots", "step-3").is_dir()
    # arm (b) is iteration 2 from the plateau model: theta_1 samples, is the reference, and starts at u = 0
    second = seed_dir / "figure5-iter2-from-1"
    record = json.loads((second / "iter-1" / "iteration.json").read_text())
    theta_1 = load_pipeline(base_model_path(), trained=first / "iter-1" / "snapshots" / "step-1")
    assert record["opponent_fingerprint"] == fingerprint_module(theta_1.unet)
    assert record["steps"] == cfg.arm_steps and record["training"]["beta"] == cfg.iteration_2.beta
    assert record["training"]["pair_noise"] == "independent"
    log_b = _log(second / "iter-1" / "train_log.jsonl")
    assert log_b[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)  # model == reference at its first step

    arms = summary["arms"]
    assert [r["offset"] for r in arms["continued"]] == [0, 1, 2] == [r["offset"] for r in arms["iteration 2"]]
    assert arms["continued"][0]["model"] == arms["iteration 2"][0]["model"] == "iter1-step-1"
    assert (
        arms["continued"][-1]["model"] == "iter1-step-3"
        and arms["iteration 2"][-1]["model"] == "iter2-step-3"
    )
    assert summary["models"]["iter2-step-3"] == {"arm": "iteration 2", "step": 3}
    assert 0.0 <= summary["win_rate_iteration_2_over_continued"] <= 1.0
    for row in arms["iteration 2"]:
        assert 0.0 <= row["toy_fidelity"] <= 1.0 and 0.0 <= row["empty_share"] <= 1.0
    report = (out / "figure5.md").read_text()
    assert "Command: `test-command`" in report and "| 0 | 1 | 1: " in report
    assert (out / "plots" / "figure5.png").stat().st_size > 1000

    # a second call finds everything done and changes nothing; other settings in the same place are refused
    again = figure5(cfg, out, "test-command", show_progress=False)
    assert again["seeds"][0]["arms"] == arms
    from spin_diffusion.errors import ConfigError

    with pytest.raises(ConfigError, match="arm_steps"):
        figure5(cfg.model_copy(update={"arm_steps": 1}), out, "x", show_progress=False)


def test_the_command_refuses_a_bad_setting_in_one_line(tmp_path: Path, capsys) -> None:
    from spin_diffusion.cli.main import main

    assert main(["toy", "figure5", "--out", str(tmp_path / "f"), "--set", "arm_steps=7"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "arm_steps must be a multiple of snapshot_every" in err[0]
    assert not (tmp_path / "f").exists()
