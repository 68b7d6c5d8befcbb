"""End-to-end runs shared by the model-family tests (SDXL, SD-2 v-prediction): SPIN, SFT, DPO,
resume after an interruption, and loading the results in plain diffusers."""

from __future__ import annotations

import io
import json
import os
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from spin_diffusion.cli.main import main
from spin_diffusion.training.trainer import Trainer

COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30)}
# (width, height): not square, so every image has its own original size and crop
SIZES = [(24, 16), (16, 20), (16, 16), (32, 24), (20, 16), (16, 28)]


def picture(colour: str, shape: str, size: tuple[int, int]) -> Image.Image:
    w, h = size
    img = np.full((h, w, 3), 255, np.uint8)
    cy, cx = h // 2, w // 2
    if shape == "square":
        img[cy - 4 : cy + 4, cx - 4 : cx + 4] = COLOURS[colour]
    else:
        yy, xx = np.mgrid[:h, :w]
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < 16] = COLOURS[colour]
    return Image.fromarray(img)


def make_imagefolder(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, size in enumerate(SIZES):
        colour, shape = list(COLOURS)[i % 3], ["circle", "square"][i % 2]
        picture(colour, shape, size).save(root / f"{i}.png")
        rows.append(json.dumps({"file_name": f"{i}.png", "text": f"a {colour} {shape}"}))
    (root / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    return root


def make_pickapic(path: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    def png(img: Image.Image) -> bytes:
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        return buf.getvalue()

    rows: dict[str, list[Any]] = {"caption": [], "jpg_0": [], "jpg_1": [], "label_0": [], "label_1": []}
    for i, size in enumerate(SIZES):
        colour = list(COLOURS)[i % 3]
        rows["caption"].append(f"a {colour} square")
        rows["jpg_0"].append(png(picture(colour, "square", size)))
        rows["jpg_1"].append(png(picture(colour, "circle", SIZES[-1 - i])))
        rows["label_0"].append(1.0 if i % 2 else 0.0)
        rows["label_1"].append(0.0 if i % 2 else 1.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(rows), path)
    return path


def write_config(tmp_path: Path, base: Path, source: dict, **overrides: Any) -> Path:
    """A run config on ``source`` (the data section's source and path); ``overrides`` replace or, for
    sections, extend the defaults (``data={"resolution": 32}`` keeps the source)."""
    cfg: dict[str, Any] = {
        "name": "run",
        "output_dir": str(tmp_path / "runs"),
        "method": "spin",
        "model": {"pretrained": str(base)},
        "data": {"resolution": 16, "center_crop": False, "random_flip": True, **source},
        "sampling": {
            "num_inference_steps": 2,
            "guidance_scale": 2.0,
            "batch_size": 8,
            "shard_size": 4,
            "num_previews": 2,
        },
        "training": {
            "max_steps": 2,
            "batch_size": 3,
            "checkpointing_steps": 1,
            "learning_rate": 1e-4,
            "trackers": [],
        },
        "iterations": [{"beta": 2000}, {"beta": 5000}],
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def plain_pipeline(pipeline_class: Any, base: Path, model_dir: Path) -> Any:
    """The result as a diffusers user loads it: ``from_pretrained(base, unet=...)`` (``transformer=...``
    for a flow model) or ``load_lora_weights``."""
    import diffusers

    for component in ("unet", "transformer"):
        if (model_dir / component).is_dir():
            class_name = json.loads((model_dir / component / "config.json").read_text())["_class_name"]
            network = getattr(diffusers, class_name).from_pretrained(str(model_dir / component))
            return pipeline_class.from_pretrained(str(base), **{component: network})
    pipe = pipeline_class.from_pretrained(str(base))
    pipe.load_lora_weights(str(model_dir), weight_name="pytorch_lora_weights.safetensors")
    return pipe


def sample_ok(pipe: Any, base_pipe: Any | None = None, call: dict[str, Any] | None = None) -> None:
    """The loaded pipeline samples finite images (and, given the base, different ones: weights applied).

    ``call``: further arguments of the pipeline call (a flow model's height and width).
    """
    hw = call or {}

    def sample(p: Any) -> np.ndarray:
        out = p(
            ["a red square"],
            num_inference_steps=2,
            guidance_scale=2.0,
            generator=torch.Generator().manual_seed(0),
            output_type="latent",
            **hw,
        )
        return out.images.float().numpy()

    latents = sample(pipe)
    assert np.isfinite(latents).all()
    if base_pipe is not None:
        assert not np.allclose(latents, sample(base_pipe)), "the fine-tuned weights changed nothing"


def train_log(iter_dir: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in (iter_dir / "train_log.jsonl").read_text().splitlines()]


class Interrupt:
    """Sends this process SIGINT once, after optimizer step ``step`` of iteration ``iteration``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, iteration: int, step: int) -> None:
        self.target = (f"iter-{iteration}", step)
        self.fired = False
        original = Trainer.train_step

        def train_step(trainer: Trainer) -> Any:
            out = original(trainer)
            if not self.fired and out is not None and (trainer.out_dir.name, trainer.step) == self.target:
                self.fired = True
                os.kill(os.getpid(), signal.SIGINT)
            return out

        monkeypatch.setattr(Trainer, "train_step", train_step)


def lora_tensors(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "pytorch_lora_weights.safetensors"))


@pytest.fixture(autouse=True)
def fresh_accelerator_state() -> Any:
    """accelerate keeps one process-wide state; each run here picks its own mixed precision."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


# ----------------------------------------------------------------------------- the shared checks


def check_spin_two_iterations(
    tmp_path: Path,
    base: Path,
    pipeline_class: Any,
    monkeypatch: pytest.MonkeyPatch,
    evaluate: bool = True,
    extra: dict[str, Any] | None = None,
    call: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Full fine-tuning, two SPIN iterations (and evaluation of base and both); outputs load in diffusers.

    ``extra``: further config overrides (a flow family's sampler); ``call``: the sampling check's pipeline arguments.
    """
    from spin_diffusion.sampling import generate as sampling

    classes: list[str] = []
    original = sampling.generate_images

    def spy(pipe: Any, *args: Any, **kwargs: Any) -> Any:
        classes.append(type(pipe).__name__)
        return original(pipe, *args, **kwargs)

    monkeypatch.setattr(sampling, "generate_images", spy)
    evaluation = {
        "prompts": ["a red circle", "a blue square"],
        "n_images_per_prompt": 1,
        "scorers": [{"kind": "toy_fidelity"}],
        "num_inference_steps": 2,
        "guidance_scale": 2.0,
        **(extra or {}).get("evaluation", {}),
    }
    data = {"source": "imagefolder", "path": str(make_imagefolder(tmp_path / "data"))}
    rest = {k: v for k, v in (extra or {}).items() if k != "evaluation"}
    cfg = write_config(tmp_path, base, data, evaluation=evaluation if evaluate else None, **rest)
    assert main(["train", str(cfg)]) == 0
    run = tmp_path / "runs" / "run"
    results = json.loads((run / "results.json").read_text())
    it1, it2 = results["iterations"]
    assert it2["opponent_fingerprint"] == it1["model_fingerprint"] != it1["opponent_fingerprint"]
    assert train_log(run / "iter-1")[0]["loss"] == pytest.approx(0.6931, abs=1e-3)  # theta == opponent
    from spin_diffusion.sampling.samples import OpponentSamples

    opp = OpponentSamples(run / "iter-2" / "samples")
    assert len(opp) == len(SIZES) and torch.isfinite(opp.latents(opp.ids[0]).float()).all()
    if evaluate:
        assert list(results["evaluation"]["mean"]) == ["base", "iter-1", "iter-2"]
        assert classes and set(classes) == {pipeline_class.__name__}  # the harness used the model's class
    base_pipe = pipeline_class.from_pretrained(str(base))
    for k in (1, 2):
        sample_ok(plain_pipeline(pipeline_class, base, run / f"iter-{k}" / "model"), base_pipe, call)
    return results


def check_sft_lora(
    tmp_path: Path,
    base: Path,
    pipeline_class: Any,
    mixed_precision: str = "no",
    extra: dict[str, Any] | None = None,
    call: dict[str, Any] | None = None,
) -> Path:
    """SFT with a LoRA (and caption dropout): the LoRA loads with ``load_lora_weights``."""
    data = {"source": "imagefolder", "path": str(make_imagefolder(tmp_path / "data")), "caption_dropout": 0.5}
    cfg = write_config(
        tmp_path,
        base,
        data,
        method="sft",
        iterations=[{}],
        model={"pretrained": str(base), "lora": {"enabled": True, "rank": 2}},
        training={"mixed_precision": mixed_precision, "learning_rate": 1e-2},
        **(extra or {}),
    )
    assert main(["train", str(cfg)]) == 0
    model_dir = tmp_path / "runs" / "run" / "iter-1" / "model"
    assert (model_dir / "pytorch_lora_weights.safetensors").is_file() and not (model_dir / "unet").exists()
    sample_ok(
        plain_pipeline(pipeline_class, base, model_dir), pipeline_class.from_pretrained(str(base)), call
    )
    assert all(np.isfinite(row["loss"]) for row in train_log(model_dir.parent))
    return model_dir


def check_dpo_precomputed(
    tmp_path: Path,
    base: Path,
    pipeline_class: Any,
    extra: dict[str, Any] | None = None,
    call: dict[str, Any] | None = None,
) -> Path:
    """DPO, full fine-tuning, reference errors precomputed: the first step is log 2, the UNet loads."""
    data = {"source": "pickapic", "path": str(make_pickapic(tmp_path / "pickapic" / "train.parquet"))}
    cfg = write_config(
        tmp_path,
        base,
        data,
        method="dpo",
        iterations=[{"beta": 2500}],
        training={"precompute_reference": True},
        **(extra or {}),
    )
    assert main(["train", str(cfg)]) == 0
    iter_dir = tmp_path / "runs" / "run" / "iter-1"
    assert (iter_dir / "reference_errors.safetensors").is_file()
    log = train_log(iter_dir)
    assert log[0]["loss"] == pytest.approx(0.6931, abs=1e-3) and {"d_win", "d_lose"} <= set(log[-1])
    sample_ok(
        plain_pipeline(pipeline_class, base, iter_dir / "model"),
        pipeline_class.from_pretrained(str(base)),
        call,
    )
    return iter_dir / "model"


def check_resume_after_interruption(
    tmp_path: Path, base: Path, monkeypatch: pytest.MonkeyPatch, extra: dict[str, Any] | None = None
) -> None:
    """LoRA SPIN stopped by SIGINT in iteration 2 and run again gives the uninterrupted run's LoRA."""
    from spin_diffusion.training.trainer import TrainingInterrupted

    data = {"source": "imagefolder", "path": str(make_imagefolder(tmp_path / "data"))}
    lora = {"pretrained": str(base), "lora": {"enabled": True, "rank": 2}}
    over = {
        "model": lora,
        "training": {"learning_rate": 1e-2},
        "iterations": [{"max_steps": 1}, {"max_steps": 2}],
        **(extra or {}),
    }
    straight = write_config(tmp_path / "a", base, data, **over)
    assert main(["train", str(straight)]) == 0
    resumed = write_config(tmp_path / "b", base, data, **over)
    from spin_diffusion.config.run import load_config
    from spin_diffusion.selfplay.driver import run

    with monkeypatch.context() as m:
        stop = Interrupt(m, iteration=2, step=1)
        with pytest.raises(TrainingInterrupted):
            run(load_config(resumed), show_progress=False)
        assert stop.fired
    run_b = tmp_path / "b" / "runs" / "run"
    assert (run_b / "iter-2" / "checkpoints").is_dir() and not (run_b / "iter-2" / "iteration.json").exists()
    assert main(["train", str(resumed)]) == 0
    summary = json.loads((run_b / "iter-2" / "train_summary.json").read_text())
    assert summary["resumed_from"] == 1 and summary["steps"] == 2
    for k in (1, 2):
        a = lora_tensors(tmp_path / "a" / "runs" / "run" / f"iter-{k}" / "model")
        b = lora_tensors(run_b / f"iter-{k}" / "model")
        assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a), (
            f"iteration {k} differs"
        )
