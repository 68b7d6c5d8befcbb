"""Throughput levers that pay on a GPU, measured here on CPU: compile, channels-last, SDPA, fused AdamW, set_to_none.

Each lever is switched on alone against the same eager baseline (SPIN step with
a live reference: ``compute_loss`` + backward + AdamW step, full fine-tuning),
interleaved within every repeat; medians. ``torch.compile`` is also timed for
opponent sampling, with its one-off compile time reported apart.

Compiling is most of this benchmark's time (2026-12-01, 2 cores: 234 s for the
training step's forward and backward, 110 s for sampling), so ``make bench``
compiles at one shape only: sampling (``--compile sampling``, the default).
The training step's compiled row is then the one recorded by the last run
that measured it (``--compile both``), shown as recorded with its date.

    .venv/bin/python benchmarks/bench_levers.py [--batch 16] [--repeats 7] [--compile both] [--json OUT]
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import time
from pathlib import Path

import torch
from _common import conditioning, model_dir, toy_batch

from spin_diffusion.config.run import TrainingConfig
from spin_diffusion.infra.seeds import sample_seed
from spin_diffusion.model.loading import load_pipeline
from spin_diffusion.model.prediction import training_scheduler
from spin_diffusion.model.weights import frozen_copy
from spin_diffusion.sampling.generate import generate_latents, use_scheduler
from spin_diffusion.training.losses import compute_loss
from spin_diffusion.training.reference import ModuleReference


class Variant:
    """A trained UNet, its reference and optimizer, set up with one lever."""

    def __init__(self, pipe, batch, emb, lever: str) -> None:
        from diffusers.models.attention_processor import AttnProcessor

        self.sched = training_scheduler(pipe)
        self.unet = frozen_copy(pipe.unet)
        ref_unet = frozen_copy(pipe.unet)
        if lever == "classic attention (no SDPA)":
            self.unet.set_attn_processor(AttnProcessor())
            ref_unet.set_attn_processor(AttnProcessor())
        if lever == "channels-last":
            self.unet.to(memory_format=torch.channels_last)
            ref_unet.to(memory_format=torch.channels_last)
        self.unet.requires_grad_(True)
        self.unet.train()
        params = [p for p in self.unet.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(params, lr=1e-6, fused=lever == "fused AdamW")
        self.set_to_none = lever != "zero_grad(set_to_none=False)"
        model = torch.compile(self.unet) if lever == "torch.compile" else self.unet
        self.model = model
        self.reference = ModuleReference(ref_unet, self.sched)
        self.batch, self.emb = batch, emb
        if lever == "channels-last":
            self.batch.latents_a = batch.latents_a.contiguous(memory_format=torch.channels_last)
            self.batch.latents_b = batch.latents_b.contiguous(memory_format=torch.channels_last)
        self.cfg = TrainingConfig(beta=2000)

    def step(self) -> None:
        compute_loss(
            "spin", self.cfg, self.model, self.sched, self.reference, self.batch, self.emb
        ).loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=self.set_to_none)


LEVERS = (
    "eager baseline",
    "channels-last",
    "classic attention (no SDPA)",
    "fused AdamW",
    "zero_grad(set_to_none=False)",
    "torch.compile",
)
#: the training step's torch.compile row as last measured (``--compile both`` rewrites it)
COMPILE_RECORD = (
    Path(__file__).resolve().parent.parent / "docs" / "benchmarks" / "levers_training_compile.json"
)


def training_levers(pipe, batch_size: int, repeats: int, compile_training: bool) -> list[dict]:
    levers = LEVERS if compile_training else LEVERS[:-1]
    batches = {lever: toy_batch(pipe, batch_size, paired=True, seed=0) for lever in levers}
    emb = conditioning(pipe, batches[LEVERS[0]].captions)
    variants, setup = {}, {}
    for lever in levers:
        start = time.perf_counter()
        variants[lever] = Variant(pipe, batches[lever], emb, lever)
        variants[lever].step()  # warm-up; for torch.compile this is where compiling happens
        setup[lever] = time.perf_counter() - start
    times: dict[str, list[float]] = {lever: [] for lever in levers}
    for _ in range(repeats):
        for lever, v in variants.items():
            start = time.perf_counter()
            v.step()
            times[lever].append(time.perf_counter() - start)
    base = statistics.median(times["eager baseline"])
    return [
        {
            "lever": lever,
            "step_ms": 1000 * statistics.median(t),
            "speedup": base / statistics.median(t),
            "first_step_s": setup[lever],
        }  # fmt: skip
        for lever, t in times.items()
    ]


def sampling_compile(pipe, prompts: int, repeats: int) -> dict:
    use_scheduler(pipe, "dpmsolver++")
    texts = [f"a red circle on the left {i}" for i in range(prompts)]
    seeds = [sample_seed(0, t, 0) for t in texts]

    def run() -> None:
        generate_latents(pipe, texts, seeds, num_inference_steps=20, guidance_scale=7.5, batch_size=prompts)

    def timed() -> float:
        start = time.perf_counter()
        run()
        return time.perf_counter() - start

    eager_unet = pipe.unet
    first_eager = timed()
    pipe.unet = torch.compile(eager_unet)
    first_compiled = timed()
    eager, compiled = [], []
    for _ in range(repeats):
        pipe.unet = eager_unet
        eager.append(timed())
        pipe.unet = torch.compile(eager_unet)  # cached: no recompilation
        compiled.append(timed())
    pipe.unet = eager_unet
    return {
        "prompts": prompts,
        "eager_s": statistics.median(eager),
        "compiled_s": statistics.median(compiled),
        "compile_overhead_s": first_compiled - first_eager,
    }


def recorded_compile_row() -> dict | None:
    """The training step's compile row from the last run that measured it (None if never recorded)."""
    if not COMPILE_RECORD.is_file():
        return None
    return {**json.loads(COMPILE_RECORD.read_text()), "recorded": True}


def render(rows: list[dict], sampling: dict | None) -> str:
    lines = [
        "| lever (alone, vs eager) | step (ms) | speed-up | first step (s) |",
        "|---|---:|---:|---:|",
    ]
    for r in rows:
        name = f"{r['lever']} (recorded {r['date']}, not re-measured)" if r.get("recorded") else r["lever"]
        lines.append(f"| {name} | {r['step_ms']:.1f} | {r['speedup']:.2f}x | {r['first_step_s']:.1f} |")
    if sampling is None:
        return "\n".join(lines)
    lines += [
        "",
        f"Sampling {sampling['prompts']} prompts (DPM-Solver++ 20, one batch): eager {sampling['eager_s']:.2f} s, "
        f"compiled {sampling['compiled_s']:.2f} s ({sampling['eager_s'] / sampling['compiled_s']:.2f}x); "
        f"compiling cost {sampling['compile_overhead_s']:.0f} s once.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--sample-prompts", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--compile",
        choices=["sampling", "both", "none"],
        default="sampling",
        help="what torch.compile is measured for (each is a one-off compile of minutes on CPU)",
    )
    parser.add_argument("--json", type=Path)
    cache = parser.add_mutually_exclusive_group()
    cache.add_argument("--cache-was-warm", dest="warm", action="store_const", const=True)
    cache.add_argument("--cache-was-cold", dest="warm", action="store_const", const=False)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    pipe = load_pipeline(model_dir(args.model))
    pipe.set_progress_bar_config(disable=True)
    rows = training_levers(pipe, args.batch, args.repeats, compile_training=args.compile == "both")
    if args.compile == "both":
        row = {**rows[-1], "date": datetime.date.today().isoformat(), "batch": args.batch}
        COMPILE_RECORD.write_text(json.dumps(row, indent=2) + "\n")
    elif (recorded := recorded_compile_row()) is not None:
        rows.append(recorded)
    sampling = None
    if args.compile != "none":
        sampling = sampling_compile(pipe, args.sample_prompts, max(1, args.repeats // 2))
    if args.json:
        args.json.write_text(
            json.dumps({"training": rows, "sampling": sampling, "cache_warm": args.warm}, indent=2)
        )
    print(render(rows, sampling))


if __name__ == "__main__":
    main()
