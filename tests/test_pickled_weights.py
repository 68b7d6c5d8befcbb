"""A pickle that carries code is refused in one line wherever weights are read, before other work.

The payload would create a file if it ever ran; every test also checks it never did.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from spin_diffusion.errors import CheckpointError


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _pickle_into(path: Path, marker: Path) -> None:
    for old in path.parent.glob("*.safetensors"):
        old.unlink()
    torch.save({"weight": _Payload(marker)}, path)


REFUSED = "is a pickle that carries code"


def test_a_pickled_text_encoder_is_one_line(tiny_pipeline_dir: Path, tmp_path: Path) -> None:
    from spin_diffusion.model.loading import load_pipeline

    model = tmp_path / "model"
    shutil.copytree(tiny_pipeline_dir, model)
    _pickle_into(model / "text_encoder" / "pytorch_model.bin", tmp_path / "ran")
    with pytest.raises(CheckpointError, match=REFUSED):
        load_pipeline(model)
    assert not (tmp_path / "ran").exists()


def test_a_pickled_trained_unet_fails_evaluate_check_and_export(
    tiny_pipeline_dir: Path, tmp_path: Path
) -> None:
    from spin_diffusion.evaluation.checks import check_trained
    from spin_diffusion.model.loading import load_pipeline

    model_dir = tmp_path / "iter-1" / "model"
    shutil.copytree(tiny_pipeline_dir / "unet", model_dir / "unet")
    _pickle_into(model_dir / "unet" / "diffusion_pytorch_model.bin", tmp_path / "ran")
    with pytest.raises(CheckpointError, match=f"models.tuned.trained: .*{REFUSED}"):
        check_trained(str(model_dir), "models.tuned.trained")  # evaluate --check finds it now
    with pytest.raises(CheckpointError, match=REFUSED):
        load_pipeline(tiny_pipeline_dir, trained=model_dir)  # what export and evaluate load
    assert not (tmp_path / "ran").exists()


def test_plain_tensor_pickles_still_load(tiny_pipeline_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from spin_diffusion.model.loading import load_pipeline

    unet = tmp_path / "unet"
    shutil.copytree(tiny_pipeline_dir / "unet", unet)
    state = load_file(str(unet / "diffusion_pytorch_model.safetensors"))
    (unet / "diffusion_pytorch_model.safetensors").unlink()
    torch.save(state, unet / "diffusion_pytorch_model.bin")  # weights_only reads it: allowed as before
    pipe = load_pipeline(tiny_pipeline_dir, trained=unet)
    assert torch.equal(pipe.unet.state_dict()["conv_in.weight"], state["conv_in.weight"])


@pytest.mark.parametrize("what", ["PickScore model", "aesthetic CLIP model"])
def test_a_pickled_scorer_clip_model_is_one_line_without_torch_advice(tmp_path: Path, what: str) -> None:
    from spin_diffusion.evaluation import tiny_scorers
    from spin_diffusion.evaluation.clip_utils import load_clip_model

    clip = tiny_scorers.save_tiny_clip(tmp_path / "clip")
    _pickle_into(Path(clip) / "pytorch_model.bin", tmp_path / "ran")
    with pytest.raises(CheckpointError, match=REFUSED) as info:
        load_clip_model(clip, what)
    assert "weights_only" not in str(info.value) and what in str(info.value)
    assert not (tmp_path / "ran").exists()


def test_a_pickled_scorer_head_says_it_carries_code(tmp_path: Path) -> None:
    from spin_diffusion.evaluation.scorer_base import load_torch_state

    path = tmp_path / "head.pth"
    _pickle_into(path, tmp_path / "ran")
    with pytest.raises(CheckpointError, match=REFUSED) as info:
        load_torch_state(path, "aesthetic head")
    assert "Re-running" not in str(info.value) and not (tmp_path / "ran").exists()


def test_a_class_name_that_is_not_text_is_one_line(tiny_pipeline_dir: Path, tmp_path: Path) -> None:
    from spin_diffusion.model.loading import load_pipeline

    model = tmp_path / "model"
    shutil.copytree(tiny_pipeline_dir, model)
    index = json.loads((model / "model_index.json").read_text())
    index["_class_name"] = ["m", "C"]
    (model / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="_class_name must be the pipeline class name"):
        load_pipeline(model)
