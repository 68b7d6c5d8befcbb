"""Opponent sampling at equal quality: our sampler against the naive loop, and DPM-Solver++ steps vs fidelity.

Naive is what many training scripts do: DDIM at 50 steps (SD-1.5 ships PNDM at
50; both are 50 UNet calls per image), one prompt at a time, decoded to a PNG
file and encoded again by the VAE before training. Ours is what
``sample_opponent`` runs by default: DPM-Solver++ in batches with
classifier-free guidance in one doubled batch, latents kept as they are.

Every image is judged by the toy world's oracle (prompt fidelity), so a speed-up
counts only together with the fidelity it keeps. Same prompts and seeds for
every setting; the steps curve decides the default step count from data.

    .venv/bin/python benchmarks/bench_sampling.py [--prompts 96] [--steps 5 8 10 15 20 30] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from _common import model_dir
from PIL import Image

from spin_diffusion.config.sampling import SamplingConfig
from spin_diffusion.data.encoding import encode_pixels
from spin_diffusion.infra.seeds import sample_seed
from spin_diffusion.model.loading import load_pipeline
from spin_diffusion.sampling.generate import decode_latents, generate_latents, use_scheduler
from spin_diffusion.toy.datasets import finetune_prompts
from spin_diffusion.toy.oracle import judge

GUIDANCE = SamplingConfig().guidance_scale  # what opponent sampling uses by default


def _scores(images: list[Image.Image], prompts: list[str]) -> list[float]:
    return [judge(im, p)["fidelity"] for im, p in zip(images, prompts, strict=True)]


def _mean_se(values: list[float]) -> tuple[float, float]:
    se = statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else float("nan")
    return statistics.fmean(values), se


def _fidelity(images: list[Image.Image], prompts: list[str]) -> tuple[float, float]:
    """Mean oracle fidelity and its standard error over images."""
    return _mean_se(_scores(images, prompts))


def naive(pipe, prompts: list[str], seeds: list[int], work: Path) -> tuple[float, list[Image.Image]]:
    """Seconds for the naive loop (sample, PNG round trip, re-encode) and the images it trained on."""
    import numpy as np

    use_scheduler(pipe, "ddim")
    images = []
    start = time.perf_counter()
    for k, (prompt, seed) in enumerate(zip(prompts, seeds, strict=True)):
        with torch.inference_mode():
            image = pipe(prompt, num_inference_steps=50, guidance_scale=GUIDANCE,
                         generator=torch.Generator().manual_seed(seed)).images[0]  # fmt: skip
        path = work / f"naive-{k}.png"
        image.save(path)
        loaded = Image.open(path).convert("RGB")
        pixels = torch.from_numpy(np.asarray(loaded, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)
        encode_pixels(pipe.vae, pixels[None])
        images.append(loaded)
    return time.perf_counter() - start, images


def ours(
    pipe, prompts: list[str], seeds: list[int], steps: int, batch: int
) -> tuple[float, list[Image.Image]]:
    """Seconds for batched DPM-Solver++ to latents (what training uses), and the decoded images (not timed)."""
    use_scheduler(pipe, "dpmsolver++")
    start = time.perf_counter()
    lat = generate_latents(
        pipe, prompts, seeds, num_inference_steps=steps, guidance_scale=GUIDANCE, batch_size=batch
    )
    seconds = time.perf_counter() - start
    return seconds, decode_latents(pipe, lat)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model")
    parser.add_argument("--prompts", type=int, default=96)
    parser.add_argument("--naive-prompts", type=int, default=40, help="the naive loop is slow: a subset")
    parser.add_argument("--steps", type=int, nargs="+", default=[5, 10, 15, 20, 30])
    parser.add_argument("--default-steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", type=Path, default=Path("/tmp/spin-bench-sampling"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    pipe = load_pipeline(model_dir(args.model))
    pipe.set_progress_bar_config(disable=True)
    prompts = finetune_prompts(args.prompts, seed=0)
    seeds = [sample_seed(0, f"p{i}", 0) for i in range(len(prompts))]
    m = args.naive_prompts

    rows = []
    naive_s, naive_images = naive(pipe, prompts[:m], seeds[:m], args.work)
    naive_scores = _scores(naive_images, prompts[:m])
    fid, se = _mean_se(naive_scores)
    rows.append({"setting": "naive: DDIM 50, batch 1, PNG + re-encode", "images": m, "steps": 50,
                 "img_per_s": m / naive_s, "fidelity": fid, "se": se})  # fmt: skip
    ours(pipe, prompts[: args.batch], seeds[: args.batch], 5, args.batch)  # warm-up
    for steps in args.steps:
        seconds, images = ours(pipe, prompts, seeds, steps, args.batch)
        fid, se = _fidelity(images, prompts)
        rows.append({"setting": f"DPM-Solver++ {steps}, batch {args.batch}, raw latents", "images": len(prompts),
                     "steps": steps, "img_per_s": len(prompts) / seconds, "fidelity": fid, "se": se})  # fmt: skip
        if steps == args.default_steps:
            _, same = ours(pipe, prompts[:m], seeds[:m], steps, args.batch)
            same_scores = _scores(same, prompts[:m])
            paired = [a - b for a, b in zip(same_scores, naive_scores, strict=True)]
            rows[-1]["fidelity_on_naive_subset"] = statistics.fmean(same_scores)
            rows[-1]["paired_difference"], rows[-1]["paired_se"] = _mean_se(paired)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    print(render(rows, args.default_steps))


def render(rows: list[dict], default_steps: int) -> str:
    lines = ["| sampler | images | img/s | oracle fidelity (± s.e.) |", "|---|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['setting']} | {r['images']} | {r['img_per_s']:.2f} | {r['fidelity']:.3f} ± {r['se']:.3f} |"
        )
    base = rows[0]
    default = next((r for r in rows if r["steps"] == default_steps and r is not base), None)
    if default is not None:
        lines += [
            "",
            f"Default ({default['setting']}) against naive: {default['img_per_s'] / base['img_per_s']:.1f}x images "
            f"per second; fidelity {default['fidelity_on_naive_subset']:.3f} vs {base['fidelity']:.3f} "
            f"on the same {base['images']} prompts and seeds (paired difference "
            f"{default['paired_difference']:+.3f} ± {default['paired_se']:.3f}).",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
