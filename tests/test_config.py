"""Run configuration: validation messages, overrides, per-iteration values, shipped configs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from spin_diffusion.config.overrides import apply_overrides
from spin_diffusion.config.run import identity_changes, load_config, validate_config
from spin_diffusion.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]

BASE = {
    "name": "t",
    "model": {"pretrained": "models/sd"},
    "data": {"source": "imagefolder", "path": "data", "resolution": 64},
}


RUN_CONFIGS = sorted(p for p in (REPO / "configs").glob("*.yaml") if not p.name.startswith("evaluate-"))


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=lambda p: p.name)
def test_shipped_run_configs_validate(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.name and len(cfg.iterations) >= 1


def test_paper_schedule_resolves_per_iteration() -> None:
    cfg = load_config(REPO / "configs" / "sd15-spin.yaml")
    assert [cfg.training_for(k).beta for k in (1, 2, 3)] == [2000, 5000, 5000]
    assert [cfg.training_for(k).learning_rate for k in (1, 2, 3)] == [2e-5, 2e-5, 5e-8]
    assert [cfg.training_for(k).max_steps for k in (1, 2, 3)] == [50, 500, 200]
    assert (
        cfg.training_for(1).weight_decay == 0.01
        and cfg.training.batch_size * cfg.training.gradient_accumulation_steps * 8 == 2048
    )


def test_overrides_parse_yaml_values_and_index_lists() -> None:
    raw = {**BASE, "iterations": [{}, {}]}
    out = apply_overrides(
        raw,
        ["training.max_steps=7", "iterations.1.beta=5000", "model.lora.enabled=true", "training.trackers=[]"],
    )
    cfg = validate_config(out)
    assert (
        cfg.training.max_steps == 7 and cfg.training_for(2).beta == 5000 and cfg.training_for(1).beta == 2000
    )
    assert cfg.model.lora.enabled is True and cfg.training.trackers == []
    with pytest.raises(ConfigError, match="key.path=value"):
        apply_overrides(dict(BASE), ["training.max_steps"])


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"training": {"learning_rate": 0}}, "training.learning_rate"),
        ({"training": {"lr": 1e-4}}, "training.lr"),
        ({"method": "ppo"}, "method"),
        ({"name": "bad/name"}, "name"),
        ({"data": {"source": "csv", "path": "x", "resolution": 64}}, "data"),
        ({"method": "sft", "iterations": [{}, {}]}, "iterations"),
        ({"iterations": []}, "iterations"),
    ],
)
def test_bad_values_name_the_field(change: dict, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate_config({**BASE, **change}, "run.yaml")
    message = str(info.value)
    assert message.startswith("run.yaml: ") and field.split(".")[0] in message and "\n" not in message


def test_yaml_errors_and_missing_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(tmp_path / "list.yaml")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "none.yaml")


def test_identity_changes_detect_what_would_mix_results() -> None:
    a = validate_config(dict(BASE))
    b = validate_config({**BASE, "training": {"max_steps": 5}})
    assert identity_changes(a, b) == []
    c = validate_config({**BASE, "data": {**BASE["data"], "path": "other"}, "method": "sft"})
    assert identity_changes(a, c) == ["method", "data"]


def test_configuration_docs_match_the_code() -> None:
    from spin_diffusion.config.reference_docs import config_reference_markdown

    docs = (REPO / "docs" / "configuration.md").read_text()
    assert config_reference_markdown() in docs, (
        "regenerate docs/configuration.md from config_reference_markdown()"
    )


def test_dpo_family_settings_are_validated_and_carried_per_iteration() -> None:
    cfg = validate_config({**BASE, "method": "dmpo", "training": {"dmpo": {"alpha": 0.05}}})
    assert cfg.training_for(1).dmpo.alpha == 0.05 and cfg.training_for(1).kto.lambda_desirable == 1.0
    with pytest.raises(ConfigError, match=r"training\.dmpo\.alpha"):
        validate_config({**BASE, "method": "dmpo", "training": {"dmpo": {"alpha": 1.0}}})
    with pytest.raises(ConfigError, match=r"training\.see_dpo\.gamma"):
        validate_config({**BASE, "method": "see-dpo", "training": {"see_dpo": {"gamma": 1.0}}})
    with pytest.raises(ConfigError, match="precompute_reference: inversion-dpo"):
        validate_config({**BASE, "method": "inversion-dpo", "training": {"precompute_reference": True}})
    with pytest.raises(ConfigError, match="trains once"):
        validate_config({**BASE, "method": "kto", "iterations": [{}, {}]})


# The settings tests/fixtures/old-main-config.yaml was written from, by the previous main's dump_config
# (config.py with data/evaluation stored as plain dicts), as a run directory's config.yaml.
OLD_MAIN_RAW = {
    "name": "old-run",
    "method": "spin",
    "seed": 3,
    # reference_dtype: the old main's default, float32; the default is now auto (the same under no mixed precision)
    "model": {"pretrained": "toy-base", "lora": {"enabled": True, "rank": 8}, "reference_dtype": "float32"},
    "data": {
        "source": "pickapic",
        "path": "pairs/*.parquet",
        "resolution": 32,
        "max_examples": 100,
        "random_flip": True,
    },
    "sampling": {"num_samples_per_prompt": 2},
    "training": {"max_steps": 7, "learning_rate": 1e-4},
    "iterations": [{"beta": 5000}, {"max_steps": 3, "num_samples_per_prompt": 1}],
    "evaluation": {
        "prompts": {"kind": "partiprompts", "path": "parti.tsv", "limit": 10, "categories": ["Animals"]},
        "n_images_per_prompt": 2,
        "scorers": [{"kind": "toy_fidelity"}, {"kind": "pickscore", "name": "ps", "path": "pick"}],
        "distribution": {"reference_dir": "ref", "feature_path": "clip"},
        "best_of_n": ["max", "mean", "max"],
    },
}


def _without_added_sections(cfg: Any) -> str:
    """The config.yaml of ``cfg`` without the fields added after the old-main fixture was written."""
    import yaml

    data = cfg.model_dump(mode="json")
    assert data["model"].pop("flow") == {  # added with the flow-matching families, at its defaults
        "timestep_sampling": "logit_normal",
        "logit_mean": 0.0,
        "logit_std": 1.0,
        "mode_scale": 1.29,
        "weighting": "none",
        "guidance": 1.0,
    }
    assert data["data"].pop("allow_external_paths") is False  # added with the outside-path rule, off
    # added for issue #22 (docs/methods.md), each at its default
    assert data["data"].pop("label_column", None) is None
    assert data["training"].pop("error_space") == "native"
    assert data["training"]["kto"].pop("unpaired", False) is False
    assert data["training"]["kto"].pop("desirable_ratio", 0.8) == 0.8
    official = ("ema_annotators", "ema_decays", "ema_warmup_steps", "rho", "normalise_logits")
    for key in (*official, "temperature", "intercept", "margin_type"):
        data["training"]["adaptive_dpo"].pop(key)
    # added with issue 21's bench: the pair noise convention and iteration length by the game
    assert data["training"].pop("pair_noise") == "shared" and data["training"].pop("stop_when") is None
    return yaml.safe_dump(data, sort_keys=False)


def test_a_config_yaml_written_by_the_previous_main_resumes_unchanged() -> None:
    from spin_diffusion.config.base import read_yaml
    from spin_diffusion.config.data import DataConfig
    from spin_diffusion.config.evaluation import EvaluationConfig
    from spin_diffusion.config.run import dump_config

    path = REPO / "tests" / "fixtures" / "old-main-config.yaml"
    saved = validate_config(read_yaml(path), str(path))  # as rundir.check_resume reads it
    current = validate_config(OLD_MAIN_RAW)
    assert identity_changes(saved, current) == []
    assert dump_config(saved) == dump_config(current)
    # the same config.yaml byte for byte, but for fields added since with their defaults
    assert _without_added_sections(current) == path.read_text()
    assert isinstance(current.data, DataConfig) and current.data.caption_column == "caption"
    assert isinstance(current.evaluation, EvaluationConfig) and current.evaluation.metrics == [
        "toy_fidelity",
        "ps",
    ]
    changed = validate_config({**OLD_MAIN_RAW, "data": {**OLD_MAIN_RAW["data"], "resolution": 64}})
    assert identity_changes(saved, changed) == ["data"]


def test_iteration_overrides_apply_to_the_section_that_owns_each_field() -> None:
    from spin_diffusion.config.run import IterationOverride, TrainingConfig
    from spin_diffusion.config.sampling import SamplingConfig

    for name in IterationOverride.model_fields:  # each override names exactly one section's field
        assert (name in TrainingConfig.model_fields) != (name in SamplingConfig.model_fields), name
    cfg = validate_config(OLD_MAIN_RAW)
    first, second = cfg.training_for(1), cfg.training_for(2)
    assert (first.beta, first.max_steps, first.learning_rate) == (5000, 7, 1e-4)
    assert (second.beta, second.max_steps, second.learning_rate) == (2000, 3, 1e-4)
    assert cfg.sampling_for(1).num_samples_per_prompt == 2 and cfg.sampling_for(2).num_samples_per_prompt == 1
    assert cfg.training.max_steps == 7 and cfg.sampling.num_samples_per_prompt == 2  # the base is untouched
