"""The benchmarks page's sections for the real shapes (``make bench-real``) and the prepared GPU check.

Neither runs in ``make bench`` (a real-size run needs about 20 GB and the
check needs a GPU); each writes its table under docs/benchmarks/, and the
page shows the latest one with the command that made it.
"""

from __future__ import annotations

from pathlib import Path

REAL_SHAPES_TEXT = (
    "Peak resident memory of the project's own `train` on the real architectures (random weights built offline "
    "from the published configs by `benchmarks/real_builders.py`; real-size CLIP and T5 tokenizers), one fresh "
    "process per path, each against its floor: the trained network's weights, gradients and two AdamW moments "
    "(16 bytes a parameter in fp32; LoRA: the frozen base at 4 bytes plus 16 per adapter parameter), one frozen "
    "reference copy where the reference is live (full fine-tuning), the VAE and text encoders, and the process's "
    "own start-up (measured before any model is built). Above the floor: activations, the sampler's working "
    "memory and whatever else the code keeps. The SPIN/SFT column is training seconds per example (a pair for "
    "SPIN). Full size needs about 19 GiB of RAM and 25 minutes on 2 cores: `make bench-real` (it writes "
    "docs/benchmarks/real_shapes.json and real_shapes_latest.md); `--width-divisor 4` checks the code on a small "
    "machine, and its numbers are not the real ones. The recorded run and its reading:"
)

GPU_CHECK_TEXT = (
    "`bash benchmarks/gpu_check.sh` on a machine with one CUDA GPU (it makes `.venv-gpu`, reusing a system torch "
    "that already sees the GPU or installing `torch==2.13.0` from PyPI, which is the CUDA build on Linux x86_64; "
    "`GPU_CHECK_TORCH_INDEX` picks another; `GPU_CHECK_WHEELS=DIR` installs offline from wheels). In at most 8 "
    "minutes after the install it verifies: (1) SD-1.5 at 512 px, full fine-tuning in bf16 autocast with a bf16 "
    "frozen reference: SFT and SPIN steps/s, peak GPU memory, SPIN/SFT per example, finite losses; (2) SDXL at "
    "1024 px with a rank-8 LoRA, the reference the adapter-disabled network: the same; (3) SD3.5-medium with a LoRA "
    "through `train`, SFT and SPIN (rectified flow); (4) DeepSpeed ZeRO-2 and "
    "(5) FSDP through `accelerate launch` on the one device: SPIN with a live reference, once uninterrupted and "
    "once killed with SIGKILL after its step-2 checkpoint and resumed by the same command; the final UNets must "
    "agree within 1% of the update's size. It writes `gpu_check.json` and `gpu_check.md` (default "
    "docs/benchmarks/gpu/). `--cpu-dry-run` runs the same parts tiny on CPU; the test suite runs them "
    "(tests/test_real_shapes.py), so the first GPU run starts from code that has run."
)


def sections(data: Path) -> list[str]:
    """The two sections, each with its latest table when one was written."""
    lines = ["## Real shapes: memory against the floor", "", REAL_SHAPES_TEXT, ""]
    table = data / "real_shapes.md"
    lines += [table.read_text().strip() if table.is_file() else "No run recorded yet.", ""]
    lines += ["## The prepared GPU check", "", GPU_CHECK_TEXT, ""]
    gpu = data / "gpu" / "gpu_check.md"
    lines += [gpu.read_text().strip() if gpu.is_file() else "It has not run on a GPU yet.", ""]
    return lines
