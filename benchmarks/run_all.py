"""Run every benchmark one after another and write docs/benchmarks.md (tables, plots, machine, versions).

    make bench            # or: .venv/bin/python benchmarks/run_all.py [--quick]

Benchmarks run one at a time (a timing taken while another job runs is
noise); each prints ratios measured within its own run. ``--quick`` shrinks
every benchmark to check that the page builds, and its numbers are not for
reading.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

#: name -> (script, arguments for the full run, arguments for --quick)
BENCHMARKS: dict[str, tuple[str, list[str], list[str]]] = {
    "training_cost": ("bench_training_cost.py", ["--repeats", "5"], ["--batches", "4", "--repeats", "1"]),
    "sampling": ("bench_sampling.py", [], ["--prompts", "16", "--naive-prompts", "4", "--steps", "5", "20"]),
    "memory": ("bench_memory.py", [], ["--batch", "4", "--steps", "1"]),
    "iteration": (
        "bench_iteration.py",
        ["--examples", "320", "--steps", "40", "--eval-prompts", "32"],
        ["--examples", "48", "--steps", "4", "--eval-prompts", "8"],
    ),
    "scale": ("bench_scale.py", [], ["--sizes", "100", "1000", "3000", "--batches", "5"]),
    "study": ("bench_study.py", [], ["--pairs", "16", "--eval-prompts", "4", "--scale", "0.02"]),
    "levers": ("bench_levers.py", [], ["--batch", "4", "--repeats", "1", "--sample-prompts", "4"]),
}


def machine() -> dict[str, str]:
    import diffusers
    import torch
    import transformers

    cpu = platform.processor() or "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "date": datetime.date.today().isoformat(),
        "cpu": f"{cpu}, {os.cpu_count()} cores",
        "threads": "1 intra-op thread per benchmark process",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "platform": platform.platform(),
    }


def run_one(name: str, quick: bool, out_dir: Path) -> tuple[dict | list, str, float]:
    script, full, small = BENCHMARKS[name]
    json_path = out_dir / f"{name}.json"
    args = list(small if quick else full)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if name == "levers":  # the page says whether compiling started from a warm cache
        cache = Path(env.get("TORCHINDUCTOR_CACHE_DIR") or tempfile.mkdtemp(prefix="spin-bench-inductor-"))
        env["TORCHINDUCTOR_CACHE_DIR"] = str(cache)
        args.append("--cache-was-warm" if cache.is_dir() and any(cache.iterdir()) else "--cache-was-cold")
    cmd = [sys.executable, str(HERE / script), *args, "--json", str(json_path)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(f"benchmark {script} failed:\n{proc.stderr[-3000:]}")
    table = proc.stdout.strip()
    return json.loads(json_path.read_text()), table, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS))
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md")
    parser.add_argument("--data", type=Path, default=REPO / "docs" / "benchmarks")
    args = parser.parse_args()
    args.data.mkdir(parents=True, exist_ok=True)
    results, tables, seconds = {}, {}, {}
    for name in args.only or BENCHMARKS:
        print(f"running {name} ...", flush=True)
        results[name], tables[name], seconds[name] = run_one(name, args.quick, args.data)
        print(tables[name], flush=True)
    from report_benchmarks import plots, render_page

    figures = plots(results, args.data)
    command = (
        "make bench" if not (args.quick or args.only) else " ".join(["benchmarks/run_all.py", *sys.argv[1:]])
    )
    page = render_page(machine(), results, tables, seconds, figures, command, args.out.parent)
    tmp = args.out.with_suffix(".md.tmp")
    tmp.write_text(page)
    tmp.replace(args.out)
    print(f"wrote {args.out} ({sum(seconds.values()):.0f} s of benchmarks)")


if __name__ == "__main__":
    main()
