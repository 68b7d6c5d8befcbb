"""A run holds one network per role it needs, the same in every iteration (peak RSS, fresh processes).

LoRA: one copy of the base network in every iteration (the reference is the
same network with the adapter off; theta_{k-1} is the base with the earlier
adapters folded in). Full fine-tuning: the trained network and one frozen
opponent/reference, and no frozen copy at all when nothing needs it (SFT, a
precomputed reference). The UNet here is ~39M parameters (156 MB in fp32), so
one extra copy stands well above the resident-set noise.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tiny_runs import colour_squares

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def wide_pipeline(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from spin_diffusion.model.tiny import TinyPipelineSpec, build_tiny_pipeline

    root = tmp_path_factory.mktemp("wide")
    spec = TinyPipelineSpec(
        image_size=16,
        vae_channels=(32, 64),
        unet_channels=(192, 384),
        layers_per_block=2,
        attention_head_dim=32,
        norm_num_groups=32,
        text_hidden_size=32,
        words=["a", "red", "blue", "green", "square"],
    )
    build_tiny_pipeline(spec, seed=0).save_pretrained(str(root / "pipeline"), safe_serialization=True)
    return root / "pipeline", colour_squares(root / "data", ["red", "blue", "green", "red"])


def _probe(wide_pipeline, tmp_path: Path, method: str, lora: bool, iterations: int, precompute=False):
    """Per iteration, in networks above what the loaded pipeline held: (tensor bytes held, peak RSS)."""
    pipeline, data = wide_pipeline
    out = tmp_path / f"{method}-{lora}-{iterations}-{precompute}"
    cmd = [sys.executable, str(TESTS / "run_memory_probe.py"), str(pipeline), str(data), str(out), method,
           "lora" if lora else "full", str(iterations), "precompute" if precompute else "live"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(TESTS), *sys.path])}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    net = r["unet_bytes"]
    held = [(h - r["loaded_tensors"]) / net for h in r["held"]]
    rss = [(p - r["loaded"]) / net for p in r["peaks"]]
    return held, rss


@pytest.mark.slow
def test_a_lora_spin_run_holds_one_network_in_every_iteration(wide_pipeline, tmp_path: Path) -> None:
    held, rss = _probe(wide_pipeline, tmp_path, "spin", True, 3)
    sft_held, sft_rss = _probe(wide_pipeline, tmp_path, "sft", True, 1)
    assert len(held) == 3
    # the loaded pipeline's network is the only one: no copy to train, save or make the next opponent
    # (before: two more, the trained copy and the merged next opponent)
    assert max(held) < 0.1 and sft_held[0] < 0.1, (held, sft_held)
    for k in (2, 3):  # and iteration k's peak resident set is iteration 1's
        assert abs(rss[k - 1] - rss[0]) < 0.25, (k, rss)
    assert max(rss) - sft_rss[0] < 1.0, (rss, sft_rss)  # within one network of the SFT LoRA run


@pytest.mark.slow
def test_full_fine_tuning_holds_the_trained_network_and_one_frozen_copy(
    wide_pipeline, tmp_path: Path
) -> None:
    live, live_rss = _probe(wide_pipeline, tmp_path, "spin", False, 2)
    table, _ = _probe(wide_pipeline, tmp_path, "spin", False, 2, precompute=True)
    sft, _ = _probe(wide_pipeline, tmp_path, "sft", False, 1)
    # SFT: the trained network is the loaded one, plus its two AdamW moments (gradients are freed per step)
    assert abs(sft[0] - 2) < 0.1, sft
    for k in (0, 1):
        assert abs(live[k] - sft[0] - 1) < 0.1, (live, sft)  # one frozen reference beside it
        assert abs(table[k] - sft[0]) < 0.1, (table, sft)  # a precomputed reference: no frozen copy
    assert abs(live_rss[1] - live_rss[0]) < 0.25, live_rss
