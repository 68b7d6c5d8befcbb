"""`spin-diffusion toy compare` end to end on a tiny budget: every method on the same pairs, one table."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from spin_diffusion.cli.main import main
from spin_diffusion.studies.runs import examples_seen
from spin_diffusion.studies.settings import ALL_METHODS, FAMILY, ReproduceConfig, family_defaults

ALL_METHODS_BUT_ABLATION = [m for m in ALL_METHODS if m != "spin-continued"]


def test_compare_trains_every_family_method_on_the_study_pairs(tmp_path: Path, capsys) -> None:
    tiny = {
        "seeds": [0],
        "pairs": 16,
        # SFT and SPIN rows come from the same code as `toy reproduce` (tests/test_toy_reproduce.py)
        "methods": ["dpo", *FAMILY],
        "eval_prompts": 4,
        "images_per_prompt": 2,
        "sample_steps": 4,
        "batch_size": 4,
        "warmup_steps": 1,
        "spin": {"iterations": [{"beta": 200, "learning_rate": 1e-5, "max_steps": 2}]},
        "sft": {"learning_rate": 1e-4, "max_steps": 4, "eval_every": 2},
        "dpo": {"beta": 2500, "learning_rate": 1e-5, "max_steps": 2},
        "family": {
            name: {**run.model_dump(), "max_steps": 2, "training": {**run.training}}
            for name, run in family_defaults().items()
        },
    }
    tiny["family"]["inversion-dpo"]["training"] = {"inversion": {"steps": 2}}
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny))
    out = tmp_path / "study"
    assert main(["toy", "compare", "--out", str(out), "--config", str(config)]) == 0
    report = (out / "compare.md").read_text()
    assert report.startswith("# Toy-world method comparison")
    for row in ("| base |", "| dpo |", *(f"| {m} |" for m in FAMILY)):
        assert row in report
    assert (out / "plots" / "compare.png").stat().st_size > 1000
    assert not (out / "results.md").exists()  # the reproduction's own report is left alone
    seed = json.loads((out / "compare.json").read_text())["seeds"]["0"]
    cfg = ReproduceConfig.model_validate(tiny)
    for name in FAMILY:
        row = seed["models"][name]
        assert 0.0 <= row["toy_fidelity"] <= 1.0 and "win_vs_dpo" in row and "win_vs_base" in row
        assert row["examples"] == 2 * 4 == examples_seen(cfg, name)
        saved = yaml.safe_load((out / "seed-0" / name / "config.yaml").read_text())
        assert saved["method"] == name and saved["data"]["source"] == "pickapic"
        assert saved["data"]["path"] == str(out / "seed-0" / "data" / "preferences.parquet")
    # every ordered pair's win rate is kept, and a pair's two rates add up to one (ties count half)
    assert abs(seed["models"]["dpo"]["wins"]["kto"] + seed["models"]["kto"]["wins"]["dpo"] - 1.0) < 1e-9
    assert "## Win rates between methods" in report
    matrix = report.split("## Win rates between methods")[1]
    matrix_row = next(line for line in matrix.splitlines() if line.startswith("| kto | "))
    assert len(matrix_row.split("|")) == len(["base", "dpo", *FAMILY]) + 3
    dmpo = yaml.safe_load((out / "seed-0" / "dmpo" / "config.yaml").read_text())
    assert dmpo["training"]["beta"] == 1000 and dmpo["training"]["dmpo"]["alpha"] == 0.01

    # the same command again trains nothing new and re-renders the same table
    stamp = (out / "seed-0" / "kto" / "iter-1" / "iteration.json").stat().st_mtime_ns
    assert main(["toy", "compare", "--out", str(out), "--config", str(config)]) == 0
    assert (out / "seed-0" / "kto" / "iter-1" / "iteration.json").stat().st_mtime_ns == stamp


def test_a_family_method_without_settings_is_refused(tmp_path: Path, capsys) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({"methods": ["kto"], "family": {}}))
    assert main(["toy", "compare", "--out", str(tmp_path / "s"), "--config", str(config)]) == 2
    assert "family has no settings for kto" in capsys.readouterr().err


def test_spin_exact_is_a_compare_method_with_its_own_iterations(tmp_path: Path) -> None:
    from spin_diffusion.config.run import validate_config
    from spin_diffusion.studies.runs import models_of, run_configs
    from spin_diffusion.studies.settings import ALL_METHODS

    assert "spin-exact" in ALL_METHODS
    cfg = ReproduceConfig(methods=["spin", "spin-exact"], batch_size=4)
    runs = run_configs(cfg, 1, tmp_path / "seed-1")
    exact = validate_config(runs["spin-exact"])
    assert exact.method == "spin-exact" and len(exact.iterations) == 2
    assert exact.training.trajectory_grad_steps == 8 and exact.sampling.latents == "raw"
    names = [n for n in models_of(cfg, tmp_path / "seed-1") if n.startswith("spin-exact-")]
    assert names == ["spin-exact-1", "spin-exact-2"]
    assert examples_seen(cfg, "spin-exact-2") == 240 * 4 and examples_seen(cfg, "spin-2") == 240 * 4


def test_win_matrix_maps_sft_best_per_seed_and_averages_over_seeds(tmp_path: Path) -> None:
    from spin_diffusion.studies.compare_report import pairwise_win, plot_comparison, win_matrix_lines

    def seed(best: str, win: float) -> dict:
        row = {"toy_fidelity": 0.3, "toy_style": 0.5, "win_vs_base": win, "examples": 16}
        models = {
            "base": {**row, "wins": {best: 1 - win, "dpo": 0.5}},
            best: {**row, "wins": {"base": win, "dpo": 0.25}},
            "dpo": {**row, "wins": {"base": 0.5, best: 0.75}},
        }
        return {"sft_best": best, "models": models}

    summaries = {1: seed("sft-150", 0.6), 2: seed("sft-300", 0.8)}
    mean, sd, n = pairwise_win(summaries, "sft-best", "base")
    assert n == 2 and abs(mean - 0.7) < 1e-12 and abs(sd - (0.02**0.5)) < 1e-12
    assert pairwise_win(summaries, "dpo", "kto")[2] == 0
    cfg = ReproduceConfig(methods=["sft", "dpo"])
    lines = win_matrix_lines(cfg, summaries)
    assert "| sft-best | 70% | - | 25% |" in lines
    assert "| base | - | 30% | 50% |" in lines
    plot_comparison(cfg, summaries, tmp_path / "compare.png")
    assert (tmp_path / "compare.png").stat().st_size > 1000


def test_the_comparison_config_in_the_docs_is_a_valid_study_narrowing_the_defaults() -> None:
    """docs/results.md's command must keep running: its config validates and only narrows the defaults."""
    path = Path(__file__).parent.parent / "docs" / "results" / "compare.yaml"
    cfg = ReproduceConfig.model_validate(yaml.safe_load(path.read_text()))
    default = ReproduceConfig()
    assert cfg.spin.iterations == default.spin.iterations[:2]
    assert cfg.spin_exact.iterations == default.spin_exact.iterations[:1]
    for part in ("spin", "spin_exact"):
        mine, theirs = getattr(cfg, part), getattr(default, part)
        assert mine.model_dump(exclude={"iterations"}) == theirs.model_dump(exclude={"iterations"})
    assert set(cfg.methods) == set(ALL_METHODS_BUT_ABLATION)
    assert cfg.model_dump(exclude={"methods", "spin", "spin_exact"}) == default.model_dump(
        exclude={"methods", "spin", "spin_exact"}
    )
