"""Peak memory and SPIN/SFT cost at the real architectures (random weights), each path against its floor.

Each path is the project's own ``train`` (``selfplay.driver.run``) on a
real-architecture pipeline built offline (``real_builders``), run in a fresh
process so that its peak resident set (VmHWM) is its own:

- ``sft``, ``spin-live`` (the reference is a live frozen copy), ``spin-table``
  (precomputed reference errors): full fine-tuning;
- ``lora-sft``, ``lora-spin``: a rank-8 LoRA, the reference is the same
  network with the adapter disabled.

The floor of a path is what it cannot do without: the trained network's
weights, gradients and two AdamW moments (fp32: 16 bytes a parameter; LoRA:
the frozen base at 4 bytes plus 16 per adapter parameter), one frozen
reference copy where the reference is live (full fine-tuning), the VAE and
text encoders, and the process's own start-up (Python, torch, diffusers:
measured in the child before any model is built). Above it are activations
and whatever else the code keeps.

    .venv/bin/python benchmarks/bench_real_shapes.py --arch sd15 --arch sdxl     # real size: ~20 GB peak
    .venv/bin/python benchmarks/bench_real_shapes.py --width-divisor 4 --json /tmp/r.json   # checks the code

``--width-divisor`` d builds the same architectures with channel widths / d
(parameters about / d^2); only d = 1 gives the real numbers. Images are
256 px by default (UNet sample size 32): the published sizes are 512-1024.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

#: path -> (method, lora, precompute_reference)
PATHS = {
    "sft": ("sft", False, False),
    "spin-live": ("spin", False, False),
    "spin-table": ("spin", False, True),
    "lora-sft": ("sft", True, False),
    "lora-spin": ("spin", True, False),
}
#: the paths measured per architecture by default: full fine-tuning for SD-1.5, LoRA for SDXL
DEFAULT_PATHS = {"sd15": ["sft", "spin-live", "spin-table"], "sdxl": ["lora-sft", "lora-spin"]}
LORA_RANK = 8
GIB = 2**30


def _rss(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field} (this benchmark needs Linux)")


def make_data(root: Path, examples: int, resolution: int) -> Path:
    """An imagefolder of ``examples`` random images with captions (what ``train`` reads)."""
    import numpy as np
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    with open(root / "metadata.jsonl", "w") as f:
        for i in range(examples):
            pixels = rng.integers(0, 256, (resolution, resolution, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / f"{i}.png")
            f.write(json.dumps({"file_name": f"{i}.png", "text": f"a photo of a red cube number {i}"}) + "\n")
    return root


def run_config(path: str, pipeline: Path, data: Path, out: Path, args: argparse.Namespace) -> dict:
    """The ``train`` config of one path: few steps, no checkpoint, no evaluation, no validation images."""
    method, lora, table = PATHS[path]
    iterations = args.iterations if method == "spin" else 1
    return {
        "name": path,
        "output_dir": str(out),
        "method": method,
        "model": {
            "pretrained": str(pipeline),
            "lora": {"enabled": lora, "rank": LORA_RANK, "alpha": LORA_RANK},
        },
        "data": {"source": "imagefolder", "path": str(data), "resolution": args.resolution},
        "sampling": {"num_inference_steps": args.sample_steps, "batch_size": args.batch, "num_previews": 0},
        "training": {
            "batch_size": args.batch,
            "max_steps": args.steps,
            "checkpointing_steps": 10_000,
            "precompute_reference": table,
            "validation_prompts": 0,
            "trackers": [],
            "mixed_precision": args.mixed_precision,
            "gradient_checkpointing": args.gradient_checkpointing,
        },
        "iterations": [{"beta": 2000, "max_steps": args.steps}] * iterations,
    }


def child(path: str, pipeline: Path, data: Path, out: Path, args: argparse.Namespace) -> dict:
    """In this fresh process: one ``train`` run of ``path``; its peak RSS and per-iteration train seconds."""
    import torch

    torch.set_num_threads(args.threads)
    import diffusers  # noqa: F401 - counted in the start-up, as every run imports it

    from spin_diffusion.config.run import validate_config
    from spin_diffusion.selfplay.driver import run

    startup = _rss("VmRSS")
    shutil.rmtree(out / path, ignore_errors=True)  # a finished run in a reused --work would resume as a no-op
    cfg = validate_config(run_config(path, pipeline, data, out, args), source=path)
    start = time.perf_counter()
    results = run(cfg, show_progress=False)
    wall = time.perf_counter() - start
    train = [it["seconds"].get("train", 0.0) for it in results["iterations"]]
    return {"path": path, "peak": _rss("VmHWM"), "startup": startup, "train_s": train, "wall_s": wall}


def floors(arch: str, path: str, counts: dict[str, int], lora_params: int) -> dict[str, int]:
    """Bytes a path cannot do without, by part (fp32 everywhere: the CPU runs are fp32)."""
    _, lora, table = PATHS[path]
    p = counts["denoiser"]
    parts = {"frozen VAE + text encoders": 4 * sum(v for k, v in counts.items() if k != "denoiser")}
    if lora:
        parts["base network (frozen)"] = 4 * p
        parts["adapter weights, grads, AdamW"] = 16 * lora_params
    else:
        parts["trained network: weights, grads, AdamW"] = 16 * p
        if path == "spin-live":
            parts["frozen reference copy"] = 4 * p
    return parts


def lora_parameter_count(pipe_dir: Path) -> int:
    """Adapter parameters of the rank-8 LoRA on the default targets (built on the meta device)."""
    import torch
    from diffusers import UNet2DConditionModel

    from spin_diffusion.model.lora import LoraSettings, add_lora

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(str(pipe_dir / "unet")))
        add_lora(unet, LoraSettings(rank=LORA_RANK, alpha=LORA_RANK))
    return sum(p.numel() for p in unet.parameters() if p.requires_grad)


def measure(arch: str, args: argparse.Namespace, work: Path) -> list[dict]:
    """Build and save ``arch``'s pipeline, then run each of its paths in a fresh process."""
    from real_builders import build_pipeline, parameter_counts

    pipe_dir = work / arch / "pipeline"
    if not (pipe_dir / "model_index.json").is_file():
        build_pipeline(arch, args.width_divisor, args.resolution, bpe=args.clip_bpe).save_pretrained(
            str(pipe_dir)
        )
    counts = parameter_counts(arch, args.width_divisor, args.resolution)
    lora_params = lora_parameter_count(pipe_dir)
    make_data(work / "data", args.examples, args.resolution)
    rows = []
    for path in args.paths or DEFAULT_PATHS[arch]:
        cmd = [
            sys.executable,
            __file__,
            *sys.argv[1:],
            "--child",
            path,
            "--child-arch",
            arch,
            "--work",
            str(work),
        ]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise SystemExit(f"{arch} {path} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        parts = floors(arch, path, counts, lora_params)
        row.update(arch=arch, floor_parts=parts, floor=row["startup"] + sum(parts.values()), params=counts)
        row["per_example_s"] = sum(row["train_s"]) / (len(row["train_s"]) * args.steps * args.batch)
        rows.append(row)
        print(
            f"{arch} {path}: peak {row['peak'] / GIB:.2f} GiB, floor {row['floor'] / GIB:.2f}",
            file=sys.stderr,
        )
    return rows


def render(rows: list[dict], args: argparse.Namespace) -> str:
    scale = (
        "real size"
        if args.width_divisor == 1
        else f"channel widths / {args.width_divisor} (NOT the real size)"
    )
    lines = [
        f"{args.resolution} px, batch {args.batch}, {args.steps} steps per iteration, SPIN {args.iterations} "
        f"iterations, {args.mixed_precision} precision, "
        f"{'gradient checkpointing, ' if args.gradient_checkpointing else ''}{scale}.",
        "",
        "| architecture | path | denoiser parameters | peak RSS (GiB) | floor (GiB) | peak / floor | above floor (GiB) "
        "| s per example (train) | x SFT |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        sft = next((s for s in rows if s["arch"] == r["arch"] and PATHS[s["path"]][0] == "sft"), None)
        ratio = f"{r['per_example_s'] / sft['per_example_s']:.2f}" if sft else "-"
        lines.append(
            f"| {r['arch']} | {r['path']} | {r['params']['denoiser']:,} | {r['peak'] / GIB:.2f} | {r['floor'] / GIB:.2f} "
            f"| {r['peak'] / r['floor']:.2f} | {(r['peak'] - r['floor']) / GIB:.2f} | {r['per_example_s']:.2f} | {ratio} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--arch", action="append", choices=sorted(DEFAULT_PATHS), help="default: sd15 and sdxl"
    )
    parser.add_argument(
        "--paths", nargs="+", choices=list(PATHS), help="default: per architecture, see above"
    )
    parser.add_argument("--width-divisor", type=int, default=1)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--examples", type=int, default=4)
    parser.add_argument("--sample-steps", type=int, default=2)
    parser.add_argument("--mixed-precision", choices=["no", "bf16"], default="no")
    parser.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        help="training.gradient_checkpointing: shows how much of the excess over the floor is activations",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clip-bpe", type=Path, help="open_clip wheel or bpe_simple_vocab_16e6.txt.gz")
    parser.add_argument(
        "--work", type=Path, help="where pipelines and runs go (default: a temporary directory)"
    )
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path, help="also write the table (with its command) here")
    parser.add_argument("--child", choices=list(PATHS), help=argparse.SUPPRESS)
    parser.add_argument("--child-arch", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        work = args.work / args.child_arch
        print(json.dumps(child(args.child, work / "pipeline", args.work / "data", work / "runs", args)))
        return
    work = args.work or Path(tempfile.mkdtemp(prefix="spin-real-shapes-"))
    rows = [row for arch in (args.arch or ["sd15", "sdxl"]) for row in measure(arch, args, work)]
    table = render(rows, args)
    if args.json:
        args.json.write_text(
            json.dumps(
                {"settings": vars(args) | {"json": None, "work": None, "markdown": None}, "rows": rows},
                indent=2,
                default=str,
            )
        )
    if args.markdown:
        command = " ".join(["benchmarks/bench_real_shapes.py", *sys.argv[1:]])
        args.markdown.write_text(f"Written by `{command}` on {time.strftime('%Y-%m-%d')}.\n\n{table}\n")
    print(table)


if __name__ == "__main__":
    main()
