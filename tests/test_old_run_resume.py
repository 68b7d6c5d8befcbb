"""A run directory written by the previous main resumes under this code to the uninterrupted weights.

The fixture ``tests/fixtures/old_spin_run`` was written by the main before the shard-store move
(commit 5a163c5): a toy SPIN run (shipped ``toy-base`` with LoRA rank 2, 4 images at 32 px,
2 iterations of 3 steps, a checkpoint every step, precomputed reference errors), stopped by
SIGINT after step 2 of iteration 2. It holds all three shard stores in their old format:
``real_latents/``, ``iter-k/samples/`` and ``iter-k/reference_errors/``. The real-latent cache is
rebuilt on resume (cache format 3 turns images upright by their EXIF orientation), the other two
are read as they are. Made with::

    mkdir old_spin_run && cd old_spin_run
    PYTHONPATH=/work/base-snap/src OMP_NUM_THREADS=1 python ../make_old_spin_run.py   # exit 130

Every path the run records is relative to the fixture directory (``output_dir: runs``,
``data.path: data``, ``model.pretrained: toy-base``) except the informational absolute
``data_path`` in ``real_latents/manifest.json``, which nothing checks. The latent cache key hashes
the images' mtimes, which git does not keep, so the test restores them from ``data_mtimes.json``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from spin_diffusion.cli.main import main

FIXTURE = Path(__file__).parent / "fixtures" / "old_spin_run"
STORES = [  # real_latents/ is not among them: latent cache format 3 (EXIF orientation) rebuilds it
    "iter-1/samples/shard-00000.safetensors",
    "iter-2/samples/shard-00001.safetensors",
    "iter-2/reference_errors/chunk-00000.safetensors",
]


def _inputs(dest: Path, with_run: bool) -> Path:
    """The fixture copied to ``dest`` (with or without its run directory), image mtimes restored."""
    shutil.copytree(FIXTURE, dest, ignore=None if with_run else shutil.ignore_patterns("runs"))
    for name, mtime in json.loads((dest / "data_mtimes.json").read_text()).items():
        os.utime(dest / "data" / name, ns=(mtime, mtime))
    return dest


def _lora(run: Path, k: int) -> dict[str, torch.Tensor]:
    return load_file(str(run / f"iter-{k}" / "model" / "pytorch_lora_weights.safetensors"))


@pytest.mark.slow
def test_an_old_run_interrupted_in_iteration_2_resumes_to_the_uninterrupted_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = _inputs(tmp_path / "old", with_run=True)
    run = old / "runs" / "run"
    assert not (run / "iter-2" / "iteration.json").exists()  # the fixture really stops in iteration 2
    inodes = {p: (run / p).stat().st_ino for p in STORES}
    monkeypatch.chdir(old)
    assert main(["train", "config.yaml"]) == 0

    # the old stores were read as they were, not rebuilt (an atomic rewrite would change the inode)
    assert {p: (run / p).stat().st_ino for p in STORES} == inodes
    cache = json.loads((run / "real_latents" / "manifest.json").read_text())
    assert cache["settings"]["format"] == 3  # rebuilt under the new format; the data record still matched
    steps = [
        json.loads(line)["step"] for line in (run / "iter-2" / "train_log.jsonl").read_text().splitlines()
    ]
    assert steps == [1, 2, 3]  # steps 1-2 from the old code, step 3 from this one
    assert (run / "iter-2" / "iteration.json").is_file()

    fresh = _inputs(tmp_path / "fresh", with_run=False)
    monkeypatch.chdir(fresh)
    assert main(["train", "config.yaml"]) == 0
    for k in (1, 2):
        a, b = _lora(run, k), _lora(fresh / "runs" / "run", k)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[key], b[key]) for key in a), f"iteration {k} differs (bitwise)"
