"""`export` never destroys what it did not write, and ships regular files only.

Run through the entry point as a subprocess, as a user would type it: the
refusals must happen before anything is loaded or replaced.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from spin_diffusion.cli.main import main
from tiny_runs import colour_squares, tiny_spin_config


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory, tiny_pipeline_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("export_safety")
    data = colour_squares(root / "data", ["red", "blue"])
    training = {
        "max_steps": 1,
        "batch_size": 2,
        "learning_rate": 1e-3,
        "trackers": [],
        "validation_prompts": 0,
    }
    config = tiny_spin_config(root, tiny_pipeline_dir, data, training=training, iterations=[{"beta": 2000}])
    assert main(["train", str(config)]) == 0
    return root / "runs" / "run"


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    paths = [str(Path(p).resolve()) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(paths)}  # cwd moves
    return subprocess.run(
        [sys.executable, "-m", "spin_diffusion.cli", *args],
        capture_output=True, text=True, cwd=cwd, env=env, timeout=300,
    )  # fmt: skip


def _tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


@pytest.mark.parametrize(
    "out",
    ["run", ".", "..", "run/iter-1/exported", "run/../run/"],
    ids=["the run", "above it", "two above", "inside it", "the run, unnormalised"],
)
def test_export_overwrite_refuses_the_run_itself_above_it_or_inside_it(finished_run: Path, out: str) -> None:
    runs = finished_run.parent
    before = _tree(runs.parent)
    result = _cli("export", "run", out, "--overwrite", cwd=runs)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "run directory" in result.stderr
    assert _tree(runs.parent) == before  # nothing deleted, nothing added


def test_export_overwrite_refuses_a_folder_it_did_not_write(finished_run: Path, tmp_path: Path) -> None:
    mine = tmp_path / "photos"
    mine.mkdir()
    (mine / "holiday.jpg").write_bytes(b"precious")
    result = _cli("export", str(finished_run), str(mine), "--overwrite", cwd=tmp_path)
    assert result.returncode == 2 and "is not an earlier export" in result.stderr, result.stderr
    assert (mine / "holiday.jpg").read_bytes() == b"precious"

    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep")
    result = _cli("export", str(finished_run), str(a_file), "--overwrite", cwd=tmp_path)
    assert result.returncode == 2 and a_file.read_text() == "keep", result.stderr


def test_export_overwrite_replaces_an_earlier_export_but_not_files_added_to_it(
    finished_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "export"
    assert main(["export", str(finished_run), str(out)]) == 0
    (out / "my_notes.txt").write_text("mine")
    result = _cli("export", str(finished_run), str(out), "--overwrite", cwd=tmp_path)
    assert result.returncode == 2 and "my_notes.txt" in result.stderr, result.stderr
    assert (out / "my_notes.txt").read_text() == "mine"
    (out / "my_notes.txt").unlink()
    stale = tmp_path / ".export.tmp-999999999"  # left by a killed export (no such pid)
    stale.mkdir()
    (stale / "unet.bin").write_bytes(b"x" * 100)
    assert main(["export", str(finished_run), str(out), "--overwrite"]) == 0
    assert (out / "model_index.json").is_file() and not stale.exists()


def test_export_ships_regular_files_only(finished_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "copy"
    shutil.copytree(
        finished_run, run, ignore=shutil.ignore_patterns("checkpoints", "samples", "real_latents")
    )
    secret = tmp_path / "secret.txt"
    secret.write_text("host secret")
    (run / "eval").mkdir(exist_ok=True)
    (run / "eval" / "grid.png").symlink_to(secret)
    (run / "eval" / "results.md").symlink_to(secret)
    out = tmp_path / "export"
    result = _cli("export", str(run), str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert not (out / "grid.png").exists()
    assert all("host secret" not in p.read_text(errors="ignore") for p in out.rglob("*") if p.is_file())
