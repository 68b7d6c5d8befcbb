"""Run ``spin-diffusion train`` as two CPU processes under ``accelerate launch`` (DDP or FSDP tests)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# torch FSDP (version 1) on CPU over gloo: full sharding, whole-model state dicts gathered on rank 0.
# sync_module_states (and cpu_ram_efficient_loading, which forces it) need a GPU-like device in
# accelerate 1.15; they are not needed here: every process loads the same weights.
FSDP_ARGS = ("--use_fsdp", "--fsdp_version", "1", "--fsdp_sharding_strategy", "FULL_SHARD",
             "--fsdp_state_dict_type", "FULL_STATE_DICT", "--fsdp_auto_wrap_policy", "NO_WRAP",
             "--fsdp_use_orig_params", "true", "--fsdp_sync_module_states", "false",
             "--fsdp_cpu_ram_efficient_loading", "false")  # fmt: skip


def train_two_processes(config: Path, *extra: str, fsdp: bool = False) -> subprocess.CompletedProcess:
    """Two CPU processes on one machine (data parallel, or FSDP-sharded); asserts a clean exit."""
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    launcher = Path(sys.executable).with_name("accelerate")
    mode = FSDP_ARGS if fsdp else ("--multi_gpu",)
    cmd = [str(launcher), "launch", *mode, "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "spin_diffusion.cli", "train", str(config), *extra]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc
