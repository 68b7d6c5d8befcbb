"""`spin-diffusion train` end to end on a tiny pipeline: SPIN, SFT, DPO (LoRA), resume, refusals."""

from __future__ import annotations

import io
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from launch import train_two_processes
from spin_diffusion.cli.main import main

COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30)}


def _square(colour: str, shape: str) -> Image.Image:
    img = np.full((16, 16, 3), 255, np.uint8)
    if shape == "square":
        img[4:12, 4:12] = COLOURS[colour]
    else:
        yy, xx = np.mgrid[:16, :16]
        img[(yy - 8) ** 2 + (xx - 8) ** 2 < 16] = COLOURS[colour]
    return Image.fromarray(img)


@pytest.fixture(scope="module")
def imagefolder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("imagefolder")
    rows = []
    for i in range(8):
        colour, shape = list(COLOURS)[i % 3], ["circle", "square"][i % 2]
        _square(colour, shape).save(root / f"{i}.png")
        rows.append(json.dumps({"file_name": f"{i}.png", "text": f"a {colour} {shape}"}))
    (root / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="module")
def pickapic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    def png(img: Image.Image) -> bytes:
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        return buf.getvalue()

    rows = {"caption": [], "jpg_0": [], "jpg_1": [], "label_0": [], "label_1": []}
    for i in range(6):
        colour = list(COLOURS)[i % 3]
        rows["caption"].append(f"a {colour} square")
        rows["jpg_0"].append(png(_square(colour, "square")))
        rows["jpg_1"].append(png(_square(colour, "circle")))
        rows["label_0"].append(1.0 if i % 2 else 0.0)
        rows["label_1"].append(0.0 if i % 2 else 1.0)
    path = tmp_path_factory.mktemp("pickapic") / "train.parquet"
    pq.write_table(pa.table(rows), path)
    return path


def _config(tmp_path: Path, pipeline: Path, data: dict, **overrides) -> Path:
    cfg = {
        "name": "run",
        "output_dir": str(tmp_path / "runs"),
        "method": "spin",
        "model": {"pretrained": str(pipeline)},
        "data": {"resolution": 16, **data},
        "sampling": {
            "num_inference_steps": 3,
            "guidance_scale": 2.0,
            "batch_size": 8,
            "shard_size": 4,
            "num_previews": 4,
        },
        "training": {
            "max_steps": 2,
            "batch_size": 4,
            "checkpointing_steps": 1,
            "learning_rate": 1e-4,
            "trackers": [],
        },
        "iterations": [{"beta": 2000}, {"beta": 5000, "max_steps": 1}],
    }
    for key, value in overrides.items():
        cfg[key] = value
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _plain_pipeline(base: Path, model_dir: Path):
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    if (model_dir / "unet").is_dir():
        unet = UNet2DConditionModel.from_pretrained(str(model_dir / "unet"))
        return StableDiffusionPipeline.from_pretrained(str(base), unet=unet, safety_checker=None)
    pipe = StableDiffusionPipeline.from_pretrained(str(base), safety_checker=None)
    pipe.load_lora_weights(str(model_dir), weight_name="pytorch_lora_weights.safetensors")
    return pipe


def _sample_ok(pipe) -> None:
    import torch

    out = pipe(
        ["a red square"], num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np"
    )
    assert np.isfinite(out.images).all()


def test_spin_two_iterations_then_a_rerun_is_a_no_op(
    tmp_path: Path, tiny_pipeline_dir: Path, imagefolder: Path
) -> None:
    evaluation = {
        "prompts": ["a red circle", "in the top left corner there is a small circle"],
        "n_images_per_prompt": 2,
        "scorers": [{"kind": "toy_fidelity"}, {"kind": "toy_style"}],
        "num_inference_steps": 2,
        "guidance_scale": 2.0,
    }
    data = {"source": "imagefolder", "path": str(imagefolder)}
    cfg = _config(tmp_path, tiny_pipeline_dir, data, evaluation=evaluation)
    assert main(["train", str(cfg)]) == 0
    run = tmp_path / "runs" / "run"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["training"]["weight_decay"] == 0.01  # resolved defaults are recorded
    results = json.loads((run / "results.json").read_text())
    assert [it["iteration"] for it in results["iterations"]] == [1, 2]
    it1, it2 = results["iterations"]
    assert it1["training"]["beta"] == 2000 and it2["training"]["beta"] == 5000 and it2["steps"] == 1
    assert it2["opponent_fingerprint"] == it1["model_fingerprint"] != it1["opponent_fingerprint"]
    manifest = json.loads((run / "iter-2" / "samples" / "manifest.json").read_text())
    assert manifest["identity"]["model_fingerprint"] == it1["model_fingerprint"]
    assert manifest["identity"]["sampler"]["num_inference_steps"] == 3
    for k in (1, 2):
        _sample_ok(_plain_pipeline(tiny_pipeline_dir, run / f"iter-{k}" / "model"))
        assert not (
            run / f"iter-{k}" / "checkpoints"
        ).exists()  # finished iterations drop their training state
    log = [json.loads(line) for line in (run / "iter-1" / "train_log.jsonl").read_text().splitlines()]
    assert log[0]["loss"] == pytest.approx(0.6931, abs=1e-3)  # theta == opponent at the first step

    # base and both iterations evaluated on held-out prompts with shared seeds
    ev = results["evaluation"]
    assert list(ev["mean"]) == ["base", "iter-1", "iter-2"]
    assert set(ev["win_rate"]["iter-2"]["base"]) == {"toy_fidelity", "toy_style", "average"}
    assert (run / "eval" / "grid.png").is_file() and "iter-2" in (run / "results.md").read_text()

    stamp = (run / "iter-2" / "iteration.json").stat().st_mtime_ns
    assert main(["train", str(cfg)]) == 0
    assert (run / "iter-2" / "iteration.json").stat().st_mtime_ns == stamp


def test_sft_and_lora_dpo_runs(
    tmp_path: Path, tiny_pipeline_dir: Path, imagefolder: Path, pickapic: Path
) -> None:
    sft = _config(
        tmp_path / "a",
        tiny_pipeline_dir,
        {"source": "imagefolder", "path": str(imagefolder)},
        method="sft",
        iterations=[{}],
    )
    assert main(["train", str(sft), "--set", "training.snr_gamma=5"]) == 0
    _sample_ok(_plain_pipeline(tiny_pipeline_dir, tmp_path / "a" / "runs" / "run" / "iter-1" / "model"))

    dpo = _config(
        tmp_path / "b",
        tiny_pipeline_dir,
        {"source": "pickapic", "path": str(pickapic)},
        method="dpo",
        iterations=[{"beta": 2500}],
        model={"pretrained": str(tiny_pipeline_dir), "lora": {"enabled": True, "rank": 2}},
    )
    assert main(["train", str(dpo)]) == 0
    model_dir = tmp_path / "b" / "runs" / "run" / "iter-1" / "model"
    assert (model_dir / "pytorch_lora_weights.safetensors").is_file()
    _sample_ok(_plain_pipeline(tiny_pipeline_dir, model_dir))
    log = [json.loads(line) for line in (model_dir.parent / "train_log.jsonl").read_text().splitlines()]
    assert {"d_win", "d_lose", "implicit_acc"} <= set(log[-1])


def test_changed_identity_is_refused(
    tmp_path: Path, tiny_pipeline_dir: Path, imagefolder: Path, capsys
) -> None:
    cfg = _config(
        tmp_path,
        tiny_pipeline_dir,
        {"source": "imagefolder", "path": str(imagefolder)},
        method="sft",
        iterations=[{}],
    )
    assert main(["train", str(cfg)]) == 0
    assert main(["train", str(cfg), "--set", "seed=5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "different seed" in err[-1]


def test_bad_inputs_give_one_line_errors(
    tmp_path: Path, tiny_pipeline_dir: Path, imagefolder: Path, capsys
) -> None:
    cfg = _config(tmp_path, tiny_pipeline_dir, {"source": "imagefolder", "path": str(imagefolder)})
    assert main(["train", str(cfg), "--set", "training.learning_rate=-1"]) == 2
    assert main(["train", str(cfg), "--set", "model.pretrained=" + str(tmp_path / "nope")]) == 2
    assert main(["train", str(cfg), "--set", "method=ppo"]) == 2
    assert main(["train", str(tmp_path / "missing.yaml")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 4
    assert "training.learning_rate" in errors[0]
    assert "does not exist" in errors[1]
    assert "method" in errors[2]
    assert "missing.yaml" in errors[3]


def _cli(*args: str, env: dict | None = None) -> list[str]:
    return [sys.executable, "-m", "spin_diffusion.cli", *args]


def test_interrupted_training_resumes_from_its_checkpoint(
    tmp_path: Path, tiny_pipeline_dir: Path, imagefolder: Path
) -> None:
    cfg = _config(
        tmp_path,
        tiny_pipeline_dir,
        {"source": "imagefolder", "path": str(imagefolder)},
        method="sft",
        iterations=[{}],
    )
    over = ["--set", "training.max_steps=400", "--set", "training.checkpointing_steps=5"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        _cli("train", str(cfg), *over), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    ckpts = tmp_path / "runs" / "run" / "iter-1" / "checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline and not any(p.name.startswith("step-") for p in ckpts.glob("step-*")):
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "checkpoint saved" in err
    steps_done = max(int(p.name.split("-")[1]) for p in ckpts.glob("step-*"))
    assert 0 < steps_done < 400

    # resume with fewer total steps so the test stays short: it must continue, not restart
    again = subprocess.run(
        _cli(
            "train",
            str(cfg),
            "--set",
            f"training.max_steps={steps_done + 2}",
            "--set",
            "training.checkpointing_steps=5",
        ),
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"iter-1: resuming from step {steps_done} of {steps_done + 2}" in again.stderr
    assert f"iteration 1 continues from its checkpoint step-{steps_done}" in again.stderr
    summary = json.loads((ckpts.parent / "train_summary.json").read_text())
    assert summary["resumed_from"] == steps_done and summary["steps"] == steps_done + 2


@pytest.mark.distributed
def test_two_process_spin_exact_chunked_backward_keeps_replicas_identical(
    tmp_path: Path, tiny_pipeline_dir: Path, imagefolder: Path
) -> None:
    """Pass 2 runs several chunk backwards per micro-step, all but the last under no_sync."""
    cfg = _config(
        tmp_path,
        tiny_pipeline_dir,
        {"source": "imagefolder", "path": str(imagefolder)},
        method="spin-exact",
        iterations=[{}],
    )
    train_two_processes(cfg, "--set", "training.batch_size=2", "--set", "training.trajectory_chunk_size=2")
    summary = json.loads((tmp_path / "runs" / "run" / "iter-1" / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 2
    assert len(summary["rank_fingerprints"]) == 2 and len(set(summary["rank_fingerprints"])) == 1


def test_lora_self_play_and_precomputed_reference(
    tmp_path: Path, tiny_pipeline_dir: Path, imagefolder: Path
) -> None:
    data = {"source": "imagefolder", "path": str(imagefolder)}
    lora = {"pretrained": str(tiny_pipeline_dir), "lora": {"enabled": True, "rank": 2}}
    cfg = _config(tmp_path, tiny_pipeline_dir, data, model=lora)
    assert main(["train", str(cfg), "--set", "training.precompute_reference=true"]) == 0
    run = tmp_path / "runs" / "run"
    for k in (1, 2):
        assert (run / f"iter-{k}" / "reference_errors.safetensors").is_file()
        first = json.loads((run / f"iter-{k}" / "train_log.jsonl").read_text().splitlines()[0])
        assert first["loss"] == pytest.approx(0.6931, abs=1e-3)  # LoRA starts at zero: theta == opponent
    # iteration 1 is a LoRA on the base; iteration 2 a LoRA on theta_1, plus the merged UNet of theta_2
    assert (run / "iter-1" / "model" / "pytorch_lora_weights.safetensors").is_file()
    assert not (run / "iter-1" / "model" / "unet").exists()
    assert (run / "iter-2" / "model" / "pytorch_lora_weights.safetensors").is_file()
    _sample_ok(_plain_pipeline(tiny_pipeline_dir, run / "iter-2" / "model"))
    results = json.loads((run / "results.json").read_text())
    it1, it2 = results["iterations"]
    assert it2["opponent_fingerprint"] == it1["model_fingerprint"]


FAMILY = ["dmpo", "see-dpo", "adaptive-dpo", "adaptive-dpo-lite", "kto", "inversion-dpo"]


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("method", FAMILY)
def test_dpo_family_methods_train(
    tmp_path: Path, tiny_pipeline_dir: Path, pickapic: Path, method: str, lora: bool
) -> None:
    """Every Diffusion-DPO-family objective runs through `train` on preference pairs, full FT and LoRA."""
    model = {"pretrained": str(tiny_pipeline_dir), "lora": {"enabled": lora, "rank": 2}}
    cfg = _config(
        tmp_path,
        tiny_pipeline_dir,
        {"source": "pickapic", "path": str(pickapic)},
        method=method,
        iterations=[{"beta": 1000}],
        model=model,
    )
    if method == "inversion-dpo" and lora:  # provably stuck at the reference: refused (docs/methods.md)
        assert main(["train", str(cfg), "--set", "training.inversion.steps=2"]) != 0
        return
    assert main(["train", str(cfg), "--set", "training.inversion.steps=2"]) == 0
    run = tmp_path / "runs" / "run"
    model_dir = run / "iter-1" / "model"
    weights = "pytorch_lora_weights.safetensors" if lora else "unet"
    assert (model_dir / weights).exists()
    _sample_ok(_plain_pipeline(tiny_pipeline_dir, model_dir))
    log = [json.loads(line) for line in (run / "iter-1" / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 2 and all(math.isfinite(r["loss"]) for r in log)
    # theta == reference at the first step: DPO-like objectives sit at log 2 (KTO at 1/2, DMPO at
    # KL(1/2 || 0.99)), so the logged loss is the method's own objective; SEE-DPO's entropy term
    # -gamma (m_w - m_l) is already non-zero there, so it must differ from log 2
    first = {
        "dmpo": 0.5 * math.log(0.5 / 0.99) + 0.5 * math.log(0.5 / 0.01),
        "kto": 0.5,
    }.get(method, math.log(2))
    if method == "see-dpo":
        assert abs(log[0]["loss"] - first) > 1e-3
    else:
        assert log[0]["loss"] == pytest.approx(first, abs=1e-3)
    assert json.loads((run / "results.json").read_text())["method"] == method


def test_spin_exact_full_fine_tuning_and_lora(
    tmp_path: Path, tiny_pipeline_dir: Path, imagefolder: Path
) -> None:
    """`method: spin-exact` trains on stored trajectories, two iterations (full) and with a LoRA."""
    data = {"source": "imagefolder", "path": str(imagefolder)}
    full = _config(tmp_path / "full", tiny_pipeline_dir, data, method="spin-exact")
    assert main(["train", str(full), "--set", "training.trajectory_chunk_size=5"]) == 0
    run = tmp_path / "full" / "runs" / "run"
    results = json.loads((run / "results.json").read_text())
    it1, it2 = results["iterations"]
    assert it2["opponent_fingerprint"] == it1["model_fingerprint"] != it1["opponent_fingerprint"]
    manifest = json.loads((run / "iter-2" / "samples" / "manifest.json").read_text())
    assert len(manifest["trajectory"]["timesteps"]) == 3  # sampling.num_inference_steps
    log = [json.loads(line) for line in (run / "iter-1" / "train_log.jsonl").read_text().splitlines()]
    assert log[0]["loss"] == pytest.approx(0.6931, abs=1e-3)  # theta == opponent at the first step
    assert log[0]["trajectory_steps"] == 3 and log[0]["grad_steps"] == 3
    for k in (1, 2):
        _sample_ok(_plain_pipeline(tiny_pipeline_dir, run / f"iter-{k}" / "model"))

    lora = _config(
        tmp_path / "lora",
        tiny_pipeline_dir,
        data,
        method="spin-exact",
        iterations=[{"beta": 2000}],
        model={"pretrained": str(tiny_pipeline_dir), "lora": {"enabled": True, "rank": 2}},
    )
    assert main(["train", str(lora), "--set", "training.trajectory_grad_steps=2"]) == 0
    model_dir = tmp_path / "lora" / "runs" / "run" / "iter-1" / "model"
    assert (model_dir / "pytorch_lora_weights.safetensors").is_file()
    _sample_ok(_plain_pipeline(tiny_pipeline_dir, model_dir))
    log = [json.loads(line) for line in (model_dir.parent / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["grad_steps"] == 2 and {"d_real", "d_gen", "implicit_acc"} <= set(log[-1])
    summary = json.loads((model_dir.parent / "iteration.json").read_text())
    assert summary["model_fingerprint"] != summary["opponent_fingerprint"]  # the LoRA moved the model


def _unet_weights(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "unet" / "diffusion_pytorch_model.safetensors"))


@pytest.mark.distributed
def test_two_processes_match_one_process_with_the_same_global_batch(
    tmp_path: Path, tiny_pipeline_dir: Path, imagefolder: Path
) -> None:
    """Data-parallel SPIN over 2 CPU processes: same weights and logged metrics as 1 process."""
    import torch

    data = {"source": "imagefolder", "path": str(imagefolder)}
    # the same global batch of 4: 2 per process x 2 processes, or 4 in one process. A larger Adam
    # epsilon keeps near-zero gradient entries from turning reduction-order rounding into
    # sign-sized updates (with 1e-8, one entry in 9k differs by 15% of a step).
    eps = ("--set", "training.adam_epsilon=1e-4")
    two = _config(tmp_path / "two", tiny_pipeline_dir, data)
    train_two_processes(two, "--set", "training.batch_size=2", *eps)
    single = _config(tmp_path / "one", tiny_pipeline_dir, data)
    assert main(["train", str(single), "--set", "training.batch_size=4", *eps]) == 0
    runs = {name: tmp_path / name / "runs" / "run" for name in ("two", "one")}
    manifest = json.loads((runs["two"] / "iter-1" / "samples" / "manifest.json").read_text())
    assert manifest["world_size"] == 2 and manifest["num_prompts"] == 8
    for k in (1, 2):
        summary = json.loads((runs["two"] / f"iter-{k}" / "train_summary.json").read_text())
        assert summary["world_size"] == 2 and summary["global_batch"] == 4
        assert len(summary["rank_fingerprints"]) == 2 and len(set(summary["rank_fingerprints"])) == 1
        a, b = (_unet_weights(runs[n] / f"iter-{k}" / "model") for n in ("two", "one"))
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6)
        logs = [
            [
                json.loads(line)
                for line in (runs[n] / f"iter-{k}" / "train_log.jsonl").read_text().splitlines()
            ]
            for n in ("two", "one")
        ]
        for both, one in zip(*logs, strict=True):  # logged over both processes: the whole global batch
            # beta = 2000 scales float rounding of the errors ~1e3-fold into the loss's exponent
            assert both["loss"] == pytest.approx(one["loss"], rel=1e-3)
            assert both["implicit_acc"] == pytest.approx(one["implicit_acc"], abs=1e-6)
            assert both["d_real"] == pytest.approx(one["d_real"], rel=1e-3, abs=1e-7)
    _sample_ok(_plain_pipeline(tiny_pipeline_dir, runs["two"] / "iter-2" / "model"))
