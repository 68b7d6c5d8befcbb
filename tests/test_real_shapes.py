"""The benchmarks' real-architecture builders and the CPU-runnable parts of the prepared GPU check."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

import real_architectures as ra  # noqa: E402
import real_builders as rb  # noqa: E402

# Parameter counts of the published checkpoints (their model cards and the diffusers/transformers loaders).
PUBLISHED = {
    ("sd15", "denoiser"): 859_520_964,
    ("sd15", "vae"): 83_653_863,
    ("sd15", "text_encoder"): 123_060_480,  # CLIP ViT-L/14 text tower
    ("sdxl", "denoiser"): 2_567_463_684,
    ("sdxl", "text_encoder_2"): 694_659_840,  # OpenCLIP ViT-bigG/14 text tower with projection
    ("flux1-dev", "denoiser"): 11_901_408_320,
    ("flux1-dev", "text_encoder_2"): 4_762_310_656,  # T5-XXL encoder
}


@pytest.mark.parametrize("arch", ["sd15", "sdxl", "flux1-dev"])
def test_the_builders_have_the_published_parameter_counts(arch: str) -> None:
    counts = rb.parameter_counts(arch)
    for (name, part), expected in PUBLISHED.items():
        if name == arch:
            assert counts[part] == expected, part


@pytest.mark.parametrize("arch", ra.ARCHITECTURES)
def test_a_width_divisor_keeps_the_architecture_and_shrinks_it(arch: str) -> None:
    full, narrow = rb.parameter_counts(arch), rb.parameter_counts(arch, width_divisor=4)
    assert full.keys() == narrow.keys()
    assert 8 < full["denoiser"] / narrow["denoiser"] < 20  # about d^2 = 16


def test_a_width_divisor_that_breaks_group_norm_is_refused() -> None:
    with pytest.raises(ValueError, match="width divisor 3"):
        ra.narrowed_unet(ra.SD15_UNET, 3)


def test_the_tokenizers_have_the_real_sizes() -> None:
    clip, _ = ra.clip_tokenizer(None)  # open_clip, SPIN_BENCH_CLIP_BPE or the synthetic fallback
    assert len(clip) == ra.CLIP_VOCAB_SIZE
    assert clip("a cat").input_ids[0] == 49406 and clip("a cat").input_ids[-1] == 49407
    assert len(ra.t5_tokenizer()) == ra.T5_VOCAB_SIZE


def _open_clip_wheel() -> Path | None:
    found = (
        sorted(Path("/opt/pypi/files").glob("open_clip_torch-*.whl"))
        if Path("/opt/pypi/files").is_dir()
        else []
    )
    return found[-1] if found else None


@pytest.mark.skipif(_open_clip_wheel() is None, reason="no open_clip_torch wheel on this machine")
def test_with_open_clips_vocabulary_the_ids_are_clips() -> None:
    tok, origin = ra.clip_tokenizer(_open_clip_wheel())
    assert origin.startswith("CLIP BPE")
    # OpenAI CLIP's ids for this sentence
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]


@pytest.mark.slow
def test_the_gpu_checks_step_parts_run_on_cpu(tmp_path: Path) -> None:
    """The real-shape step comparison and the flow part, tiny, on CPU: what the GPU run will execute."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(BENCH / "gpu_check.py"), "--cpu-dry-run", "--out", str(tmp_path)]
    proc = subprocess.run(
        [*cmd, "--parts", "sd15", "sdxl-lora", "flow-lora"], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    for part in ("sd15", "sdxl-lora"):
        assert report["parts"][part]["status"] == "passed"
        assert report["parts"][part]["spin"]["trainable"] > 0
    assert report["parts"]["flow-lora"]["status"] == "passed"
    assert set(report["parts"]["flow-lora"]) >= {"sft", "spin"}
    assert "| sd15 64 px | spin |" in (tmp_path / "gpu_check.md").read_text()


@pytest.mark.slow
def test_the_gpu_checks_kill_and_resume_part_runs_on_cpu(tmp_path: Path) -> None:
    """accelerate launch, SIGKILL after the first checkpoint, resume: the final UNet equals the uninterrupted one."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        str(BENCH / "gpu_check.py"),
        "--cpu-dry-run",
        "--out",
        str(tmp_path),
        "--parts",
        "fsdp",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    fsdp = json.loads((tmp_path / "gpu_check.json").read_text())["parts"]["fsdp"]
    assert fsdp["status"].startswith("passed")
    assert fsdp["killed_at_step"] == 2 and fsdp["update_size"] > 0 and fsdp["max_abs_diff"] == 0
