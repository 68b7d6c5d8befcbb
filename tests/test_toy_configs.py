"""The shipped toy-world configs (SPIN and exact SPIN 2 iterations, SFT, DPO) each finish, shrunk to test size."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from spin_diffusion.cli.main import main
from spin_diffusion.toy import base_model_path

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from spin_diffusion.toy.datasets import eval_prompts, write_imagefolder
    from spin_diffusion.toy.preferences import write_preference_parquet

    root = tmp_path_factory.mktemp("toy-data")
    write_imagefolder(root / "curated", 24, seed=0)
    write_preference_parquet(root / "preferences.parquet", 24, seed=0)
    (root / "eval_prompts.txt").write_text("\n".join(eval_prompts(4, seed=0)) + "\n")
    return root


@pytest.mark.parametrize("name", ["toy-spin", "toy-spin-exact", "toy-sft", "toy-dpo"])
def test_toy_config_runs_and_its_models_load_in_diffusers(name: str, toy_data: Path, tmp_path: Path) -> None:
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    raw = yaml.safe_load((REPO / "configs" / f"{name}.yaml").read_text())
    assert raw["model"]["pretrained"] == "toy-base"  # the alias of the shipped model, used as is
    data_file = Path(raw["data"]["path"]).name
    overrides = [
        f"output_dir={tmp_path}",
        f"data.path={toy_data / data_file}",
        f"evaluation.prompts.path={toy_data / 'eval_prompts.txt'}",
        "evaluation.n_images_per_prompt=1",
        "evaluation.num_inference_steps=4",
        "sampling.num_inference_steps=4",
        "training.batch_size=4",
        "training.trackers=[]",
    ]
    overrides += [f"iterations.{k}.max_steps=2" for k in range(len(raw["iterations"]))]
    if raw["method"] == "spin-exact":
        overrides.append("training.trajectory_grad_steps=2")  # within the 4 sampling steps above
    args = ["train", str(REPO / "configs" / f"{name}.yaml")]
    for o in overrides:
        args += ["--set", o]
    assert main(args) == 0
    run = tmp_path / raw["name"]
    results = json.loads((run / "results.json").read_text())
    assert len(results["iterations"]) == len(raw["iterations"])
    assert set(results["evaluation"]["mean"]) == {"base"} | {
        f"iter-{k}" for k in range(1, len(raw["iterations"]) + 1)
    }
    for k in range(1, len(raw["iterations"]) + 1):
        unet = UNet2DConditionModel.from_pretrained(str(run / f"iter-{k}" / "model" / "unet"))
        pipe = StableDiffusionPipeline.from_pretrained(str(base_model_path()), unet=unet, safety_checker=None)
        assert pipe.unet.config.sample_size == 8
