"""`spin-diffusion export`: a finished iteration as a plain diffusers pipeline with a model card."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from spin_diffusion.cli.main import main
from tiny_runs import colour_squares, tiny_spin_config


@pytest.fixture(scope="module")
def imagefolder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return colour_squares(tmp_path_factory.mktemp("imagefolder"), ["red", "blue", "green"])


def _train(tmp_path: Path, pipeline: Path, data: Path, **extra) -> Path:
    training = {
        "max_steps": 1,
        "batch_size": 3,
        "learning_rate": 1e-3,
        "trackers": [],
        "validation_prompts": 0,
    }
    iterations = [{"beta": 2000}, {"beta": 5000}]
    path = tiny_spin_config(tmp_path, pipeline, data, training=training, iterations=iterations, **extra)
    assert main(["train", str(path)]) == 0
    return tmp_path / "runs" / "run"


def _images(pipe) -> np.ndarray:
    import torch

    pipe.set_progress_bar_config(disable=True)
    out = pipe(
        ["a red square"], num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np"
    )
    return out.images


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory, tiny_pipeline_dir: Path, imagefolder: Path) -> Path:
    evaluation = {
        "prompts": ["a red square", "a blue square"],
        "n_images_per_prompt": 1,
        "scorers": [{"kind": "toy_fidelity"}],
        "num_inference_steps": 2,
        "grid_prompts": 2,
    }
    return _train(tmp_path_factory.mktemp("full"), tiny_pipeline_dir, imagefolder, evaluation=evaluation)


def test_export_loads_with_diffusers_alone_and_matches_the_run(
    full_run: Path, tiny_pipeline_dir: Path, tmp_path: Path, capsys
) -> None:
    from diffusers import DiffusionPipeline

    from spin_diffusion.model.loading import load_pipeline

    out = tmp_path / "export"
    assert main(["export", str(full_run), str(out)]) == 0
    assert "exported iteration 2" in capsys.readouterr().out
    exported = DiffusionPipeline.from_pretrained(str(out))
    reference = load_pipeline(tiny_pipeline_dir, trained=full_run / "iter-2" / "model")
    np.testing.assert_allclose(_images(exported), _images(reference), atol=1e-6)
    assert not np.allclose(_images(exported), _images(load_pipeline(tiny_pipeline_dir)), atol=1e-4)

    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: diffusers\n")
    assert "# run: iteration 2 of 2 (spin)" in card and f"`{tiny_pipeline_dir}`" in card
    rows = [line for line in card.splitlines() if line.startswith("| 1 ") or line.startswith("| **2** ")]
    assert len(rows) == 2 and "| 2000 |" in rows[0] and "| 5000 |" in rows[1] and "| no |" in rows[1]
    assert "imagefolder" in card and "full fine-tune of the UNet" in card
    assert "### Mean scores" in card and "toy_fidelity" in card  # the run's evaluation table
    assert "This model is `iter-2` in the tables" in card and "scores.jsonl" not in card
    assert "(grid.png)" in card and (out / "grid.png").is_file()
    saved = yaml.safe_load((out / "spin_diffusion_config.yaml").read_text())
    assert saved["iterations"][1]["beta"] == 5000


def test_an_earlier_iteration_and_the_refusals(full_run: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "iter1"
    assert main(["export", str(full_run), str(out), "--iteration", "1"]) == 0
    assert "| **1** (exported) |" in (out / "README.md").read_text()
    assert "this export is iteration 1" in (out / "README.md").read_text()
    capsys.readouterr()
    assert main(["export", str(full_run), str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["export", str(full_run), str(tmp_path / "x"), "--iteration", "3"]) == 2
    assert "finished iterations 1, 2" in capsys.readouterr().err
    assert main(["export", str(tmp_path), str(tmp_path / "x")]) == 2
    assert "is not a run directory" in capsys.readouterr().err


def test_push_to_hub_offline_fails_in_one_line_before_exporting(
    full_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "pushed"
    assert main(["export", str(full_run), str(out), "--push-to-hub", "someone/spin-toy"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "error: --push-to-hub someone/spin-toy: HF_HUB_OFFLINE is set, so nothing can be uploaded; "
        "export without --push-to-hub, or unset HF_HUB_OFFLINE (and log in) to upload\n"
    )
    assert not out.exists()


def test_a_lora_run_exports_the_fused_pipeline_and_one_adapter_relative_to_the_base(
    tmp_path: Path, tiny_pipeline_dir: Path, imagefolder: Path
) -> None:
    from diffusers import DiffusionPipeline

    lora = {"pretrained": str(tiny_pipeline_dir), "lora": {"enabled": True, "rank": 2}}
    run = _train(tmp_path, tiny_pipeline_dir, imagefolder, model=lora)
    out = tmp_path / "export"
    assert main(["export", str(run), str(out)]) == 0
    exported = _images(DiffusionPipeline.from_pretrained(str(out)))
    base = DiffusionPipeline.from_pretrained(str(tiny_pipeline_dir))
    plain = _images(base)
    base.load_lora_weights(str(out / "lora"), weight_name="pytorch_lora_weights.safetensors")
    np.testing.assert_allclose(exported, _images(base), atol=1e-4)  # both iterations' change, in one file
    assert not np.allclose(exported, plain, atol=1e-4)
    card = (out / "README.md").read_text()
    assert "LoRA rank 2" in card and "lora/pytorch_lora_weights.safetensors" in card
    assert "every iteration up to 2 in one file" in card


def test_the_card_of_a_diffusion_dpo_family_method() -> None:
    from spin_diffusion.config.run import validate_config
    from spin_diffusion.export.model_card import CardInputs, render_model_card

    cfg = validate_config(
        {
            "name": "fam",
            "method": "dmpo",
            "model": {"pretrained": "owner/base-model"},
            "data": {"source": "pickapic", "path": "pairs.parquet", "resolution": 64},
        }
    )
    card = render_model_card(
        CardInputs(cfg, 1, [{"iteration": 1, "steps": 3, "training": {"beta": 2500.0}, "final_metrics": {}}])
    )
    assert "base_model: owner/base-model" in card  # a hub id goes into the front matter
    assert "by the dmpo objective of the Diffusion-DPO family" in card
    assert "| **1** (exported) | 3 | 2500 |" in card and "was not evaluated" in card
