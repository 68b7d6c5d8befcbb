"""Fidelity by attribute from the oracle's verdicts, and prompts written under the grid's images."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from spin_diffusion.evaluation.plots import CAPTIONED_MIN_CELL, labelled_grid
from spin_diffusion.toy.diagnostics import breakdown_cells, breakdown_of_verdicts, fidelity_breakdown
from spin_diffusion.toy.render import CURATED_BACKGROUND, render
from spin_diffusion.toy.world import sample_spec, spec_to_prompt


def test_the_breakdown_pools_each_kind_of_check_by_hand() -> None:
    verdicts = [
        {"checks": {"count": True, "object0.colour": True, "object0.shape": False}, "n_expected": 1,
         "n_detected": 1},
        {"checks": {"count": False, "object0.colour": False, "object1.colour": True, "object1.size": True},
         "n_expected": 2, "n_detected": 0},
        {"checks": {"count": False, "object0.position": True}, "n_expected": 1, "n_detected": 3},
    ]  # fmt: skip
    out = breakdown_of_verdicts(verdicts)
    assert out["attr_count"] == 1 / 3
    assert out["attr_colour"] == 2 / 3 and out["attr_shape"] == 0.0
    assert out["attr_size"] == 1.0 and out["attr_position"] == 1.0
    assert out["objects_found_per_asked"] == 4 / 4 and out["empty_share"] == 1 / 3
    assert math.isnan(breakdown_of_verdicts([verdicts[2]])["attr_colour"])  # nobody asked for a colour
    assert breakdown_cells(out) == ["0.333", "0.667", "0.000", "1.000", "1.000", "1.00", "33%"]
    assert breakdown_cells({})[0] == "-"


def test_curated_renders_pass_and_blank_canvases_are_empty() -> None:
    rng = np.random.default_rng(0)
    specs = [sample_spec(rng) for _ in range(24)]
    prompts = [spec_to_prompt(s, rng) for s in specs]
    images = [render(s, 32, "curated", rng) for s in specs]
    good = fidelity_breakdown(images, prompts)
    assert good["empty_share"] == 0.0 and good["attr_colour"] >= 0.95 and good["attr_count"] >= 0.9
    blank = fidelity_breakdown([Image.new("RGB", (32, 32), CURATED_BACKGROUND)] * len(prompts), prompts)
    assert blank["empty_share"] == 1.0 and blank["objects_found_per_asked"] == 0.0
    assert blank["attr_colour"] == 0.0 and blank["attr_count"] == 0.0


def test_the_grid_writes_each_prompt_under_its_image_at_a_readable_size() -> None:
    tile = Image.new("RGB", (32, 32), (200, 30, 30))
    rows = {"base": [tile, tile], "spin-1": [tile, tile]}
    plain = labelled_grid(rows)
    captioned = labelled_grid(rows, captions=["a red circle at the top left", "two big blue squares"])
    assert captioned.height > plain.height
    arr = np.asarray(captioned.convert("L"))
    label_w = captioned.width - 2 * (CAPTIONED_MIN_CELL + 2)
    image_px = arr[:CAPTIONED_MIN_CELL, label_w : label_w + CAPTIONED_MIN_CELL]
    assert (image_px == image_px[0, 0]).all()  # the 32 px image fills a 128 px cell (upscaled)
    below = arr[CAPTIONED_MIN_CELL + 1 : CAPTIONED_MIN_CELL + 40, label_w : label_w + CAPTIONED_MIN_CELL]
    assert (below < 128).sum() > 30  # dark text pixels under the image
