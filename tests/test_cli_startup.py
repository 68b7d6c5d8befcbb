"""The CLI answers --help and config errors without importing the heavy libraries."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "diffusers", "transformers", "datasets", "numpy")


def test_importing_the_cli_imports_no_heavy_library() -> None:
    code = f"import sys, spin_diffusion.cli.main; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_help_lists_every_job(tmp_path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "spin_diffusion.cli", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0
    for command in ("train", "demo", "evaluate", "data", "toy", "show-config", "export", "configs"):
        assert command in out.stdout


def test_config_error_is_one_line_and_fast(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmodel: {pretrained: m}\ndata: {source: imagefolder, path: d, resolution: 0}\n")
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "spin_diffusion.cli", "train", str(bad)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2
    errors = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "data" in errors[0] and "resolution" in errors[0]
    imported = {line.split("|")[-1].strip().split(".")[0] for line in out.stderr.splitlines() if "|" in line}
    assert not imported & set(HEAVY)


def test_a_model_loading_command_shows_our_output_not_library_chatter() -> None:
    """No "Loading pipeline components"/"Loading weights" bars, no transformers fallback warnings."""
    out = subprocess.run(
        [sys.executable, "-m", "spin_diffusion.cli", "toy", "evaluate", "base", "--n-prompts", "2",
         "--images-per-prompt", "1", "--steps", "2"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert '"fidelity"' in out.stdout
    for noise in ("Loading pipeline components", "Loading weights", "[transformers]", "torchvision"):
        assert noise not in out.stderr, out.stderr
