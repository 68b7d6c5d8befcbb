"""Peak resident memory of one training process: SFT, SPIN with a live reference, SPIN with a table, LoRA.

Each variant runs in a fresh process (so one variant's peak cannot hide
another's): load the toy base, build the trained model and its reference the
way ``selfplay`` does, run a few optimizer steps of ``compute_loss`` +
backward + AdamW, and report the peak resident set (VmHWM) and its growth
over the loaded pipeline.

    .venv/bin/python benchmarks/bench_memory.py [--batch 16] [--steps 4] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

VARIANTS = ("sft", "spin-live", "spin-table", "lora-spin-live", "lora-spin-table")


def _hwm_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("/proc/self/status has no VmHWM (this benchmark needs Linux)")


def run_variant(variant: str, model: str | None, batch: int, steps: int) -> dict[str, float]:
    """In this fresh process: train ``steps`` steps of ``variant`` and return memory figures."""
    import torch
    from _common import conditioning, model_dir, toy_batch

    from spin_diffusion.config.run import TrainingConfig
    from spin_diffusion.model.loading import load_pipeline
    from spin_diffusion.model.lora import LoraSettings, add_lora
    from spin_diffusion.model.prediction import training_scheduler
    from spin_diffusion.model.weights import frozen_copy
    from spin_diffusion.training.losses import compute_loss
    from spin_diffusion.training.reference import ModuleReference, PrecomputedReference

    torch.set_num_threads(1)
    pipe = load_pipeline(model_dir(model))
    loaded = _hwm_mib()
    sched = training_scheduler(pipe)
    unet = pipe.unet
    lora = variant.startswith("lora")
    method = "sft" if variant == "sft" else "spin"
    reference = None
    if lora:
        add_lora(unet, LoraSettings())
        if variant.endswith("live"):
            reference = ModuleReference(unet, sched, disable_adapters=True)  # no second copy
    else:
        unet.requires_grad_(True)
        if variant.endswith("live"):
            reference = ModuleReference(frozen_copy(unet), sched)
    if variant.endswith("table"):
        reference = PrecomputedReference(torch.rand(1, batch, 2))
    unet.train()
    opt = torch.optim.AdamW([p for p in unet.parameters() if p.requires_grad], lr=1e-6)
    batch_data = toy_batch(pipe, batch, paired=method == "spin", seed=0)
    emb = conditioning(pipe, batch_data.captions)
    cfg = TrainingConfig(beta=2000)
    for _ in range(steps):
        compute_loss(method, cfg, unet, sched, reference, batch_data, emb).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    trainable = sum(p.numel() for p in unet.parameters() if p.requires_grad)
    return {"variant": variant, "peak_mib": _hwm_mib(), "loaded_mib": loaded, "trainable_params": trainable}


def render(rows: list[dict[str, float]]) -> str:
    sft = next(r for r in rows if r["variant"] == "sft")
    lines = [
        "| variant | peak RSS (MiB) | over the loaded pipeline (MiB) | x SFT's growth | trainable parameters |",
        "|---|---:|---:|---:|---:|",
    ]
    base = sft["peak_mib"] - sft["loaded_mib"]
    for r in rows:
        growth = r["peak_mib"] - r["loaded_mib"]
        lines.append(
            f"| {r['variant']} | {r['peak_mib']:.0f} | {growth:.0f} | {growth / base:.2f} | {r['trainable_params']:,} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.model, args.batch, args.steps)))
        return
    rows = []
    for variant in VARIANTS:
        cmd = [
            sys.executable,
            __file__,
            "--variant",
            variant,
            "--batch",
            str(args.batch),
            "--steps",
            str(args.steps),
        ]
        if args.model:
            cmd += ["--model", args.model]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    print(render(rows))


if __name__ == "__main__":
    main()
