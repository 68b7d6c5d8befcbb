"""What the engine does with a paper-sized data set: start-up, memory, data time, manifest sizes.

Builds synthetic run data in SD-1.5 latent shape (4x64x64 fp16) with the
project's own writers: a real-latent cache (as ``ensure_latent_cache`` writes
it) and one iteration's opponent samples (as ``sample_opponent`` writes them).
Then, in a fresh process per size, opens both as SPIN training does and draws
training micro-batches through the real ``SelfPlayData`` / ``make_batch`` path.
Nothing touches a model: this measures what grows with the number of prompts.

    .venv/bin/python benchmarks/bench_scale.py [--sizes 300 3000 30000] [--work DIR] [--json OUT]

Disk: about 64 KiB per prompt (real + generated latent). Memory is the peak
resident set of the measuring process, so it includes torch itself.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

LATENT_SHAPE = (4, 64, 64)  # SD-1.5 at 512 px
SHARD = 1024
SIZE_COND = (512, 512, 0, 0, 512, 512)  # each image seen whole at 512 px


def _caption(i: int) -> str:
    words = ("a", "photo", "of", "red", "blue", "cat", "dog", "on", "the", "left", "right", "street")
    return " ".join(words[(i * 7 + k * 3) % len(words)] for k in range(10)) + f" {i}"


def build(root: Path, n: int) -> None:
    """Write an n-prompt latent cache and opponent-sample directory under ``root`` (skipped if done)."""
    import torch
    from safetensors.torch import save_file

    from spin_diffusion.data.latents import FORMAT_VERSION, MANIFEST, _ShardWriter
    from spin_diffusion.infra.atomic import atomic_file, write_json_atomic

    done = root / "built.json"
    record = {"n": n, "cache_format": FORMAT_VERSION}
    if done.is_file() and json.loads(done.read_text()) == record:
        return
    shutil.rmtree(root, ignore_errors=True)  # made by another version of the cache writer
    cache_dir, samples_dir = root / "latents", root / "samples"
    cache_dir.mkdir(parents=True, exist_ok=True)
    samples_dir.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    manifest = {
        "key": "synthetic",
        "settings": {"pairs": False, "random_flip": False},
        "shards": [],
        "count": 0,
    }
    writer = _ShardWriter(cache_dir, manifest, ["latents"], SHARD)
    shards = []
    for start in range(0, n, SHARD):
        ids = [f"ex-{i:07d}" for i in range(start, min(n, start + SHARD))]
        block = torch.randn(len(ids), *LATENT_SHAPE, generator=gen)
        for j, ex_id in enumerate(ids):
            writer.add(ex_id, _caption(start + j), {"latents": block[j]}, {"latents": SIZE_COND})
        name = f"shard-{len(shards):05d}.safetensors"
        gen_lat = torch.randn(len(ids), 1, *LATENT_SHAPE, generator=gen).to(torch.float16)
        with atomic_file(samples_dir / name) as tmp:
            save_file({"latents": gen_lat}, str(tmp), metadata={"ids": json.dumps(ids)})
        shards.append({"file": name, "ids": ids})
    writer.flush()
    manifest["complete"] = True
    write_json_atomic(cache_dir / MANIFEST, manifest, sort_keys=True)
    samples_manifest = {"identity": {}, "num_prompts": n, "samples_per_prompt": 1, "shards": shards}
    write_json_atomic(samples_dir / MANIFEST, samples_manifest)
    write_json_atomic(done, record)


def _status_mib(field: str) -> float:
    """A memory figure of this process from /proc/self/status, in MiB.

    VmHWM is the peak resident set (ru_maxrss would carry the parent's peak
    across exec); RssAnon is the process's own memory; RssFile counts pages of
    memory-mapped files, which the kernel can drop at any time.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field} (this benchmark needs Linux)")


def _rss_mib() -> float:
    return _status_mib("VmHWM")


def measure(root: Path, batches: int, batch_size: int) -> dict[str, float]:
    """In this (fresh) process: open the data as SPIN training does and time micro-batches."""
    import torch

    from spin_diffusion.data.latents import MANIFEST, LatentCache
    from spin_diffusion.sampling.samples import OpponentSamples
    from spin_diffusion.selfplay.training_data import SelfPlayData
    from spin_diffusion.training.batches import make_batch, micro_batch_items

    torch.set_num_threads(1)
    base = _status_mib("RssAnon")
    t0 = time.perf_counter()
    cache_dir = root / "latents"
    cache = LatentCache(cache_dir, json.loads((cache_dir / MANIFEST).read_text()))
    samples = OpponentSamples(root / "samples")
    data = SelfPlayData(cache, False, samples)
    startup = time.perf_counter() - t0
    opened = _status_mib("RssAnon")
    n = len(data)
    per_epoch = max(1, n // batch_size)
    steps = [int(s) for s in torch.linspace(0, 3 * per_epoch - 1, batches)]  # spread over 3 epochs
    times = []
    for m in steps:
        t = time.perf_counter()
        items = micro_batch_items(n, m, batch_size=batch_size, rank=0, world_size=1, seed=0)
        make_batch(data, items, seed=0, num_train_timesteps=1000)
        times.append(time.perf_counter() - t)
    peak_anon = _status_mib("RssAnon")
    gc.collect()
    with contextlib.suppress(OSError):  # return freed heap to the OS: RssAnon then shows what is held
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    held = cache.ids.nbytes + cache.captions.nbytes + samples._ids.nbytes + samples._index.nbytes
    return {
        "n": n,
        "anon_before_trim_mib": peak_anon,
        "held_bytes_per_prompt": held / n,
        "startup_s": startup,
        "anon_imports_mib": base,
        "anon_opened_mib": opened,
        "anon_end_mib": _status_mib("RssAnon"),
        "file_end_mib": _status_mib("RssFile"),
        "rss_peak_mib": _rss_mib(),
        "batch_ms_median": 1000 * statistics.median(times),
        "batch_ms_max": 1000 * max(times),
        "manifest_kib_latents": (cache_dir / MANIFEST).stat().st_size / 1024,
        "manifest_kib_samples": (root / "samples" / MANIFEST).stat().st_size / 1024,
        "open_files": len(os.listdir(f"/proc/{os.getpid()}/fd")) if Path("/proc").is_dir() else -1,
    }


def run(sizes: list[int], work: Path, batches: int, batch_size: int) -> list[dict[str, float]]:
    rows = []
    for n in sizes:
        root = work / f"n{n}"
        build(root, n)
        cmd = [
            sys.executable,
            __file__,
            "--measure",
            str(root),
            "--batches",
            str(batches),
            "--batch",
            str(batch_size),
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    return rows


def render(rows: list[dict[str, float]]) -> str:
    lines = [
        "| prompts | start-up (s) | own memory (MiB, RssAnon) | change over imports (MiB) | mapped file pages (MiB) "
        "| data time / batch (ms, median / max) | manifests (KiB: latents / samples) | open files |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['n']:,} | {r['startup_s']:.2f} | {r['anon_end_mib']:.0f} "
            f"| {r['anon_end_mib'] - r['anon_imports_mib']:.1f} | {r['file_end_mib']:.0f} "
            f"| {r['batch_ms_median']:.1f} / {r['batch_ms_max']:.1f} "
            f"| {r['manifest_kib_latents']:.0f} / {r['manifest_kib_samples']:.0f} | {r['open_files']} |"
        )
    lo, hi = rows[-2], rows[-1]
    ratio = hi["anon_end_mib"] / lo["anon_end_mib"]
    growth = (hi["anon_end_mib"] - hi["anon_imports_mib"]) - (lo["anon_end_mib"] - lo["anon_imports_mib"])
    per_item = 1024 * 1024 * growth / max(1, hi["n"] - lo["n"])
    lines += [
        "",
        f"Own memory at {hi['n']:,} prompts is {ratio:.2f}x that at {lo['n']:,} (goal: within 1.2x). "
        f"Measured growth: about {per_item:.0f} bytes per prompt; the per-prompt structures (ids and captions of "
        f"the cache and of the samples, and the id index) hold exactly {hi['held_bytes_per_prompt']:.0f} bytes per "
        f"prompt, {hi['held_bytes_per_prompt'] * 1e6 / 2**20:.0f} MiB at 10^6 prompts. Mapped file pages are the latents read so far; "
        "the kernel drops them under memory pressure (they are not the process's own memory).",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[300, 3000, 30000])
    parser.add_argument("--work", type=Path, default=Path("/tmp/spin-bench-scale"))
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.batches, args.batch)))
        return
    rows = run(args.sizes, args.work, args.batches, args.batch)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    print(render(rows))


if __name__ == "__main__":
    main()
