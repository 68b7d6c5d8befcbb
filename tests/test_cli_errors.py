"""Usage errors through the installed ``spin-diffusion`` script: a usage line, one error, exit 2.

Run through the console script (not ``main()`` in-process) because the bug this guards against
lived in how the entry point maps typer's exceptions to exit codes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def _entry_point() -> str:
    """The console script installed next to this interpreter (the venv's ``bin``)."""
    found = shutil.which("spin-diffusion", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.skip("spin-diffusion console script is not installed in this environment")
    return found


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run(
        [_entry_point(), *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=120
    )


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text("name: x\nmodel: {pretrained: m}\ndata: {source: imagefolder, path: d, resolution: 32}\n")
    return path


USAGE_ERRORS = {
    "typo in the command": (["trian"], "No such command 'trian'"),
    "train without a config": (["train"], "Missing argument 'config'"),
    "unknown option": (["train", "{config}", "--bogus"], "No such option: --bogus"),
    "--set without a value": (["train", "{config}", "--set"], "Option '--set' requires an argument"),
    "demo --iterations 0": (["demo", "--iterations", "0"], "Invalid value for '--iterations'"),
    "toy option not a number": (["toy", "dataset", "out", "--size", "abc"], "Invalid value for '--size'"),
    "data check --resolution abc": (
        ["data", "check", "{config}", "--resolution", "abc"],
        "Invalid value for '--resolution'",
    ),
    "typo in a sub-command": (["toy", "datset", "out"], "No such command 'datset'"),
}


@pytest.mark.parametrize("case", list(USAGE_ERRORS), ids=list(USAGE_ERRORS))
def test_usage_error_is_a_usage_message_and_exit_2(case: str, config_file: Path, tmp_path: Path) -> None:
    argv, expected = USAGE_ERRORS[case]
    out = _run(*(a.format(config=config_file) for a in argv), cwd=tmp_path)
    assert "Traceback" not in out.stderr, out.stderr
    assert out.returncode == 2, (out.returncode, out.stderr)
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    if case != "--set without a value":  # click's parser raises that one without a context to show
        assert lines[0].startswith("Usage: spin-diffusion"), out.stderr
    errors = [line for line in lines if line.startswith("Error: ")]
    assert len(errors) == 1 and expected in errors[0], out.stderr
    assert len(lines) <= 4, out.stderr  # usage, help hint, error: no traceback, no help dump
    assert out.stdout == ""


def test_no_arguments_prints_help_without_traceback(tmp_path: Path) -> None:
    out = _run(cwd=tmp_path)
    assert "Traceback" not in out.stderr
    assert "train" in out.stdout + out.stderr and "show-config" in out.stdout + out.stderr
    assert out.returncode in (0, 2)


def test_user_error_stays_one_line_exit_2(tmp_path: Path) -> None:
    out = _run("show-config", str(tmp_path / "missing.yaml"), cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"error: config file {tmp_path / 'missing.yaml'} does not exist"
    ]
