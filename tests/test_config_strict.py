"""Config inputs that used to be accepted silently or crash: duplicate keys, non-UTF-8 files,
booleans for numbers, inf/NaN, out-of-range ``--set`` indices, an ``output_dir`` that is a file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from spin_diffusion.config.base import read_yaml
from spin_diffusion.config.overrides import apply_overrides
from spin_diffusion.config.run import load_config, validate_config
from spin_diffusion.errors import ConfigError

BASE_YAML = """\
name: t
model: {pretrained: models/sd}
data: {source: imagefolder, path: data, resolution: 64}
"""
BASE = {
    "name": "t",
    "model": {"pretrained": "models/sd"},
    "data": {"source": "imagefolder", "path": "data", "resolution": 64},
}


def _write(tmp_path: Path, text: str | bytes, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


# --- duplicate keys -------------------------------------------------------------------------


def test_duplicate_key_in_a_section_names_key_file_and_lines(tmp_path: Path) -> None:
    path = _write(tmp_path, BASE_YAML + "training:\n  beta: 2000\n  max_steps: 5\n  beta: 5000\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message == f"{path}: line 7: duplicate key 'beta' (first given on line 5)"


def test_duplicate_top_level_and_flow_keys_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="line 4: duplicate key 'name'"):
        load_config(_write(tmp_path, BASE_YAML + "name: other\n"))
    flow = BASE_YAML + "iterations:\n  - {beta: 1, beta: 2}\n"
    with pytest.raises(ConfigError, match="duplicate key 'beta'"):
        load_config(_write(tmp_path, flow, "flow.yaml"))


def test_same_key_in_different_sections_and_merge_overrides_are_fine(tmp_path: Path) -> None:
    text = BASE_YAML + (
        "training: &t {beta: 100, max_steps: 3}\n"
        "iterations:\n  - {beta: 200, max_steps: 4}\n  - {<<: *t, beta: 300}\n"
    )
    cfg = load_config(_write(tmp_path, text))
    assert [cfg.training_for(k).beta for k in (1, 2)] == [200, 300]
    assert cfg.training_for(2).max_steps == 3


def test_duplicate_key_in_an_evaluate_job_config(tmp_path: Path) -> None:
    from spin_diffusion.config.evaluation import load_job_config

    text = (
        "models: {base: m}\noutput_dir: out\noutput_dir: out2\n"
        "evaluation: {prompts: [a], scorers: [{kind: toy_fidelity}]}\n"
    )
    with pytest.raises(ConfigError, match=r"eval.yaml: line 3: duplicate key 'output_dir'"):
        load_job_config(_write(tmp_path, text, "eval.yaml"))


def test_duplicate_key_in_data_check_config(tmp_path: Path) -> None:
    from spin_diffusion.cli.data import app

    path = _write(tmp_path, "data:\n  source: imagefolder\n  path: d\n  path: e\n  resolution: 32\n")
    res = CliRunner().invoke(app, ["check", str(path)])
    assert res.exit_code == 2
    assert res.stderr.strip() == f"error: {path}: line 4: duplicate key 'path' (first given on line 3)"


def test_duplicate_key_in_a_pretrain_config(tmp_path: Path) -> None:
    from spin_diffusion.cli.toy import _load_pretrain_config
    from spin_diffusion.errors import UserError

    path = _write(tmp_path, "seed: 1\nvae_steps: 2\nseed: 3\n", "pretrain.yaml")
    with pytest.raises(UserError, match=r"pretrain.yaml: line 3: duplicate key 'seed'"):
        _load_pretrain_config(path)
    # JSON configs go through the same loader.
    path = _write(tmp_path, '{"seed": 1, "seed": 2}', "pretrain.json")
    with pytest.raises(UserError, match="duplicate key 'seed'"):
        _load_pretrain_config(path)


def test_duplicate_key_inside_a_set_value() -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        apply_overrides(dict(BASE), ["model.lora={rank: 2, rank: 4}"])


# --- encodings ----------------------------------------------------------------------------


def test_non_utf8_config_is_one_line_naming_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path, (BASE_YAML + "# caf\xe9 in latin-1\n").encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: not UTF-8 text (byte 0xe9 on line 4); save it as UTF-8"


def test_utf8_bom_in_a_config_is_accepted(tmp_path: Path) -> None:
    path = _write(tmp_path, b"\xef\xbb\xbf" + BASE_YAML.encode())
    assert read_yaml(path)["name"] == "t"


def test_non_utf8_config_through_the_cli_is_one_line(tmp_path: Path, capsys) -> None:
    from spin_diffusion.cli.main import main

    path = _write(tmp_path, b"name: caf\xe9\n")
    assert main(["show-config", str(path)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: {path}: not UTF-8 text (byte 0xe9 on line 1); save it as UTF-8"
    ]


def test_non_utf8_config_in_data_check(tmp_path: Path) -> None:
    from spin_diffusion.cli.data import app

    path = _write(tmp_path, b"data: {source: imagefolder, path: caf\xe9, resolution: 32}\n")
    res = CliRunner().invoke(app, ["check", str(path)])
    assert res.exit_code == 2 and res.stderr.strip().startswith(f"error: {path}: not UTF-8 text")
    assert "Traceback" not in res.output


# --- numbers --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "field", "value"),
    [
        ("training", "max_steps", True),
        ("training", "warmup_steps", False),
        ("training", "batch_size", True),
        ("training", "beta", True),
        ("training", "learning_rate", True),
        ("sampling", "num_inference_steps", True),
        ("model.lora", "rank", True),
        ("top", "seed", True),
        ("iterations", "max_steps", True),
        ("data", "resolution", True),
        ("data", "seed", True),
    ],
)
def test_a_boolean_is_not_a_number(section: str, field: str, value: bool) -> None:
    raw = json.loads(json.dumps(BASE))
    if section == "top":
        raw[field] = value
    elif section == "iterations":
        raw["iterations"] = [{field: value}]
    elif section == "model.lora":
        raw["model"]["lora"] = {field: value}
    else:
        raw.setdefault(section, {})[field] = value
    with pytest.raises(ConfigError) as info:
        validate_config(raw, "run.yaml")
    message = str(info.value)
    assert field in message and "boolean" in message and "\n" not in message


def test_max_steps_true_from_yaml_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, BASE_YAML + "training: {max_steps: yes}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: training.max_steps: expected a number, got the boolean true"


@pytest.mark.parametrize("text", [".inf", "-.inf", ".nan", "inf", "nan"])
@pytest.mark.parametrize(
    "where", ["training.learning_rate", "training.beta", "iterations.0.beta", "iterations.0.learning_rate"]
)
def test_infinite_or_nan_floats_are_refused_naming_the_field(where: str, text: str) -> None:
    raw = {**json.loads(json.dumps(BASE)), "iterations": [{}]}
    raw = apply_overrides(raw, [f"{where}={text}"])
    with pytest.raises(ConfigError) as info:
        validate_config(raw, "run.yaml")
    assert str(info.value) == f"run.yaml: {where}: Input should be a finite number"


def test_other_float_fields_refuse_inf_too() -> None:
    for section, field in [
        ("training", "max_grad_norm"),
        ("training", "adam_epsilon"),
        ("sampling", "guidance_scale"),
    ]:
        raw = {**json.loads(json.dumps(BASE)), section: {field: float("inf")}}
        with pytest.raises(ConfigError, match=f"{section}.{field}: Input should be a finite number"):
            validate_config(raw, "run.yaml")
    raw = {**json.loads(json.dumps(BASE))}
    raw["data"]["caption_dropout"] = float("nan")
    with pytest.raises(ConfigError, match="data.caption_dropout"):
        validate_config(raw, "run.yaml")


def test_eval_config_numbers_are_strict_too() -> None:
    from pydantic import ValidationError

    from spin_diffusion.config.evaluation import EvaluationConfig

    base = {"prompts": ["a"], "scorers": [{"kind": "toy_fidelity"}]}
    with pytest.raises(ValidationError, match="guidance_scale"):
        EvaluationConfig.model_validate({**base, "guidance_scale": float("inf")})
    with pytest.raises(ValidationError, match="n_images_per_prompt"):
        EvaluationConfig.model_validate({**base, "n_images_per_prompt": True})


def test_ordinary_numbers_still_validate() -> None:
    raw = {**json.loads(json.dumps(BASE)), "training": {"learning_rate": "2e-5", "max_steps": 3}}
    raw["iterations"] = [{"beta": 5000}]
    cfg = validate_config(raw)
    assert cfg.training.learning_rate == 2e-5 and cfg.training_for(1).beta == 5000.0
    assert cfg.training.max_grad_norm == 1.0 and cfg.model.lora.enabled is False


# --- --set with list indices --------------------------------------------------------------------


def test_set_index_out_of_range_says_how_many_entries(tmp_path: Path) -> None:
    path = _write(tmp_path, BASE_YAML + "iterations:\n  - {beta: 1}\n  - {beta: 2}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, ["iterations.5.beta=3"])
    assert str(info.value) == (
        "override 'iterations.5.beta=3': iterations has 2 entries, index 5 is out of range"
    )
    with pytest.raises(ConfigError, match="iterations has 2 entries, index 2 is out of range"):
        load_config(path, ["iterations.2={beta: 3}"])
    with pytest.raises(ConfigError, match="iterations is a list; use an index from 0 to 1, not 'last'"):
        load_config(path, ["iterations.last.beta=3"])


def test_set_into_a_value_says_so() -> None:
    with pytest.raises(ConfigError, match=r"model.pretrained is a value \('models/sd'\), not a section"):
        apply_overrides(json.loads(json.dumps(BASE)), ["model.pretrained.x=1"])


def test_set_iteration_without_a_list_in_the_file_uses_the_default(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, BASE_YAML), ["iterations.0.beta=1000"])
    assert cfg.training_for(1).beta == 1000 and len(cfg.iterations) == 1
    with pytest.raises(ConfigError, match="iterations has 1 entry, index 1 is out of range"):
        load_config(_write(tmp_path, BASE_YAML), ["iterations.1.beta=1000"])


# --- evaluate output_dir ------------------------------------------------------------------------


def _eval_job(tmp_path: Path, output_dir: Path) -> Path:
    return _write(
        tmp_path,
        f"models: {{base: m}}\noutput_dir: {output_dir}\n"
        "evaluation: {prompts: [a], scorers: [{kind: toy_fidelity}]}\n",
        "eval.yaml",
    )


def test_evaluate_output_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    from spin_diffusion.config.evaluation import load_job_config

    blocker = tmp_path / "results.txt"
    blocker.write_text("not a directory\n")
    job = _eval_job(tmp_path, blocker)
    with pytest.raises(ConfigError) as info:
        load_job_config(job)
    assert str(info.value) == f"{job}: output_dir {blocker} is a file, not a directory"
    with pytest.raises(ConfigError, match=f"lies under {blocker}, which is a file"):
        load_job_config(_eval_job(tmp_path, blocker / "sub"))
    assert load_job_config(_eval_job(tmp_path, tmp_path / "new" / "dir")).output_dir.endswith("dir")


def test_evaluate_command_with_file_output_dir_is_one_line(tmp_path: Path, capsys) -> None:
    from spin_diffusion.cli.main import main

    blocker = tmp_path / "out"
    blocker.write_text("x")
    assert main(["evaluate", str(_eval_job(tmp_path, blocker))]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {tmp_path / 'eval.yaml'}: output_dir {blocker} is a file, not a directory"]


# --- the shipped paper configs say what they do ---------------------------------------------------

REPO = Path(__file__).resolve().parents[1]


def test_paper_evaluation_uses_the_papers_seed() -> None:
    from spin_diffusion.config.evaluation import load_job_config

    assert load_job_config(REPO / "configs" / "evaluate-paper.yaml").evaluation.seed == 5775709


def test_dpo_config_states_its_beta_convention() -> None:
    path = REPO / "configs" / "sd15-dpo.yaml"
    text = path.read_text()
    assert load_config(path).training_for(1).beta == 2500
    assert "no factor 1/2" in text and "beta_dpo=5000" in text  # the official code's value
    assert "beta 2000" in text and "A.1" in text  # the SPIN paper's own DPO reproduction


def test_spin_config_comment_matches_the_warmup_schedule() -> None:
    """sd15-spin.yaml says what warm-up does when it is as long as or longer than an iteration."""
    from spin_diffusion.training.trainer import lr_factor

    path = REPO / "configs" / "sd15-spin.yaml"
    cfg, text = load_config(path), path.read_text()
    rates = {}
    for k in (1, 2, 3):
        t = cfg.training_for(k)
        rates[k] = [t.learning_rate * lr_factor(step, t) for step in range(t.max_steps)]
    assert rates[1][0] == pytest.approx(1e-7) and rates[1][-1] == pytest.approx(5e-6)  # a quarter
    assert max(rates[1]) == rates[1][-1]  # iteration 1 never decays
    assert rates[2][199] == pytest.approx(2e-5) and rates[2][-1] < rates[2][300] < rates[2][199]
    assert rates[3][-1] == pytest.approx(5e-8) and max(rates[3]) == rates[3][-1]  # no decay
    assert "climbs from 1e-7 to 5e-6" in text and "reaches 5e-8 at the very last update" in text


def test_data_docs_do_not_claim_the_paper_sets_caption_dropout() -> None:
    text = (REPO / "docs" / "data.md").read_text()
    assert "keeps the paper's setting" not in text
    assert "proportion_empty_prompts=0.2" in text
