"""Run identity compares paths by where they lead: a relative path or a moved checkout resumes the run,
and the content checks (data fingerprint, base weights) still refuse a different data set or model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from spin_diffusion.cli.main import main
from spin_diffusion.config.run import identity_changes, validate_config
from spin_diffusion.errors import CheckpointError
from spin_diffusion.selfplay.trained_on import check_same_base
from tiny_runs import colour_squares, tiny_spin_config

TRAINING = {"max_steps": 1, "batch_size": 2, "learning_rate": 1e-3, "trackers": [], "validation_prompts": 0}


def _cfg(data: str, pretrained: str = "m"):
    return validate_config({"name": "t", "model": {"pretrained": pretrained},
                            "data": {"source": "imagefolder", "path": data, "resolution": 16}})  # fmt: skip


def test_a_relative_data_path_resumes_the_run_started_with_the_absolute_one(
    tmp_path: Path, tiny_pipeline_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    data = colour_squares(tmp_path / "d", ["red", "blue"])
    iterations = [{"beta": 2000}, {"beta": 2000}]
    config = tiny_spin_config(tmp_path, tiny_pipeline_dir, data, training=TRAINING, iterations=iterations[:1])
    assert main(["train", str(config)]) == 0
    monkeypatch.chdir(tmp_path)
    relative = tiny_spin_config(
        tmp_path, tiny_pipeline_dir, Path("d"), training=TRAINING, iterations=iterations
    )
    assert main(["train", str(relative)]) == 0, (
        capsys.readouterr().err
    )  # was: "started with a different data"
    assert (tmp_path / "runs" / "run" / "iter-2" / "iteration.json").is_file()


def test_a_moved_data_folder_is_the_same_path_and_another_folder_is_not(tmp_path: Path) -> None:
    old, new, other = tmp_path / "old" / "d", tmp_path / "new" / "d", tmp_path / "new" / "e"
    new.mkdir(parents=True)
    other.mkdir()
    assert identity_changes(_cfg(str(old)), _cfg(str(new))) == []  # old/d is gone, new/d exists: moved
    assert identity_changes(_cfg(str(new)), _cfg(str(other))) == ["data"]
    assert identity_changes(_cfg(str(old / "x-*.parquet")), _cfg(str(other / "x-*.parquet"))) == ["data"]


def test_a_different_base_model_under_a_moved_path_is_refused_by_its_weights(
    tmp_path: Path, tiny_pipeline_dir: Path, tiny_vpred_dir: Path
) -> None:
    from spin_diffusion.model.loading import load_pipeline
    from spin_diffusion.model.weights import fingerprint_module

    base = load_pipeline(tiny_pipeline_dir).unet
    (tmp_path / "iter-1").mkdir()
    record = {"opponent_fingerprint": fingerprint_module(base)}
    (tmp_path / "iter-1" / "iteration.json").write_text(json.dumps(record))
    check_same_base(tmp_path, base, "moved/pipeline")  # same weights: fine
    with pytest.raises(CheckpointError, match="holds other weights than the base"):
        check_same_base(tmp_path, load_pipeline(tiny_vpred_dir).unet, "moved/pipeline")
    shutil.rmtree(tmp_path / "iter-1")
    check_same_base(tmp_path, base, "x")  # nothing recorded yet: nothing to compare


def test_a_copied_data_set_resumes_and_a_changed_pixel_is_still_refused(
    tmp_path: Path, tiny_pipeline_dir: Path, capsys
) -> None:
    data = colour_squares(tmp_path / "d", ["red", "blue"])
    iterations = [{"beta": 2000}, {"beta": 2000}]
    one = tiny_spin_config(tmp_path, tiny_pipeline_dir, data, training=TRAINING, iterations=iterations[:1])
    assert main(["train", str(one)]) == 0
    shutil.copytree(data, tmp_path / "copy", copy_function=shutil.copyfile)  # new mtimes, same bytes
    shutil.rmtree(data)
    (tmp_path / "copy").rename(data)
    two = tiny_spin_config(tmp_path, tiny_pipeline_dir, data, training=TRAINING, iterations=iterations)
    assert main(["train", str(two)]) == 0, capsys.readouterr().err  # was: "the data under data.path changed"

    from PIL import Image

    img = Image.open(data / "0.png").convert("RGB")
    img.putpixel((0, 0), (0, 0, 0))
    img.save(data / "0.png")
    three = tiny_spin_config(
        tmp_path, tiny_pipeline_dir, data, training=TRAINING, iterations=[*iterations, {}]
    )
    capsys.readouterr()
    assert main(["train", str(three)]) == 2
    assert "data under data.path changed" in capsys.readouterr().err
