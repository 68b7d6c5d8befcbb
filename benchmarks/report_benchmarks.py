"""docs/benchmarks.md from the benchmarks' JSON: the tables they printed, plots, and the figures quoted in prose.

Every number in the page comes from this run's results; the prose only names
which measured value it quotes.
"""

from __future__ import annotations

import os
from pathlib import Path


def plots(results: dict, out_dir: Path) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures: dict[str, Path] = {}
    if "training_cost" in results:
        rows = results["training_cost"]["rows"]
        fig, ax = plt.subplots(figsize=(5, 3.2))
        for tuning, marker in (("full", "o"), ("lora", "s")):
            sel = [r for r in rows if r["tuning"] == tuning]
            b = [r["batch"] for r in sel]
            ax.plot(b, [r["live_x_sft"] for r in sel], marker=marker, label=f"{tuning}: live reference")
            ax.plot(b, [r["table_with_build_x_sft"] for r in sel], marker=marker, ls="--",
                    label=f"{tuning}: table + building it")  # fmt: skip
        ax.axhline(2.0, color="grey", lw=0.8, ls=":")
        ax.set_xlabel("batch (pairs)")
        ax.set_ylabel("cost per example / SFT")
        ax.set_xscale("log", base=2)
        ax.legend(fontsize=7)
        figures["training_cost"] = _save(fig, out_dir / "training_cost.png")
    if "sampling" in results:
        rows = [r for r in results["sampling"] if r["setting"].startswith("DPM")]
        naive = results["sampling"][0]
        fig, ax = plt.subplots(figsize=(5, 3.2))
        steps = [r["steps"] for r in rows]
        ax.errorbar(steps, [r["fidelity"] for r in rows], yerr=[r["se"] for r in rows], marker="o",
                    label="DPM-Solver++ (batched)")  # fmt: skip
        ax.axhline(naive["fidelity"], color="grey", ls="--", label="naive DDIM 50 (one by one)")
        ax.set_xlabel("solver steps")
        ax.set_ylabel("oracle fidelity")
        ax2 = ax.twinx()
        ax2.plot(steps, [r["img_per_s"] for r in rows], color="tab:orange", marker="x", label="img/s")
        ax2.set_ylabel("images / s", color="tab:orange")
        ax.legend(fontsize=7, loc="lower right")
        figures["sampling"] = _save(fig, out_dir / "sampling_steps.png")
    if "scale" in results:
        rows = results["scale"]
        fig, ax = plt.subplots(figsize=(5, 3.2))
        n = [r["n"] for r in rows]
        ax.plot(n, [r["anon_end_mib"] for r in rows], marker="o", label="own memory (RssAnon)")
        ax.plot(n, [r["file_end_mib"] for r in rows], marker="s", ls="--", label="mapped file pages")
        ax.set_xscale("log")
        ax.set_xlabel("prompts")
        ax.set_ylabel("MiB")
        ax.legend(fontsize=7)
        figures["scale"] = _save(fig, out_dir / "scale_memory.png")
    return figures


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def _span(rows: list[dict], key: str) -> str:
    lo, hi = min(r[key] for r in rows), max(r[key] for r in rows)
    return f"{lo:.2f}" if abs(hi - lo) < 0.005 else f"{lo:.2f}-{hi:.2f}"


def _rel(path: Path, base: Path) -> str:
    return os.path.relpath(path, base)


def render_page(
    machine: dict, results: dict, tables: dict, seconds: dict, figures: dict, command: str, docs: Path
) -> str:
    lines = [
        "# Benchmarks",
        "",
        f"Written by `{command}` on {machine['date']}; every figure below is from that one run. Ratios are "
        "measured within one benchmark, with the compared variants interleaved in every repeat and medians "
        "taken, because the machine is shared and noisy. Absolute times are CPU times of the toy model and "
        "say nothing about a GPU; the ratios are what carries over, and each section says how.",
        "",
        "| machine | |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in machine.items()],
        "",
        "| benchmark | wall seconds |",
        "|---|---:|",
        *[f"| {k} | {v:.0f} |" for k, v in seconds.items()],
        "",
    ]
    if "training_cost" in results:
        rows = {(r["tuning"], r["batch"]): r for r in results["training_cost"]["rows"]}
        full = [r for (t, _), r in rows.items() if t == "full"]
        lora = [r for (t, _), r in rows.items() if t == "lora"] or full
        lines += [
            "## Training cost per example against SFT",
            "",
            "One optimizer step of the project's own path (`compute_loss` + backward + AdamW) on the shipped toy "
            "base, per example (a pair for SPIN). *Floor*: a pairwise method must run a gradient pass over both "
            "members of every pair, which costs what SFT costs at twice the batch (`SFT at 2x batch`), plus, "
            "with a live reference, its no-grad forwards on them. The paper reports 73 s vs 37 s per 2,048 "
            "examples (1.97x) on 8 A100s.",
            "",
            tables["training_cost"],
            "",
            f"With a live reference, SPIN costs {_span(full, 'live_x_sft')}x SFT per example here (full "
            f"fine-tuning; LoRA {_span(lora, 'live_x_sft')}x), which is {_span(full, 'live_over_floor')}x its floor: "
            "both members of a pair go through the trained model in one concatenated forward and through the "
            "reference in one more. The precomputed table takes the reference's forward out of the step "
            f"({_span(full, 'table_x_sft')}x SFT), but building it costs that forward once per visited example; "
            f"counted together it is {_span(full, 'table_with_build_x_sft')}x SFT against the live path's "
            f"{_span(full, 'live_x_sft')}x: the table buys memory (no second UNet in training), not time. A ratio "
            "below 2x SFT is possible here because SFT at twice the batch costs "
            f"{_span(full, 'two_b_x_sft')}x SFT on this CPU (last column): batching amortises per-call overhead.",
            "",
        ]
        if "training_cost" in figures:
            lines += [f"![training cost]({_rel(figures['training_cost'], docs)})", ""]
    if "sampling" in results:
        rs = results["sampling"]
        naive = rs[0]
        default = next((r for r in rs[1:] if "fidelity_on_naive_subset" in r), None)
        lines += [
            "## Opponent sampling at equal quality",
            "",
            "Naive: DDIM at 50 steps (SD-1.5 ships PNDM at 50: the same number of UNet calls), one prompt at "
            "a time, decoded to PNG and encoded again for training. Ours: DPM-Solver++ batched with "
            "classifier-free guidance in one doubled batch, latents kept as they are "
            "(`sampling.latents: raw`). Every image is judged by the toy oracle, so speed counts only with the "
            "fidelity it keeps. The paper's rebuttal: 342 s to 56 s per 2,048 images (6.1x).",
            "",
            tables["sampling"],
            "",
        ]
        if default is not None:
            lines += [
                f"At the default step count, sampling runs {default['img_per_s'] / naive['img_per_s']:.1f}x the "
                f"naive loop's images per second. On the naive loop's {naive['images']} prompts and seeds its "
                f"fidelity is {default['fidelity_on_naive_subset']:.3f} against the naive loop's "
                f"{naive['fidelity']:.3f}: a paired difference of {default['paired_difference']:+.3f} ± "
                f"{default['paired_se']:.3f} (s.e.), "
                + (
                    "within two standard errors of zero."
                    if abs(default["paired_difference"]) <= 2 * default["paired_se"]
                    else "more than two standard errors from zero: the speed-up is not at equal quality."
                )
                + f" Across step counts, fidelity ranges {min(r['fidelity'] for r in rs[1:]):.3f}-"
                f"{max(r['fidelity'] for r in rs[1:]):.3f} (s.e. about {rs[1]['se']:.3f} each), images per "
                f"second {min(r['img_per_s'] for r in rs[1:]):.1f}-{max(r['img_per_s'] for r in rs[1:]):.1f}. "
                "On a GPU the batching part of the gain grows (a batch of 1 leaves most of the device idle) and "
                "the step-count part is the same ratio.",
                "",
            ]
        if "sampling" in figures:
            lines += [f"![steps vs fidelity]({_rel(figures['sampling'], docs)})", ""]
    if "memory" in results:
        lines += [
            "## Peak memory of one training process",
            "",
            "A fresh process per variant; peak resident set after a few optimizer steps. On the toy model the "
            "weights are small (a UNet copy is a few MiB), so the differences here are activations and optimizer "
            "state; at SD-1.5 scale a live full-precision reference adds a second 860M-parameter UNet (3.4 GB in "
            "fp32, 1.7 GB in fp16), which the precomputed table and LoRA (the base with adapters disabled is the "
            "reference) both avoid, and AdamW state shrinks with the trainable parameter count.",
            "",
            tables["memory"],
            "",
        ]
    if "iteration" in results:
        lines += [
            "## One SPIN iteration end to end",
            "",
            "The real command (`spin-diffusion train` on configs/toy-spin.yaml with a small budget and the "
            "precomputed reference, so the reference pass is its own phase); phase times as the run records "
            "them (`results.json: phase_seconds`, `iter-1/iteration.json: seconds`).",
            "",
            tables["iteration"],
            "",
        ]
    if "study" in results:
        lines += [
            "## Where a reproduction study's time goes",
            "",
            "`toy reproduce` on one seed at a small budget (the default solver steps, guidance and batch; fewer "
            "pairs, steps and held-out prompts), split as the study reports it (each run's opponent sampling, "
            "reference, training and set-up from its records, the evaluation timed around it); then the cost per "
            "opponent sample, per optimizer step of each run and per evaluation image, times the default study's "
            "counts (its iteration-1-continued run links SPIN iteration 1's samples). Fixed start-up costs make "
            "the small run's units dearer: read the projected shares, not absolute times.",
            "",
            tables["study"],
            "",
        ]
    if "scale" in results:
        small, large = results["scale"][0], results["scale"][-1]
        lines += [
            "## Scale: what grows with the data",
            "",
            "A synthetic run directory in SD-1.5 latent shape (4x64x64 fp16, 32 KiB per latent), written by the "
            "project's own cache and sample writers, opened in a fresh process per size as SPIN training opens "
            "it, then micro-batches drawn through the real `SelfPlayData` / `make_batch` path over three "
            f"epochs. The largest size here is {large['n']:,} prompts ({large['n'] * 64 / 2**20:.1f} GiB of real and "
            "generated latents; kept at that so `make bench` fits its time budget, `bench_scale.py --sizes` takes "
            "larger counts); the exact per-prompt figure extrapolates to Pick-a-Pic's ~10^6.",
            "",
            tables["scale"],
            "",
            "Latents are memory-mapped and read per row; ids and captions are kept as flat UTF-8 buffers with "
            "offsets and the id index as sorted hashes (`spin_diffusion/compact.py`), not Python lists and dicts. "
            f"Data time per micro-batch of 8: {small['batch_ms_median']:.1f} ms median at {small['n']:,} prompts, "
            f"{large['batch_ms_median']:.1f} ms at {large['n']:,} (each example of a batch is in a different shard, "
            "read from disk when it is not in the page cache).",
            "",
        ]
        if "scale" in figures:
            lines += [f"![memory against data size]({_rel(figures['scale'], docs)})", ""]
    if "levers" in results:
        lines += [
            "## Throughput levers",
            "",
            "Each lever alone against the eager baseline (SPIN step with a live reference, full fine-tuning), "
            "interleaved, medians; *first step* includes set-up and, for `torch.compile`, compiling"
            + {
                True: " (inductor's cache directory was not empty at the start, so part of the compile may "
                "have been reused; an empty cache can only take longer).",
                False: " (inductor's cache was empty: this is the full one-off compile).",
                None: ".",
            }[results["levers"].get("cache_warm")],  # fmt: skip
            " `make bench` compiles at one shape only, the sampling UNet's (inference); the training step's "
            "compiled row is the one last measured with `benchmarks/bench_levers.py --compile both` "
            "(docs/benchmarks/levers_training_compile.json), shown with its date, because compiling forward and "
            "backward alone took about 4 minutes of the 10 that `make bench` may take.",
            "",
            tables["levers"],
            "",
            "What to expect on a GPU (not measurable here): `torch.compile` of the UNet usually gives a "
            "noticeable step-time gain once compiled (opt-in: `training.compile`, `sampling.compile`); "
            "channels-last helps convolution-heavy UNets on tensor cores (`training.channels_last`); SDPA is "
            "diffusers' default attention and on a GPU selects flash / memory-efficient kernels (the classic "
            "processor is the comparison); fused AdamW replaces many small kernels with one (used whenever the "
            "device supports it); `set_to_none` gradients save a memset per step and are always on. On this CPU "
            "the table says which of them pays here and which costs.",
            "",
        ]
    from report_real_shapes import sections

    lines += sections(docs / "benchmarks")
    return "\n".join(lines)
