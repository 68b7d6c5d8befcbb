"""Evaluation config validation: clear one-line errors naming the field, no torch import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from spin_diffusion.config.evaluation import (
    EvaluateJobConfig,
    EvaluationConfig,
    ScorerConfig,
    load_job_config,
)
from spin_diffusion.errors import ConfigError


def test_scorer_paths_must_fit_the_kind():
    assert ScorerConfig(kind="pickscore", path="p").metric == "pickscore"
    assert ScorerConfig(kind="hpsv2", name="hpsv2.1", path="p", tokenizer_path="t").metric == "hpsv2.1"
    with pytest.raises(ValidationError, match="needs tokenizer_path"):
        ScorerConfig(kind="hpsv2", path="p")
    with pytest.raises(ValidationError, match="needs clip_path"):
        ScorerConfig(kind="aesthetic", path="p")
    with pytest.raises(ValidationError, match="needs path"):
        ScorerConfig(kind="imagereward", tokenizer_path="t")
    with pytest.raises(ValidationError, match="clip_path does not apply"):
        ScorerConfig(kind="pickscore", path="p", clip_path="c")
    with pytest.raises(ValidationError, match="path does not apply"):
        ScorerConfig(kind="toy_style", path="p")
    with pytest.raises(ValidationError, match="Extra inputs"):
        ScorerConfig(kind="pickscore", path="p", weights="w")


def test_scorer_fingerprint_changes_with_files():
    a = ScorerConfig(kind="pickscore", path="a")
    assert a.fingerprint() != ScorerConfig(kind="pickscore", path="b").fingerprint()
    assert a.fingerprint() == ScorerConfig(kind="pickscore", path="a", batch_size=2).fingerprint()


def test_evaluation_defaults_and_checks():
    cfg = EvaluationConfig(prompts=["a cat"], scorers=[{"kind": "toy_fidelity"}])
    assert cfg.n_images_per_prompt == 5 and cfg.num_inference_steps == 20 and cfg.guidance_scale == 7.5
    assert cfg.grid_prompts == 8 and cfg.best_of_n == ["max", "zscore"]
    cfg = EvaluationConfig(
        prompts={"kind": "text", "path": "prompts.txt", "limit": 3}, scorers=[{"kind": "toy_style"}]
    )
    assert cfg.prompts.limit == 3
    with pytest.raises(ValidationError, match="at least one scorer"):
        EvaluationConfig(prompts=["a"], scorers=[])
    with pytest.raises(ValidationError, match="two scorers are named 'toy_style'"):
        EvaluationConfig(prompts=["a"], scorers=[{"kind": "toy_style"}, {"kind": "toy_style"}])
    with pytest.raises(ValidationError, match="prompt 1 is empty"):
        EvaluationConfig(prompts=["a", " "], scorers=[{"kind": "toy_style"}])
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        EvaluationConfig(prompts=["a"], scorers=[{"kind": "toy_style"}], n_images_per_prompt=0)
    # the run config stores the block as JSON and re-validates it
    dumped = EvaluationConfig(prompts=["a"], scorers=[{"kind": "toy_style"}]).model_dump(mode="json")
    assert EvaluationConfig.model_validate(dumped).metrics == ["toy_style"]


def test_job_config_models_and_baseline():
    job = EvaluateJobConfig(
        models={"base": "m0", "iter-1": {"path": "m1", "trained": "l1"}},
        baseline="base",
        evaluation={"prompts": ["a"], "scorers": [{"kind": "toy_style"}]},
        output_dir="out",
    )
    entries = job.model_entries()
    assert list(entries) == ["base", "iter-1"] and entries["iter-1"].trained == "l1"
    with pytest.raises(ValidationError, match="baseline 'sd' is not one of the models"):
        EvaluateJobConfig(models={"base": "m0"}, baseline="sd", evaluation=job.evaluation, output_dir="o")
    with pytest.raises(ValidationError, match="model name 'a/b'"):
        EvaluateJobConfig(models={"a/b": "m0"}, evaluation=job.evaluation, output_dir="o")


def test_load_job_config_errors_name_file_and_field(tmp_path: Path):
    bad = tmp_path / "eval.yaml"
    bad.write_text(
        "models: {base: m0}\noutput_dir: o\nevaluation:\n  prompts: [a]\n  scorers: [{kind: nope}]\n"
    )
    with pytest.raises(ConfigError, match=r"eval.yaml: evaluation.scorers.0.kind: Input should be") as info:
        load_job_config(bad)
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="does not exist"):
        load_job_config(tmp_path / "missing.yaml")


def test_example_configs_validate():
    root = Path(__file__).resolve().parents[1] / "configs"
    examples = sorted(root.glob("evaluate-*.yaml"))
    assert examples, "configs/evaluate-*.yaml examples are missing"
    for path in examples:
        load_job_config(path)


def test_config_module_does_not_import_torch():
    code = "import sys; import spin_diffusion.config.evaluation, spin_diffusion.cli.evaluate; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_prompt_sets_are_read_through_the_data_loader(tmp_path: Path):
    from spin_diffusion.evaluation.prompts import resolve_prompts

    (tmp_path / "p.txt").write_text("a red circle\n\na blue square\na green cross\n")
    cfg = EvaluationConfig(
        prompts={"kind": "text", "path": str(tmp_path / "p.txt"), "limit": 2}, scorers=[{"kind": "toy_style"}]
    )
    assert resolve_prompts(cfg) == ["a red circle", "a blue square"]
    assert resolve_prompts(cfg.model_copy(update={"prompts": ["x", "y"]})) == ["x", "y"]
