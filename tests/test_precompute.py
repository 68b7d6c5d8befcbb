"""Reference errors: the same precision on both paths, only the visited items, split and resumable."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from launch import train_two_processes
from spin_diffusion.cli.main import main
from spin_diffusion.config.run import TrainingConfig
from spin_diffusion.errors import CheckpointError
from spin_diffusion.model.families import Conditioning, encode_prompts, prompt_encoder
from spin_diffusion.model.loading import load_pipeline
from spin_diffusion.model.prediction import training_scheduler
from spin_diffusion.model.weights import frozen_copy
from spin_diffusion.training.batches import make_batch, micro_batch_items
from spin_diffusion.training.reference import (
    ModuleReference,
    PrecomputedReference,
    ReferencePlan,
    precompute_reference_errors,
)
from synthetic_pairs import SyntheticPairs

COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30)}


@pytest.fixture(scope="module")
def imagefolder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("imagefolder")
    rows = []
    for i in range(8):
        colour, shape = list(COLOURS)[i % 3], ["circle", "square"][i % 2]
        img = np.full((16, 16, 3), 255, np.uint8)
        img[4:12, 4 + i % 3 : 12] = COLOURS[colour]
        Image.fromarray(img).save(root / f"{i}.png")
        rows.append(json.dumps({"file_name": f"{i}.png", "text": f"a {colour} {shape}"}))
    (root / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(autouse=True)
def _fresh_accelerator_state():
    """accelerate keeps one process-wide state; each run here picks its own mixed precision."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def _config(tmp_path: Path, pipeline: Path, data: Path, training: dict, lora: bool = False) -> Path:
    cfg = {
        "name": "run",
        "output_dir": str(tmp_path / "runs"),
        "method": "spin",
        "model": {"pretrained": str(pipeline), "lora": {"enabled": lora, "rank": 2}},
        "data": {"source": "imagefolder", "path": str(data), "resolution": 16},
        "sampling": {"num_inference_steps": 2, "guidance_scale": 2.0, "batch_size": 8, "num_previews": 0},
        "training": {
            "max_steps": 1,
            "batch_size": 4,
            "checkpointing_steps": 10,
            "learning_rate": 1e-4,
            "trackers": [],
            **training,
        },
        "iterations": [{"beta": 5000}],
    }
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


# fp16 autocast is not available on CPU: accelerate turns native AMP off there, so "fp16" runs in fp32
# on this machine (covered, but it does not exercise fp16 arithmetic; a GPU run would).
# The reference is a frozen copy (full fine-tuning) or the trained UNet with adapters off (LoRA).
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("precompute", [False, True], ids=["live", "precomputed"])
@pytest.mark.parametrize("precision", ["no", "bf16", "fp16"])
def test_u_is_zero_at_the_first_step_for_every_precision_and_reference_path(
    tmp_path: Path, tiny_pipeline_dir: Path, imagefolder: Path, precision: str, precompute: bool, lora: bool
) -> None:
    """At theta == theta_k the model's and the reference's errors must be the same numbers."""
    cfg = _config(
        tmp_path,
        tiny_pipeline_dir,
        imagefolder,
        {"mixed_precision": precision, "precompute_reference": precompute},
        lora=lora,
    )
    assert main(["train", str(cfg)]) == 0
    first = json.loads((tmp_path / "runs" / "run" / "iter-1" / "train_log.jsonl").read_text().splitlines()[0])
    assert first["u_mean"] == pytest.approx(0.0, abs=1e-6)
    assert first["d_real"] == pytest.approx(0.0, abs=1e-9) and first["d_gen"] == pytest.approx(0.0, abs=1e-9)
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-6)
    record = json.loads((tmp_path / "runs" / "run" / "iter-1" / "iteration.json").read_text())
    assert record["world_size"] == 1 and record["global_batch"] == 4  # batch_size 4 x 1 process x 1
    assert record["ended"] == {"reason": "max_steps", "step": 1}
    assert "| 1 | 1 | max_steps |" in (tmp_path / "runs" / "run" / "results.md").read_text()


# --------------------------------------------------------------------------- only what is visited, split, resumable


class CountingReference:
    """A ModuleReference that counts the examples it is asked about."""

    def __init__(self, inner: ModuleReference) -> None:
        self.inner, self.unet, self.examples = inner, inner.unet, 0

    def errors(self, batch, latents, emb):
        self.examples += len(batch.indices)
        return self.inner.errors(batch, latents, emb)


@pytest.fixture(scope="module")
def pipe(tiny_pipeline_dir: Path):
    return load_pipeline(tiny_pipeline_dir)


def _precompute(pipe, reference, plan: ReferencePlan, chunk_dir: Path, rank: int = 0, chunk: int | None = 1):
    return precompute_reference_errors(
        reference,
        SyntheticPairs(),
        prompt_encoder(pipe),
        plan=plan,
        chunk_dir=chunk_dir,
        key={"reference": "r"},
        num_train_timesteps=1000,
        caption_dropout=0.0,
        rank=rank,
        chunk_micro_steps=chunk,
        show_progress=False,
    )


def _live(pipe, reference: ModuleReference, items, pair_noise: str = "shared") -> torch.Tensor:
    batch = make_batch(SyntheticPairs(), items, seed=3, num_train_timesteps=1000, pair_noise=pair_noise)
    emb = Conditioning(encode_prompts(pipe.text_encoder, pipe.tokenizer, batch.captions))
    err = reference.errors(batch, torch.cat([batch.latents_a, batch.latents_b]), emb.pair())
    return torch.stack([err[: len(items)], err[len(items) :]], dim=1)


@pytest.mark.parametrize("pair_noise", ["shared", "independent"])
def test_precompute_computes_only_the_items_the_steps_visit(pipe, tmp_path: Path, pair_noise: str) -> None:
    ref = CountingReference(ModuleReference(frozen_copy(pipe.unet), training_scheduler(pipe)))
    cfg = TrainingConfig(max_steps=2, batch_size=2, gradient_accumulation_steps=2, pair_noise=pair_noise)
    plan = ReferencePlan.for_training(6, cfg, world_size=1, seed=3)  # 4 micro-steps of 2
    assert plan.pair_noise == pair_noise and ("pair_noise" in plan.identity()) == (pair_noise != "shared")
    table = _precompute(pipe, ref, plan, tmp_path / "chunks")
    visited = [micro_batch_items(6, m, batch_size=2, rank=0, world_size=1, seed=3) for m in range(4)]
    # 6 examples, 2 per micro-step: 3 micro-steps per epoch, so epoch 1 is visited for one micro-batch only
    assert table.shape == (2, 6, 2) and ref.examples == 8
    wanted = {item for batch in visited for item in batch}
    for e in range(2):
        for i in range(6):
            assert bool(table[e, i].isnan().all()) != ((i, e) in wanted)
    for items in visited:  # the numbers a live reference gives for the same micro-batch
        expected = _live(pipe, ref.inner, items, pair_noise)
        for k, (i, e) in enumerate(items):
            torch.testing.assert_close(table[e, i], expected[k], rtol=0, atol=0)
        # the real member's noise is the same draw in both settings, the generated member's is not
        other = _live(pipe, ref.inner, items, "independent" if pair_noise == "shared" else "shared")
        torch.testing.assert_close(other[:, 0], expected[:, 0], rtol=0, atol=0)
        assert not torch.equal(other[:, 1], expected[:, 1])


def test_precompute_is_split_across_ranks_and_resumes_by_chunk(pipe, tmp_path: Path) -> None:
    inner = ModuleReference(frozen_copy(pipe.unet), training_scheduler(pipe))
    plan = ReferencePlan(num_examples=6, micro_steps=4, batch_size=1, world_size=2, seed=3)
    chunks = tmp_path / "chunks"
    # two processes run one after the other: rank 1 computes chunks 1 and 3 and cannot merge yet
    rank1 = CountingReference(inner)
    with pytest.raises(CheckpointError, match="chunk-00000"):
        _precompute(pipe, rank1, plan, chunks, rank=1)
    assert rank1.examples == 4 and sorted(p.name for p in chunks.iterdir()) == [
        "chunk-00001.safetensors",
        "chunk-00003.safetensors",
    ]
    rank0 = CountingReference(inner)
    table = _precompute(pipe, rank0, plan, chunks, rank=0)
    assert rank0.examples == 4  # chunks 0 and 2 only
    visited = {
        item
        for m in range(4)
        for r in (0, 1)
        for item in micro_batch_items(6, m, batch_size=1, rank=r, world_size=2, seed=3)
    }
    assert len(visited) == 8  # epoch 0 (three global micro-batches of 2) and one micro-batch of epoch 1
    assert {(i, e) for e, i in (~table.isnan().any(dim=-1)).nonzero().tolist()} == visited

    # resume: a finished chunk is skipped; a missing or truncated one is computed again
    (chunks / "chunk-00002.safetensors").unlink()
    data = (chunks / "chunk-00003.safetensors").read_bytes()
    (chunks / "chunk-00003.safetensors").write_bytes(data[: len(data) // 2])
    again0, again1 = CountingReference(inner), CountingReference(inner)
    with pytest.raises(CheckpointError, match="chunk-00002"):  # rank 0's share is not redone yet
        _precompute(pipe, again1, plan, chunks, rank=1)
    redone = _precompute(pipe, again0, plan, chunks, rank=0)
    assert again0.examples == 2 and again1.examples == 2
    torch.testing.assert_close(redone, table, equal_nan=True)


def test_a_precompute_for_more_steps_computes_only_the_chunks_past_the_old_ones(pipe, tmp_path: Path) -> None:
    inner = ModuleReference(frozen_copy(pipe.unet), training_scheduler(pipe))
    short = ReferencePlan(num_examples=6, micro_steps=4, batch_size=2, world_size=1, seed=3)
    longer = ReferencePlan(num_examples=6, micro_steps=8, batch_size=2, world_size=1, seed=3)
    first = CountingReference(inner)
    assert _precompute(pipe, first, short, tmp_path / "chunks", chunk=None).shape == (2, 6, 2)
    assert first.examples == 8  # one chunk of all 4 micro-steps
    extended = CountingReference(inner)
    table = _precompute(pipe, extended, longer, tmp_path / "chunks", chunk=None)
    assert extended.examples == 8  # micro-steps 4..7 only: the first chunk is kept
    assert table.shape == (longer.epochs, 6, 2) == (3, 6, 2)  # covers the epochs the new steps reach
    fresh = _precompute(pipe, CountingReference(inner), longer, tmp_path / "fresh", chunk=None)
    torch.testing.assert_close(table, fresh, rtol=0, atol=0, equal_nan=True)


def test_a_lookup_outside_the_precomputed_items_is_an_error(pipe) -> None:
    table = torch.full((1, 6, 2), float("nan"))
    table[0, 2] = torch.tensor([0.5, 0.25])
    ref = PrecomputedReference(table, source="iter-1/reference_errors.safetensors")
    ok = make_batch(SyntheticPairs(), [(2, 0)], seed=3, num_train_timesteps=1000)
    assert ref.errors(ok, torch.zeros(2, 4, 8, 8), Conditioning(torch.zeros(2, 1, 1))).tolist() == [0.5, 0.25]
    missing = make_batch(SyntheticPairs(), [(2, 0), (4, 0)], seed=3, num_train_timesteps=1000)
    with pytest.raises(
        CheckpointError, match=r"reference_errors.safetensors have no entry for example 4 in epoch 0"
    ):
        ref.errors(missing, torch.zeros(4, 4, 8, 8), Conditioning(torch.zeros(4, 1, 1)))


@pytest.mark.distributed
def test_two_processes_split_the_precompute_and_start_at_u_zero(
    tmp_path: Path, tiny_pipeline_dir: Path, imagefolder: Path
) -> None:
    cfg = _config(
        tmp_path,
        tiny_pipeline_dir,
        imagefolder,
        {"batch_size": 2, "max_steps": 3, "gradient_accumulation_steps": 2, "precompute_reference": True},
    )
    train_two_processes(cfg)
    iter_dir = tmp_path / "runs" / "run" / "iter-1"
    # 3 steps x 2 accumulation = 6 micro-steps in two chunks: one per rank, both ranks merge them
    chunks = sorted((iter_dir / "reference_errors").iterdir())
    assert [p.name for p in chunks] == ["chunk-00000.safetensors", "chunk-00001.safetensors"]
    from safetensors import safe_open

    for rank, path in enumerate(chunks):
        with safe_open(str(path), framework="pt") as f:
            assert f.metadata()["rank"] == str(rank) and f.get_slice("errors").get_shape() == [
                12,
                2,
            ]  # 3 micro-steps x 2 ranks x 2
    first = json.loads((iter_dir / "train_log.jsonl").read_text().splitlines()[0])
    assert first["u_mean"] == pytest.approx(0.0, abs=1e-6)
    record = json.loads((iter_dir / "iteration.json").read_text())
    assert record["world_size"] == 2 and record["global_batch"] == 8
