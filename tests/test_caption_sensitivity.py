"""The caption-sensitivity diagnostic: one word swapped per caption, ratios of denoising errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from spin_diffusion.model.loading import load_pipeline
from spin_diffusion.model.shipped import toy_flow_base_path
from spin_diffusion.toy import base_model_path
from spin_diffusion.toy.caption_sensitivity import (
    SWAPS,
    caption_sensitivity,
    sensitivity_markdown,
    swapped_captions,
)
from spin_diffusion.toy.world import ATTRIBUTES, ObjectSpec, PromptSpec, complete_spec, parse_prompt

POINTS = (0.3, 0.9)


def test_each_swap_changes_exactly_its_attribute():
    rng = np.random.default_rng(3)
    for i in range(40):
        scene = complete_spec(PromptSpec((ObjectSpec(),)), rng)
        caps = swapped_captions(scene, rng, text_seed=i)
        true = parse_prompt(caps["true"]).objects[0]
        assert true == scene.objects[0]
        assert caps["empty"] == ""
        for a in ATTRIBUTES:
            swapped = parse_prompt(caps[a]).objects[0]
            assert swapped.get(a) != true.get(a), (a, caps[a])
            assert all(swapped.get(b) == true.get(b) for b in ATTRIBUTES if b != a), (a, caps[a])


class _Blind(torch.nn.Module):
    """The UNet with its text input zeroed: a model that reads no word of any caption."""

    def __init__(self, unet):
        super().__init__()
        self.inner, self.config, self.dtype = unet, unet.config, unet.dtype

    def forward(self, sample, timestep, encoder_hidden_states, **kwargs):
        return self.inner(sample, timestep, torch.zeros_like(encoder_hidden_states), **kwargs)


@pytest.fixture(scope="module")
def toy_base():
    torch.manual_seed(0)
    return load_pipeline(base_model_path())


def test_a_model_that_reads_no_caption_scores_exactly_one(toy_base):
    blind = load_pipeline(base_model_path())
    blind.unet = _Blind(blind.unet)
    result = caption_sensitivity(blind, n_scenes=8, points=POINTS, repeats=1)
    assert all(r == pytest.approx(1.0, abs=1e-6) for s in SWAPS for r in result.ratios[s])
    seeing = caption_sensitivity(toy_base, n_scenes=8, points=POINTS, repeats=1)
    assert seeing.noise == result.noise
    assert max(abs(seeing.ratios["empty"][i] - 1) for i in range(len(POINTS))) > 1e-4


@pytest.mark.parametrize("family", ["sd", "sd3"])
def test_noise_points_are_the_same_share_of_the_process_for_both_families(family, toy_base):
    pipe = toy_base if family == "sd" else load_pipeline(toy_flow_base_path())
    result = caption_sensitivity(pipe, n_scenes=4, points=POINTS, repeats=1)
    assert result.noise[0] < result.noise[1] <= 1.0
    if family == "sd3":  # sigma is the point itself on the unshifted schedule
        assert result.noise == pytest.approx(list(POINTS), abs=0.01)
    assert all(math.isfinite(r) and r > 0 for s in SWAPS for r in result.ratios[s])
    table = sensitivity_markdown(result)
    assert table.count("\n") == len(POINTS) + 2 and "position swapped" in table


def test_cli_prints_the_table_for_the_shipped_base():
    from typer.testing import CliRunner

    from spin_diffusion.cli.main import app

    res = CliRunner().invoke(app, ["toy", "caption-sensitivity", "--scenes", "2", "--repeats", "1"])
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("|")]
    assert len(lines) == 2 + 6 + 1 and "colour swapped" in lines[0] and lines[-1].startswith("| peak")
