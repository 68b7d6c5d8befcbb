"""The GPU check's sharded-training part: ``accelerate launch`` with DeepSpeed ZeRO-2 or FSDP on one device.

SPIN with a live reference through ``spin-diffusion train``: one uninterrupted
run, and one killed with SIGKILL (a preemption: no handler runs) once its
step-2 checkpoint is complete, then resumed by the same command. The resumed
run's final UNet must equal the uninterrupted one's up to GPU nondeterminism:
their largest difference must be under 1% of the largest change training made.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

STEPS, CHECKPOINT_EVERY = 6, 2
TOLERANCE = 0.01  # of the update size


def launch_command(
    backend: str, config: Path, mixed_precision: str, dry: bool
) -> tuple[list[str], dict[str, str]]:
    """``accelerate launch`` on one process with ``backend`` (deepspeed: ZeRO stage 2; fsdp: full shard).

    On a GPU the backend is asked for with launch flags. The CPU dry run asks
    through the environment variables those flags set (the launcher refuses an
    FSDP launch without an accelerator); accelerate then runs it unsharded and
    the trainer warns so.
    """
    launcher = str(Path(sys.executable).with_name("accelerate"))
    cmd = [launcher, "launch", "--num_processes", "1", "--num_machines", "1",
           "--mixed_precision", mixed_precision, "--dynamo_backend", "no"]  # fmt: skip
    if backend == "deepspeed":
        flags = ["--use_deepspeed", "--zero_stage", "2", "--gradient_accumulation_steps", "1"]
        flags += [
            "--offload_optimizer_device",
            "none",
            "--offload_param_device",
            "none",
            "--zero3_init_flag",
            "false",
        ]
        env = {"ACCELERATE_USE_DEEPSPEED": "true"}
    else:
        flags = [
            "--use_fsdp",
            "--fsdp_sharding_strategy",
            "FULL_SHARD",
            "--fsdp_state_dict_type",
            "SHARDED_STATE_DICT",
        ]
        env = {"ACCELERATE_USE_FSDP": "true"}
    if not dry:
        cmd, env = cmd + flags, {}
    return [*cmd, "-m", "spin_diffusion.cli", "train", str(config)], env


def write_config(work: Path, name: str, pipe_dir: Path, data: Path, px: int, mixed_precision: str) -> Path:
    import yaml

    raw = {
        "name": name,
        "output_dir": str(work / "runs"),
        "method": "spin",
        "model": {"pretrained": str(pipe_dir)},
        "data": {"source": "imagefolder", "path": str(data), "resolution": px},
        "sampling": {"num_inference_steps": 2, "batch_size": 2, "num_previews": 0},
        "training": {
            "batch_size": 2,
            "max_steps": STEPS,
            "checkpointing_steps": CHECKPOINT_EVERY,
            "mixed_precision": mixed_precision,
            "validation_prompts": 0,
            "learning_rate": 1e-4,  # a visible update, so the comparison means something
        },
        "iterations": [{"beta": 2000}],
    }
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _env(dry: bool) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    if dry:
        env["ACCELERATE_USE_CPU"] = "1"
    return env


def run_to_end(cmd: list[str], env: dict[str, str], log: Path) -> None:
    with open(log, "a") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:12])} ... exited {proc.returncode}; see {log}")


def run_and_kill(cmd: list[str], env: dict[str, str], log: Path, ckpt_root: Path) -> int:
    """Start ``cmd``; SIGKILL its whole process group as soon as a complete checkpoint exists; its step."""
    from spin_diffusion.training.checkpoints import list_checkpoints

    with open(log, "a") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.monotonic() + 600
        while proc.poll() is None and time.monotonic() < deadline:
            done = list_checkpoints(ckpt_root) if ckpt_root.is_dir() else []
            if done:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return done[-1][0]
            time.sleep(0.05)
    raise RuntimeError(
        f"the run ended (exit {proc.returncode}) before a checkpoint could be killed at; see {log}"
    )


def final_unet_difference(a: Path, b: Path, base: Path) -> tuple[float, float]:
    """Largest |a - b| over the UNet's weights, and the largest |a - base| (the update's size)."""
    from safetensors.torch import load_file

    def weights(path: Path) -> dict[str, Any]:
        return load_file(str(next(path.glob("*.safetensors"))))

    wa, wb, w0 = weights(a), weights(b), weights(base)
    diff = max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa)
    update = max(float((wa[k].float() - w0[k].float()).abs().max()) for k in wa)
    return diff, update


def kill_resume(backend: str, settings: Any, work: Path) -> dict[str, Any]:
    """Uninterrupted vs killed-and-resumed SPIN under ``backend``; passed when the final UNets agree."""
    from bench_real_shapes import make_data
    from real_builders import build_pipeline

    if backend == "deepspeed" and importlib.util.find_spec("deepspeed") is None:
        return {"status": "skipped: deepspeed is not installed (gpu_check.sh installs it)"}
    work = work / "dist"
    pipe_dir = work / "pipeline"
    if not (pipe_dir / "model_index.json").is_file():
        build_pipeline("sd15", settings.dist_divisor, settings.dist_px).save_pretrained(str(pipe_dir))
    data = make_data(work / "data", 4, settings.dist_px)
    precision = "no" if settings.dry else "bf16"
    env = _env(settings.dry)
    log = work / f"{backend}.log"
    runs = {}
    for name in ("straight", "killed"):
        config = write_config(work, f"{backend}-{name}", pipe_dir, data, settings.dist_px, precision)
        cmd, extra = launch_command(backend, config, precision, settings.dry)
        runs[name] = (cmd, work / "runs" / f"{backend}-{name}")
    env |= extra
    run_to_end(runs["straight"][0], env, log)
    killed_at = run_and_kill(runs["killed"][0], env, log, runs["killed"][1] / "iter-1" / "checkpoints")
    run_to_end(runs["killed"][0], env, log)  # the same command resumes
    diff, update = final_unet_difference(
        runs["straight"][1] / "iter-1" / "model" / "unet",
        runs["killed"][1] / "iter-1" / "model" / "unet",
        pipe_dir / "unet",
    )
    warned = "accelerate runs this as" in log.read_text()
    ok = update > 0 and diff <= TOLERANCE * update
    status = "passed" if ok else f"failed: resumed differs by {diff:.3g} (update size {update:.3g})"
    if warned and ok:
        status += " (not sharded: accelerate ran it as plain data parallelism here)"
    return {"status": status, "killed_at_step": killed_at, "max_abs_diff": diff, "update_size": update}
