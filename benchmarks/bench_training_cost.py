"""Training cost per example against SFT: SPIN with a live reference, with a precomputed table, full and LoRA.

Each timed call is one optimizer step of the project's own path
(``compute_loss`` + backward + AdamW step) on the shipped toy base. The
methods are interleaved inside every repeat, so a slow moment of the machine
hits all of them; the figure is the median over repeats.

The floor for a pairwise method: one gradient pass over both members of each
pair (SFT at twice the batch) plus the reference's forwards on them (a live
reference) or nothing (a precomputed table, whose building pass costs one
reference forward per pair, counted separately and added).

    .venv/bin/python benchmarks/bench_training_cost.py [--batches 8 16 32] [--repeats 7] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from _common import conditioning, model_dir, toy_batch

from spin_diffusion.config.run import TrainingConfig
from spin_diffusion.model.loading import load_pipeline
from spin_diffusion.model.lora import LoraSettings, add_lora
from spin_diffusion.model.prediction import training_scheduler
from spin_diffusion.model.weights import frozen_copy
from spin_diffusion.training.losses import compute_loss
from spin_diffusion.training.reference import ModuleReference, PrecomputedReference


def _step(method: str, unet: torch.nn.Module, opt: torch.optim.Optimizer, ref, batch, emb, sched) -> None:
    cfg = TrainingConfig(beta=2000)
    compute_loss(method, cfg, unet, sched, ref, batch, emb).loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def _timed(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(pipe, batch_size: int, repeats: int, lora: bool) -> dict[str, float]:
    """Median seconds per optimizer step of each path at this batch size."""
    sched = training_scheduler(pipe)
    unet = frozen_copy(pipe.unet)
    if lora:
        add_lora(unet, LoraSettings(rank=4, alpha=4.0))
        reference = ModuleReference(unet, sched, disable_adapters=True)
    else:
        unet.requires_grad_(True)
        reference = ModuleReference(frozen_copy(pipe.unet), sched)
    unet.train()
    opt = torch.optim.AdamW([p for p in unet.parameters() if p.requires_grad], lr=1e-6)
    pairs = toy_batch(pipe, batch_size, paired=True, seed=batch_size)
    singles = toy_batch(pipe, 2 * batch_size, paired=False, seed=batch_size + 1)
    sft_b = toy_batch(pipe, batch_size, paired=False, seed=batch_size + 2)
    emb = conditioning(pipe, pairs.captions)
    emb2 = conditioning(pipe, singles.captions)
    table = PrecomputedReference(torch.rand(1, batch_size, 2))

    def ref_forward() -> None:  # what building the table costs per pair: one no-grad pass over both members
        latents = torch.cat([pairs.latents_a, pairs.latents_b])
        reference.errors(pairs, latents, emb.pair())

    paths: dict[str, Callable[[], None]] = {
        "sft": lambda: _step("sft", unet, opt, None, sft_b, emb, sched),
        "sft_2b": lambda: _step("sft", unet, opt, None, singles, emb2, sched),
        "spin_live": lambda: _step("spin", unet, opt, reference, pairs, emb, sched),
        "spin_table": lambda: _step("spin", unet, opt, table, pairs, emb, sched),
        "ref_forward": ref_forward,
    }
    for fn in paths.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in paths}
    for _ in range(repeats):
        for name, fn in paths.items():
            times[name].append(_timed(fn))
    return {k: statistics.median(v) for k, v in times.items()}


def per_example_rows(results: dict[str, dict[str, float]]) -> list[dict[str, float | str]]:
    rows = []
    for key, t in results.items():
        tuning, b = key.split("/")
        b = int(b)
        sft = t["sft"] / b
        floor_live = (t["sft_2b"] + t["ref_forward"]) / b
        floor_table = t["sft_2b"] / b
        rows.append(
            {
                "tuning": tuning,
                "batch": b,
                "sft_ms_per_example": 1000 * sft,
                "live_x_sft": t["spin_live"] / b / sft,
                "table_x_sft": t["spin_table"] / b / sft,
                "table_with_build_x_sft": (t["spin_table"] + t["ref_forward"]) / b / sft,
                "floor_live_x_sft": floor_live / sft,
                "live_over_floor": t["spin_live"] / b / floor_live,
                "table_over_floor": t["spin_table"] / b / floor_table,
                "two_b_x_sft": t["sft_2b"] / t["sft"],
            }
        )
    return rows


def render(rows: list[dict[str, float | str]]) -> str:
    lines = [
        "| tuning | batch (pairs) | SFT ms/example | SPIN live ref. (x SFT) | SPIN table (x SFT) "
        "| SPIN table + building it (x SFT) | floor, live (x SFT) | live / its floor | table / its floor "
        "| SFT at 2x batch (x SFT) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['tuning']} | {r['batch']} | {r['sft_ms_per_example']:.2f} | {r['live_x_sft']:.2f} "
            f"| {r['table_x_sft']:.2f} | {r['table_with_build_x_sft']:.2f} | {r['floor_live_x_sft']:.2f} "
            f"| {r['live_over_floor']:.2f} | {r['table_over_floor']:.2f} | {r['two_b_x_sft']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model")
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    pipe = load_pipeline(model_dir(args.model))
    results = {}
    for tuning in ("full", "lora"):
        for b in args.batches:
            results[f"{tuning}/{b}"] = measure(pipe, b, args.repeats, lora=tuning == "lora")
    rows = per_example_rows(results)
    if args.json:
        args.json.write_text(json.dumps({"raw_seconds": results, "rows": rows}, indent=2))
    print(render(rows))


if __name__ == "__main__":
    main()
