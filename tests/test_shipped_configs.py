"""Every shipped config validates, and every evaluate config resolves against what the train configs write.

The evaluate configs name base models and ``runs/NAME/iter-k/model``
directories; here those are laid out exactly where the shipped train configs
put them (a tiny pipeline stands in for SD-1.5, empty files for scorer weights)
and ``spin-diffusion evaluate CONFIG --check`` must accept them.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from spin_diffusion.cli.main import main
from spin_diffusion.config.evaluation import load_job_config
from spin_diffusion.config.run import load_config
from spin_diffusion.config.shipped import configs_dir, copy_configs, shipped_configs

REPO = Path(__file__).resolve().parents[1]
SHIPPED = shipped_configs()
TRAIN = sorted(n for n in SHIPPED if not n.startswith("evaluate-"))
EVALUATE = sorted(n for n in SHIPPED if n.startswith("evaluate-"))


def test_the_repository_configs_are_the_shipped_ones() -> None:
    assert configs_dir() == REPO / "src" / "spin_diffusion" / "configs"
    assert sorted(p.name for p in (REPO / "configs").glob("*.yaml")) == sorted(f"{n}.yaml" for n in SHIPPED)
    assert len(TRAIN) >= 6 and len(EVALUATE) >= 3


@pytest.mark.parametrize("name", TRAIN)
def test_train_config_passes_show_config(name: str, capsys: pytest.CaptureFixture) -> None:
    assert main(["show-config", str(SHIPPED[name])]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["name"] == name


def _written_by_train_configs() -> dict[str, str]:
    """``runs/NAME/iter-k/model`` -> the base model it applies to, for every shipped train config."""
    out = {}
    for name in TRAIN:
        cfg = load_config(SHIPPED[name])
        for k in range(1, len(cfg.iterations) + 1):
            out[(cfg.run_dir / f"iter-{k}" / "model").as_posix()] = cfg.model.pretrained
    return out


def _write_prompts(kind: str, path: str) -> None:
    target = Path(path.replace("*", "0"))
    target.parent.mkdir(parents=True, exist_ok=True)
    if kind == "text":
        target.write_text("a red circle\na blue square\n")
    elif kind == "partiprompts":
        target.write_text("Prompt\tCategory\na red circle\tAbstract\n")
    elif kind == "pickapic":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"caption": ["a red circle", "a blue square"]}), target)
    else:
        raise AssertionError(f"no test data for prompt kind {kind}")


def _lay_out(job_path: Path, tiny_pipeline_dir: Path) -> None:
    """Create, in the current directory, every file the evaluate config names, where the train configs put them."""
    from PIL import Image

    written = _written_by_train_configs()
    raw = yaml.safe_load(job_path.read_text())
    for name, value in raw["models"].items():
        entry = {"path": value} if isinstance(value, str) else value
        if entry["path"] != "toy-base" and not Path(entry["path"]).exists():
            shutil.copytree(tiny_pipeline_dir, entry["path"])
        if "trained" in entry:
            trained = entry["trained"]
            assert trained in written, f"{job_path.name}: models.{name}.trained names no shipped run's output"
            assert entry["path"] == written[trained], (
                f"{job_path.name}: models.{name}.path is not its run's base"
            )
            shutil.copytree(tiny_pipeline_dir / "unet", Path(trained) / "unet")
    evaluation = raw["evaluation"]
    if isinstance(evaluation["prompts"], dict):
        _write_prompts(evaluation["prompts"]["kind"], evaluation["prompts"]["path"])
    for scorer in evaluation["scorers"]:
        for field in ("path", "processor_path", "tokenizer_path", "clip_path"):
            if field in scorer:
                target = Path(scorer[field])
                target.parent.mkdir(parents=True, exist_ok=True)
                target.touch() if target.suffix else target.mkdir(parents=True, exist_ok=True)
    dist = evaluation.get("distribution")
    if dist:
        Path(dist["reference_dir"]).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(Path(dist["reference_dir"]) / "0.png")
        Path(dist["feature_path"]).mkdir(parents=True, exist_ok=True)


@pytest.mark.parametrize("name", EVALUATE)
def test_evaluate_config_passes_check_against_what_the_train_configs_write(
    name: str, tmp_path: Path, tiny_pipeline_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    (job_path,) = copy_configs([name], tmp_path / "configs")
    _lay_out(job_path, tiny_pipeline_dir)
    assert main(["evaluate", str(job_path), "--check"]) == 0
    out = capsys.readouterr().out
    assert "ok (nothing generated" in out
    job = load_job_config(job_path)
    assert not Path(job.output_dir).exists()  # --check writes nothing

    # an iteration that was never trained: the error names the field and says what the run has
    trained = next(e.trained for e in job.model_entries().values() if e.trained)
    shutil.rmtree(trained)
    assert main(["evaluate", str(job_path), "--check"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: models.") and ".trained: " in err and "does not exist (runs/" in err
    assert "\n" not in err


def test_a_trained_directory_given_as_the_pipeline_names_the_field(
    tmp_path: Path, tiny_pipeline_dir: Path, capsys
) -> None:
    model = tmp_path / "runs" / "r" / "iter-1" / "model"
    shutil.copytree(tiny_pipeline_dir / "unet", model / "unet")
    (tmp_path / "iter-2-is-missing").mkdir()
    job = {
        "models": {"base": "toy-base", "mine": str(model)},
        "output_dir": str(tmp_path / "out"),
        "evaluation": {"prompts": ["a red circle"], "scorers": [{"kind": "toy_style"}]},
    }
    path = tmp_path / "eval.yaml"
    path.write_text(yaml.safe_dump(job))
    assert main(["evaluate", str(path), "--check"]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"error: models.mine: {model} holds fine-tuned weights (unet/), not a pipeline; "
        f"write {{path: BASE_PIPELINE, trained: {model}}}\n"
    )
    job["models"]["mine"] = {"path": "toy-base", "trained": str(model.parent.parent / "iter-2" / "model")}
    path.write_text(yaml.safe_dump(job))
    assert main(["evaluate", str(path), "--check"]) == 2
    assert "(" + str(model.parent.parent) + " has finished iterations: 1)" in capsys.readouterr().err


def test_toy_base_alias_loads_the_shipped_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from spin_diffusion.model.loading import load_pipeline, resolve_model_source
    from spin_diffusion.toy import base_model_path

    monkeypatch.chdir(tmp_path)
    assert resolve_model_source("toy-base") == str(base_model_path())
    assert load_pipeline("toy-base").unet.config.sample_size == 8
    (tmp_path / "toy-base").mkdir()  # a directory of that name where the user runs wins over the alias
    assert resolve_model_source("toy-base") == "toy-base"


def test_configs_copy_and_list(tmp_path: Path, capsys) -> None:
    assert main(["configs", "copy", "toy-spin", "--to", str(tmp_path)]) == 0
    assert (tmp_path / "toy-spin.yaml").read_text() == SHIPPED["toy-spin"].read_text()
    assert main(["configs", "copy", "toy-spin", "--to", str(tmp_path)]) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert main(["configs", "copy", "nope", "--to", str(tmp_path)]) == 2
    assert main(["configs", "list"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in SHIPPED)


@pytest.mark.slow
def test_the_wheel_ships_the_configs_and_the_toy_model(tmp_path: Path) -> None:
    source = tmp_path / "source"  # a copy: building writes build/ and *.egg-info next to pyproject.toml
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path),
         str(source)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = tmp_path.glob("spin_diffusion-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"spin_diffusion/configs/{n}.yaml" for n in SHIPPED} <= names
    assert "spin_diffusion/assets/toy-base/model_index.json" in names
