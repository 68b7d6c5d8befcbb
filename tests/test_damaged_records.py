"""A damaged record written by an earlier run is one warning and a redo, or one clear line: no traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from spin_diffusion.config.sampling import SamplingConfig
from spin_diffusion.errors import ConfigError
from spin_diffusion.infra.run_layout import RunLayout
from spin_diffusion.model.loading import load_pipeline
from spin_diffusion.sampling.opponent import sample_opponent
from spin_diffusion.selfplay.rundir import check_data_unchanged

PROMPTS = ["a red circle", "a blue square", "a red square"]
IDS = [f"p{i}" for i in range(len(PROMPTS))]
SETTINGS = SamplingConfig(
    num_inference_steps=2, guidance_scale=2.0, batch_size=3, shard_size=2, num_previews=0
)


@pytest.fixture(scope="module")
def pipe(tiny_pipeline_dir: Path):
    return load_pipeline(tiny_pipeline_dir)


def _sample(pipe, out: Path):
    return sample_opponent(
        pipe, IDS, PROMPTS, SETTINGS, out, seed=4, model_fingerprint="m", show_progress=False
    )


@pytest.mark.parametrize(
    "damage", ["{", "{}", "", "[1]"], ids=["truncated", "empty object", "empty", "a list"]
)
@pytest.mark.parametrize("record", ["manifest.json", "settings.json"])
def test_a_damaged_opponent_record_is_sampled_again(
    pipe, tmp_path: Path, damage: str, record: str, caplog
) -> None:
    out = tmp_path / "samples"
    first = {pid: _sample(pipe, out).latents(pid).clone() for pid in IDS}
    (out / record).write_text(damage)
    if record == "settings.json":  # read only while sampling is unfinished (no manifest yet)
        (out / "manifest.json").unlink()
    with caplog.at_level("WARNING", logger="spin_diffusion.sampling.opponent"):
        again = _sample(pipe, out)
    assert f"{record} is damaged" in caplog.text
    for pid in IDS:
        torch.testing.assert_close(again.latents(pid), first[pid], rtol=0, atol=0)
    assert json.loads((out / "manifest.json").read_text())["identity"]["seed"] == 4


@pytest.mark.parametrize("damage", ["", "{", "[]"])
def test_a_damaged_data_record_is_one_line(tmp_path: Path, damage: str) -> None:
    (tmp_path / "iter-1").mkdir()
    (tmp_path / "iter-1" / "checkpoints").mkdir()  # the run has progress, so the record matters
    RunLayout(tmp_path).data_record.write_text(damage)
    with pytest.raises(ConfigError, match=r"data.json is damaged"):
        check_data_unchanged(tmp_path, {"latent_cache_key": "k"})
