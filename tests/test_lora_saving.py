"""A LoRA run's ``iter-k/model`` gives theta_k through every documented plain-diffusers loading path.

Iteration k trains a LoRA on the merged theta_{k-1}; the file saved for it must
still be relative to the base model (all changes so far, ranks stacked), and
its alpha/r scale must survive diffusers' loader (which reads no alphas).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from spin_diffusion.cli.main import main
from spin_diffusion.model.loading import load_pipeline, load_trained_into
from spin_diffusion.model.lora import LORA_WEIGHT_NAME, LoraSettings, add_lora, merge_lora
from spin_diffusion.model.saving import save_trained_unet
from spin_diffusion.model.weights import fingerprint_module

X = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
EMB = torch.randn(2, 8, 16, generator=torch.Generator().manual_seed(2))
T = torch.tensor([7, 600])


def _out(unet: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return unet(X, T, EMB).sample


def _plain(base: Path):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_pretrained(str(base), safety_checker=None)


def _randomise_lora(unet: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.1, generator=gen)


def test_a_lora_with_alpha_not_rank_loads_at_its_trained_scale(
    tiny_pipeline_dir: Path, tmp_path: Path
) -> None:
    unet = load_pipeline(tiny_pipeline_dir).unet
    add_lora(unet, LoraSettings(rank=2, alpha=4.0))  # scale 2
    _randomise_lora(unet, 0)
    out = save_trained_unet(unet, tmp_path / "model")
    pipe = _plain(tiny_pipeline_dir)
    pipe.load_lora_weights(str(out))
    torch.testing.assert_close(_out(pipe.unet), _out(unet), atol=1e-5, rtol=1e-5)


def test_a_lora_on_a_previous_iteration_is_saved_relative_to_the_base(
    tiny_pipeline_dir: Path, tmp_path: Path
) -> None:
    base = load_pipeline(tiny_pipeline_dir).unet
    first = copy.deepcopy(base)
    add_lora(first, LoraSettings(rank=2, alpha=4.0))
    _randomise_lora(first, 0)
    save_trained_unet(first, tmp_path / "iter-1")
    theta_1 = merge_lora(copy.deepcopy(first))
    second = copy.deepcopy(theta_1)
    add_lora(second, LoraSettings(rank=3, alpha=1.5, target_modules=("to_q", "to_v", "proj_in")))
    _randomise_lora(second, 1)
    out = save_trained_unet(second, tmp_path / "iter-2", previous=tmp_path / "iter-1")
    theta_2 = _out(second)
    assert (theta_2 - _out(theta_1)).abs().max() > 1e-2  # the second LoRA matters

    pipe = _plain(tiny_pipeline_dir)
    pipe.load_lora_weights(str(out))  # the base + the stacked LoRA
    torch.testing.assert_close(_out(pipe.unet), theta_2, atol=1e-5, rtol=1e-5)
    from diffusers import UNet2DConditionModel

    merged = UNet2DConditionModel.from_pretrained(str(out / "unet"))
    torch.testing.assert_close(_out(merged), theta_2, atol=1e-5, rtol=1e-5)


def test_a_previous_lora_of_unknown_origin_is_not_stacked_on(tiny_pipeline_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    unet = load_pipeline(tiny_pipeline_dir).unet
    add_lora(unet, LoraSettings(rank=2, alpha=2.0))
    _randomise_lora(unet, 0)
    old = save_trained_unet(unet, tmp_path / "iter-2")
    path = old / LORA_WEIGHT_NAME
    save_file(load_file(str(path)), str(path), metadata={"format": "pt"})  # as an older version wrote it
    out = save_trained_unet(unet, tmp_path / "iter-3", previous=old)
    assert (out / "unet").is_dir() and not (out / LORA_WEIGHT_NAME).exists()


# ------------------------------------------------------------------ through `spin-diffusion train`
@pytest.fixture(scope="module")
def lora_run(tmp_path_factory: pytest.TempPathFactory, tiny_pipeline_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("lora_run")
    data = root / "data"
    data.mkdir()
    rows = []
    colours = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30)}
    for i in range(8):
        colour = list(colours)[i % 3]
        img = np.full((16, 16, 3), 255, np.uint8)
        img[4 + i % 3 : 12, 4:12] = colours[colour]
        Image.fromarray(img).save(data / f"{i}.png")
        rows.append(json.dumps({"file_name": f"{i}.png", "text": f"a {colour} square"}))
    (data / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    cfg = {
        "name": "run",
        "output_dir": str(root / "runs"),
        "method": "spin",
        "model": {"pretrained": str(tiny_pipeline_dir), "lora": {"enabled": True, "rank": 2, "alpha": 4.0}},
        "data": {"source": "imagefolder", "path": str(data), "resolution": 16},
        "sampling": {"num_inference_steps": 2, "guidance_scale": 2.0, "batch_size": 8, "shard_size": 8},
        "training": {"max_steps": 2, "batch_size": 4, "learning_rate": 5e-2, "trackers": []},
        "iterations": [{"beta": 2000}, {"beta": 5000}],
    }
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path)]) == 0
    return root / "runs" / "run"


def test_every_documented_way_to_load_iteration_2_gives_the_merged_model(
    lora_run: Path, tiny_pipeline_dir: Path
) -> None:
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    model_dir = lora_run / "iter-2" / "model"
    # the README's full-model line; unet/ is exactly the theta_2 the run went on with
    unet = UNet2DConditionModel.from_pretrained(str(model_dir / "unet"))
    summary = json.loads((lora_run / "iter-2" / "iteration.json").read_text())
    assert fingerprint_module(unet) == summary["model_fingerprint"]
    expected = _out(StableDiffusionPipeline.from_pretrained(str(tiny_pipeline_dir), unet=unet).unet)

    theta_1 = _plain(tiny_pipeline_dir)
    theta_1.load_lora_weights(str(lora_run / "iter-1" / "model"))
    assert (_out(theta_1.unet) - expected).abs().max() > 1e-3  # iteration 2 changed the model

    loaded = {}
    for how in ("load_lora_weights(dir)", "load_lora_weights(dir, weight_name)"):
        pipe = _plain(tiny_pipeline_dir)
        kwargs = {"weight_name": LORA_WEIGHT_NAME} if "weight_name" in how else {}
        pipe.load_lora_weights(str(model_dir), **kwargs)
        loaded[how] = pipe.unet
    loaded["load_pipeline(trained=dir)"] = load_pipeline(tiny_pipeline_dir, trained=model_dir).unet
    pipe = load_pipeline(tiny_pipeline_dir)
    load_trained_into(pipe, model_dir / LORA_WEIGHT_NAME)
    loaded["load_trained_into(file)"] = pipe.unet
    for how, got in loaded.items():
        torch.testing.assert_close(_out(got), expected, atol=1e-5, rtol=1e-5, msg=how)
