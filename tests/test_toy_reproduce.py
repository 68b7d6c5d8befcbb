"""The toy reproduction study end to end on a tiny budget: every method, the ablation, the tables."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from spin_diffusion.errors import ConfigError
from spin_diffusion.studies.reproduce import reproduce
from spin_diffusion.studies.runs import examples_seen
from spin_diffusion.studies.settings import ReproduceConfig
from spin_diffusion.studies.tables import across_seeds


def tiny_study() -> ReproduceConfig:
    return ReproduceConfig.model_validate(
        {
            "seeds": [0],
            "pairs": 16,
            "eval_prompts": 4,
            "images_per_prompt": 2,
            "sample_steps": 4,
            "batch_size": 4,
            "warmup_steps": 1,
            "spin": {"iterations": [{"beta": 200, "learning_rate": 1e-5, "max_steps": 2}] * 2},
            "sft": {"learning_rate": 1e-4, "max_steps": 4, "eval_every": 2},
            "dpo": {"beta": 2500, "learning_rate": 1e-5, "max_steps": 2},
        }
    )


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[ReproduceConfig, Path, dict]:
    out = tmp_path_factory.mktemp("repro") / "study"
    cfg = tiny_study()
    return cfg, out, reproduce(cfg, out, "test-command", show_progress=False)


def _log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_study_writes_the_table_curves_and_every_model(study) -> None:
    cfg, out, result = study
    report = (out / "results.md").read_text()
    for row in ("| base |", "| sft-best |", "| dpo |", "| spin-1 |", "| spin-2 |", "| spin-1-continued |"):
        assert row in report
    assert "Command: `test-command`" in report
    assert (out / "plots" / "curves.png").stat().st_size > 1000
    models = result["seeds"][0]["models"]
    assert set(models) == {"base", "sft-2", "sft-4", "dpo", "spin-1", "spin-2", "spin-1-continued"}
    for row in models.values():
        assert 0.0 <= row["toy_fidelity"] <= 1.0 and 0.0 <= row["toy_style"] <= 1.0
        assert row["toy_fidelity_se"] >= 0.0
    assert models["spin-2"]["examples"] == 2 * 2 * 4 == examples_seen(cfg, "spin-2")
    assert result["seeds"][0]["sft_best"] in ("sft-2", "sft-4")
    assert set(result["seeds"][0]["drift"]) == {"spin-1", "spin-2"}
    assert "win_vs_dpo" in models["spin-2"] and "win_vs_sft_best" in models["spin-2"]
    # where the fidelity goes: the oracle's checks by attribute, per model and in the report
    assert 0.0 <= models["spin-2"]["attr_colour"] <= 1.0 and 0.0 <= models["base"]["empty_share"] <= 1.0
    assert "## Prompt fidelity by attribute" in report and "| objects found / asked |" in report
    # where the time went, from the runs' own records and the timed evaluation
    seconds = result["seeds"][0]["seconds"]
    assert set(seconds) == {"sft", "dpo", "spin", "spin-continued", "evaluation"}
    assert seconds["spin"]["opponent sampling"] > 0 and seconds["evaluation"]["evaluation"] > 0
    assert "## Where the time went" in report and "| opponent sampling |" in report


def test_ablation_is_iteration_one_run_longer(study) -> None:
    """With a constant schedule, the continued run repeats iteration 1 step for step, then goes on."""
    _, out, _ = study
    first = _log(out / "seed-0" / "spin" / "iter-1" / "train_log.jsonl")
    cont = _log(out / "seed-0" / "spin-continued" / "iter-1" / "train_log.jsonl")
    assert len(first) == 2 and len(cont) == 4
    for a, b in zip(first, cont[:2], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6)
        assert a["model_err_real"] == pytest.approx(b["model_err_real"], rel=1e-6)


def test_dpo_pairs_are_for_the_curated_prompts(study) -> None:
    import pyarrow.parquet as pq

    _, out, _ = study
    data = out / "seed-0" / "data"
    captions = [
        json.loads(line)["text"] for line in (data / "curated" / "metadata.jsonl").read_text().splitlines()
    ]
    prefs = pq.read_table(data / "preferences.parquet").to_pydict()
    assert prefs["caption"] == captions
    assert all(
        a + b == 1.0 and a in (0.0, 1.0) for a, b in zip(prefs["label_0"], prefs["label_1"], strict=True)
    )


def test_rerun_is_a_no_op_and_a_changed_study_is_refused(study) -> None:
    cfg, out, result = study
    again = reproduce(cfg, out, "test-command", show_progress=False)
    assert again["report"] == result["report"]
    with pytest.raises(ConfigError, match="pairs"):
        reproduce(cfg.model_copy(update={"pairs": 32}), out, "x", show_progress=False)


def test_across_seeds_mean_and_spread() -> None:
    summaries = {
        1: {"sft_best": "sft-2", "models": {"sft-2": {"toy_fidelity": 0.2}, "dpo": {"toy_fidelity": 0.5}}},
        2: {"sft_best": "sft-4", "models": {"sft-4": {"toy_fidelity": 0.4}, "dpo": {"toy_fidelity": 0.7}}},
    }
    mean, sd, n = across_seeds(summaries, "sft-best", "toy_fidelity")
    assert (mean, n) == (pytest.approx(0.3), 2) and sd == pytest.approx(0.1414, abs=1e-3)
    assert across_seeds(summaries, "dpo", "toy_fidelity")[0] == pytest.approx(0.6)
    assert across_seeds(summaries, "spin-9", "toy_fidelity")[2] == 0


def test_the_continued_run_reuses_iteration_ones_samples(study) -> None:
    """The same base, data, seed and sampler: the same samples, linked rather than drawn again."""
    _, out, _ = study
    first, cont = (out / "seed-0" / name / "iter-1" / "samples" for name in ("spin", "spin-continued"))
    files = sorted(first.glob("*.safetensors"))
    assert files and all((cont / f.name).stat().st_ino == f.stat().st_ino for f in files)


def test_the_opponent_may_sample_with_fewer_steps_than_the_evaluation(tmp_path: Path) -> None:
    from spin_diffusion.studies.runs import evaluation_config, run_configs

    default = tiny_study()
    assert (
        run_configs(default, 0, tmp_path)["spin"]["sampling"]["num_inference_steps"] == default.sample_steps
    )
    fewer = default.model_copy(update={"opponent_sample_steps": 2})
    runs = run_configs(fewer, 0, tmp_path)
    assert runs["spin"]["sampling"]["num_inference_steps"] == 2
    assert runs["spin-continued"]["sampling"]["num_inference_steps"] == 2
    assert evaluation_config(fewer, tmp_path / "p.txt")["num_inference_steps"] == default.sample_steps
