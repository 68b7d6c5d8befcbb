"""`evaluate`: one evaluation at a time per output folder, and a repeated prompt counted once."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from spin_diffusion.config.evaluation import EvaluationConfig
from spin_diffusion.evaluation.runner import evaluate_models
from spin_diffusion.infra.dirlock import DirectoryBusy


def _cfg(prompts: list[str]) -> EvaluationConfig:
    return EvaluationConfig.model_validate(
        {"prompts": prompts, "n_images_per_prompt": 1, "num_inference_steps": 2,
         "scorers": [{"kind": "toy_fidelity"}], "grid_prompts": 1}
    )  # fmt: skip


def test_a_second_evaluation_of_one_folder_is_refused_naming_the_first(
    tmp_path: Path, tiny_pipeline_dir: Path
) -> None:
    out = tmp_path / "eval"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
         "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, str(os.getpid()).encode()); print('locked', flush=True); "
         "time.sleep(120)", str(out / ".lock")],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(DirectoryBusy, match=rf"in use by another evaluation \(pid {holder.pid}\)"):
            evaluate_models({"base": str(tiny_pipeline_dir)}, _cfg(["a red circle"]), out)
        assert sorted(p.name for p in out.iterdir()) == [".lock"]  # nothing generated
    finally:
        holder.kill()
        holder.wait()


def test_a_repeated_prompt_is_scored_once(tmp_path: Path, tiny_pipeline_dir: Path) -> None:
    prompts = ["a red circle", "a blue square", "a red circle"]
    evaluate_models({"base": str(tiny_pipeline_dir)}, _cfg(prompts), tmp_path / "eval")
    listed = json.loads((tmp_path / "eval" / "prompts.json").read_text())
    assert [p["prompt"] for p in listed] == ["a red circle", "a blue square"]
    rows = [json.loads(line) for line in (tmp_path / "eval" / "scores.jsonl").read_text().splitlines()]
    assert len(rows) == 2  # one image of each distinct prompt, one scorer


def test_a_model_retrained_in_place_does_not_reuse_the_old_images(
    tmp_path: Path, tiny_pipeline_dir: Path
) -> None:
    import shutil

    from spin_diffusion.errors import CheckpointError

    trained = tmp_path / "model" / "unet"
    shutil.copytree(tiny_pipeline_dir / "unet", trained)
    models = {"tuned": {"path": str(tiny_pipeline_dir), "trained": str(trained.parent)}}
    evaluate_models(models, _cfg(["a red circle"]), tmp_path / "eval")
    evaluate_models(models, _cfg(["a red circle"]), tmp_path / "eval")  # unchanged: reused
    weights = trained / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes())  # "retrained": the same path, a new file
    with pytest.raises(CheckpointError, match="holds images made differently.*weights"):
        evaluate_models(models, _cfg(["a red circle"]), tmp_path / "eval")


def test_an_older_model_record_without_a_weights_stamp_is_kept_and_completed(tmp_path: Path) -> None:
    from spin_diffusion.evaluation.store import EvalStore

    store = EvalStore(tmp_path)
    (store.model_dir("m")).mkdir(parents=True)
    (store.model_dir("m") / "model.json").write_text(json.dumps({"path": "p", "trained": None}))
    store.check_model("m", {"path": "p", "trained": None, "weights": "abc"})
    assert json.loads((store.model_dir("m") / "model.json").read_text())["weights"] == "abc"
