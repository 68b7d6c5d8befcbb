"""The prepared GPU check: real-shape steps in bf16, a flow family with LoRA, ZeRO-2 and FSDP kill/resume.

    bash benchmarks/gpu_check.sh                 # a fresh CUDA machine: venv, installs, this, < 8 minutes
    .venv/bin/python benchmarks/gpu_check.py --cpu-dry-run --out /tmp/gc   # the same code, tiny, on CPU

Parts (each recorded as passed, failed with its error, or skipped with why;
one failing part does not stop the others):

1. ``sd15``: the SD-1.5 architecture (random weights) at 512 px, full
   fine-tuning, bf16 autocast over fp32 weights, the reference a bf16 frozen
   copy: SFT and SPIN (live reference) optimizer steps; steps/s, examples/s,
   peak GPU memory of each, and SPIN/SFT per example.
2. ``sdxl-lora``: the SDXL architecture at 1024 px, rank-8 LoRA, reference =
   adapter disabled: the same figures.
3. ``flow-lora``: SD3.5-medium through the project's ``train`` with a LoRA,
   SFT and SPIN (rectified flow): seconds and final metrics of each.
4. ``deepspeed-zero2`` and ``fsdp``: ``accelerate launch`` on the one device,
   SPIN with a live reference: an uninterrupted run, and a run killed
   (SIGKILL) once its step-2 checkpoint is complete and then resumed by the
   same command; the two final UNets are compared.

``--cpu-dry-run`` runs every part at channel widths / 8 and 64 px on CPU in
fp32 (DeepSpeed is skipped unless installed; accelerate runs FSDP as plain
data parallelism on CPU and says so), so the code paths are exercised before
the first GPU run. Writes ``gpu_check.json`` and ``gpu_check.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

PARTS = ("sd15", "sdxl-lora", "flow-lora", "deepspeed-zero2", "fsdp")


class Settings:
    """Sizes of one check: the real ones on a GPU, tiny ones for the CPU dry run."""

    def __init__(self, dry: bool) -> None:
        import torch

        self.dry = dry
        self.device = torch.device("cpu" if dry else "cuda")
        self.autocast = torch.bfloat16 if not dry else None
        self.divisor = 8 if dry else 1
        self.sd15_px, self.sdxl_px, self.flow_px = (64, 64, 64) if dry else (512, 1024, 512)
        self.sd15_batch, self.sdxl_batch = (2, 1) if dry else (8, 2)
        self.steps = 2 if dry else 10
        self.dist_divisor, self.dist_px = (8, 64) if dry else (2, 256)


def peak_memory(device: Any) -> int | None:
    import torch

    return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None


def step_figures(
    pipe: Any, method: str, lora: bool, batch_size: int, settings: Settings, seed: int = 0
) -> dict[str, Any]:
    """Time ``settings.steps`` optimizer steps of ``method`` after one warm-up; peak memory of them all."""
    import torch
    from _common import toy_batch

    from spin_diffusion.config.run import TrainingConfig
    from spin_diffusion.model.families import prompt_encoder
    from spin_diffusion.model.lora import LoraSettings, add_lora
    from spin_diffusion.model.prediction import training_scheduler
    from spin_diffusion.model.weights import frozen_copy
    from spin_diffusion.training.batches import batch_conditioning
    from spin_diffusion.training.losses import compute_loss
    from spin_diffusion.training.reference import ModuleReference

    dev = settings.device
    sched = training_scheduler(pipe)
    unet, reference = pipe.unet, None
    if lora:
        add_lora(unet, LoraSettings(rank=8, alpha=8))
        reference = ModuleReference(unet, sched, disable_adapters=True) if method == "spin" else None
    else:
        if method == "spin":  # the Diffusion-DPO habit: the frozen reference in the weight dtype
            reference = ModuleReference(frozen_copy(unet, settings.autocast).to(dev), sched)
        unet.requires_grad_(True)
    unet.to(dev).train()
    opt = torch.optim.AdamW([p for p in unet.parameters() if p.requires_grad], lr=1e-6)
    batch = toy_batch(pipe, batch_size, paired=method == "spin", seed=seed)
    for name in ("latents_a", "latents_b", "noise", "timesteps"):
        if getattr(batch, name) is not None:
            setattr(batch, name, getattr(batch, name).to(dev))
    emb = batch_conditioning(prompt_encoder(pipe), batch)
    cfg = TrainingConfig(beta=2000)

    def step() -> float:
        with torch.autocast(dev.type, dtype=settings.autocast, enabled=settings.autocast is not None):
            loss = compute_loss(method, cfg, unet, sched, reference, batch, emb).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    losses = [step() for _ in range(settings.steps)]
    if dev.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / settings.steps
    finite = all(map(lambda v: v == v and abs(v) != float("inf"), losses))
    out = {"steps_per_s": 1 / seconds, "examples_per_s": batch_size / seconds, "peak_bytes": peak_memory(dev)}
    out |= {
        "batch": batch_size,
        "finite_losses": finite,
        "trainable": sum(p.numel() for p in opt.param_groups[0]["params"]),
    }
    return out


def compare_steps(arch: str, lora: bool, px: int, batch_size: int, settings: Settings) -> dict[str, Any]:
    """SFT and SPIN steps of ``arch`` at ``px``, each in a fresh state, and their per-example ratio."""
    import gc

    import torch
    from real_builders import build_pipeline

    result: dict[str, Any] = {"arch": arch, "px": px, "lora": lora, "width_divisor": settings.divisor}
    for method in ("sft", "spin"):
        pipe = build_pipeline(arch, settings.divisor, px)
        for part in (pipe.vae, pipe.text_encoder, getattr(pipe, "text_encoder_2", None)):
            if part is not None:
                part.requires_grad_(False).to(settings.device)
        if settings.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        result[method] = step_figures(pipe, method, lora, batch_size, settings)
        del pipe
        gc.collect()
        if settings.device.type == "cuda":
            torch.cuda.empty_cache()
    ok = result["sft"]["finite_losses"] and result["spin"]["finite_losses"]
    result["spin_over_sft_per_example"] = result["sft"]["examples_per_s"] / result["spin"]["examples_per_s"]
    result["status"] = "passed" if ok else "failed: a loss was not finite"
    return result


def flow_lora(settings: Settings, work: Path) -> dict[str, Any]:
    """SD3.5-medium LoRA SFT and SPIN through ``train``: the flow-matching seam at a real architecture."""
    import torch
    from bench_real_shapes import make_data
    from real_builders import build_pipeline

    from spin_diffusion.config.run import validate_config
    from spin_diffusion.selfplay.driver import run

    pipe_dir, data = work / "sd35" / "pipeline", make_data(work / "sd35" / "data", 4, settings.flow_px)
    pipe = build_pipeline("sd35-medium", settings.divisor, settings.flow_px)
    pipe.to(torch.bfloat16 if not settings.dry else torch.float32).save_pretrained(str(pipe_dir))
    del pipe
    out: dict[str, Any] = {}
    for method in ("sft", "spin"):
        raw = {
            "name": f"flow-{method}",
            "output_dir": str(work / "sd35" / "runs"),
            "method": method,
            "model": {"pretrained": str(pipe_dir), "lora": {"enabled": True, "rank": 8, "alpha": 8}},
            "data": {"source": "imagefolder", "path": str(data), "resolution": settings.flow_px},
            "sampling": {
                "scheduler": "pipeline",
                "num_inference_steps": 2,
                "batch_size": 2,
                "num_previews": 0,
            },
            "training": {
                "batch_size": 2,
                "max_steps": 2,
                "checkpointing_steps": 100,
                "validation_prompts": 0,
            },
        }
        start = time.perf_counter()
        res = run(validate_config(raw, source=f"flow-{method}"), show_progress=False)
        out[method] = {"seconds": time.perf_counter() - start, "loss": res["iterations"][-1]["final_metrics"]}
    return {**out, "status": "passed"}


def run_part(name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """One part, timed; an exception is recorded as that part's failure (the others still run)."""
    start = time.perf_counter()
    try:
        result = fn()
    except Exception as exc:  # noqa: BLE001 - a check reports every failure and goes on
        result = {
            "status": f"failed: {type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc()[-4000:],
        }
    result["seconds"] = round(time.perf_counter() - start, 1)
    print(f"{name}: {result['status']} ({result['seconds']} s)", flush=True)
    return result


def machine(settings: Settings) -> dict[str, str]:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {"torch": torch.__version__, "cuda": str(torch.version.cuda), "gpu": gpu, "python": platform.python_version(),
            "mode": "cpu dry run (tiny: NOT real figures)" if settings.dry else "gpu"}  # fmt: skip


def render(report: dict[str, Any]) -> str:
    gib = 2**30
    lines = [
        f"GPU check: {report['machine']['gpu']} ({report['machine']['mode']}), torch {report['machine']['torch']}",
        "",
    ]
    lines += ["| part | status | seconds |", "|---|---|---:|"]
    lines += [
        f"| {n} | {r['status'].splitlines()[0][:120]} | {r['seconds']} |" for n, r in report["parts"].items()
    ]
    lines += ["", "| shape | method | batch | steps/s | examples/s | peak GPU memory (GiB) | SPIN/SFT per example |",
              "|---|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for name in ("sd15", "sdxl-lora"):
        r = report["parts"][name]
        for method in ("sft", "spin"):
            if method in r:
                m, peak = r[method], r[method]["peak_bytes"]
                ratio = f"{r['spin_over_sft_per_example']:.2f}" if method == "spin" else ""
                lines.append(f"| {name} {r['px']} px | {method} | {m['batch']} | {m['steps_per_s']:.2f} | "
                             f"{m['examples_per_s']:.2f} | {'-' if peak is None else f'{peak / gib:.1f}'} | {ratio} |")  # fmt: skip
    for name in ("deepspeed-zero2", "fsdp"):
        r = report["parts"][name]
        if "max_abs_diff" in r:
            lines.append(f"\n{name}: resumed vs uninterrupted max |diff| {r['max_abs_diff']:.3g}, "
                         f"update size max |theta - theta_0| {r['update_size']:.3g}")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-dry-run", action="store_true", help="every part, tiny, on CPU")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks/gpu"))
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--work", type=Path, help="scratch directory (default: under --out)")
    args = parser.parse_args()
    import torch

    if not args.cpu_dry_run and not torch.cuda.is_available():
        raise SystemExit(
            f"gpu_check: torch {torch.__version__} sees no CUDA device; use --cpu-dry-run off a GPU"
        )
    settings = Settings(args.cpu_dry_run)
    work = args.work or args.out / "work"
    from gpu_check_dist import kill_resume

    jobs = {
        "sd15": lambda: compare_steps("sd15", False, settings.sd15_px, settings.sd15_batch, settings),
        "sdxl-lora": lambda: compare_steps("sdxl", True, settings.sdxl_px, settings.sdxl_batch, settings),
        "flow-lora": lambda: flow_lora(settings, work),
        "deepspeed-zero2": lambda: kill_resume("deepspeed", settings, work),
        "fsdp": lambda: kill_resume("fsdp", settings, work),
    }
    report = {"machine": machine(settings), "parts": {}}
    for name in PARTS:
        report["parts"][name] = (
            run_part(name, jobs[name]) if name in args.parts else {"status": "not run", "seconds": 0}
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    (args.out / "gpu_check.md").write_text(render(report))
    print(render(report))
    failed = [n for n, r in report["parts"].items() if r["status"].startswith("failed")]
    if failed:
        raise SystemExit(
            f"gpu_check: failed parts: {', '.join(failed)} (details in {args.out / 'gpu_check.json'})"
        )


if __name__ == "__main__":
    main()
