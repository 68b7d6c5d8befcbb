"""Run ``spin-diffusion train`` as two CPU processes under ``accelerate launch`` (for DDP tests)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def train_two_processes(config: Path, *extra: str) -> subprocess.CompletedProcess:
    """Two data-parallel CPU processes on one machine; asserts a clean exit and returns the result."""
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    launcher = Path(sys.executable).with_name("accelerate")
    cmd = [str(launcher), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "spin_diffusion.cli", "train", str(config), *extra]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc
