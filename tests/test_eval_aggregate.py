"""Mean/median, best-of-N, win rates and the markdown report on hand-made score tables."""

from __future__ import annotations

import numpy as np
import pytest

from spin_diffusion.evaluation import aggregate as agg
from spin_diffusion.evaluation.report import render_markdown

# 3 prompts x 2 images, two metrics on very different scales (like PickScore vs HPS).
TABLE = {
    "pick": {
        "A": np.array([[20.0, 22.0], [21.0, 21.0], [19.0, 25.0]]),
        "B": np.array([[21.0, 21.0], [20.0, 20.0], [22.0, 22.0]]),
    },
    "hps": {
        "A": np.array([[0.30, 0.20], [0.25, 0.25], [0.10, 0.20]]),
        "B": np.array([[0.25, 0.25], [0.25, 0.25], [0.20, 0.20]]),
    },
}


def test_mean_and_median_with_the_paper_average_column():
    mean = agg.summary(TABLE, "mean")
    assert mean["A"]["pick"] == pytest.approx(128 / 6)
    assert mean["B"]["hps"] == pytest.approx(1.4 / 6)
    assert mean["A"]["average"] == pytest.approx((128 / 6 + 1.3 / 6) / 2)
    med = agg.summary(TABLE, "median")
    assert med["A"]["pick"] == pytest.approx(21.0)  # sorted 19 20 21 21 22 25
    assert med["A"]["hps"] == pytest.approx(0.225)
    assert med["B"]["average"] == pytest.approx((21.0 + 0.25) / 2)


def test_best_of_n_max_takes_each_metric_best_independently():
    best = agg.best_of_n(TABLE, "max")
    assert best["A"]["pick"] == pytest.approx((22 + 21 + 25) / 3)
    assert best["A"]["hps"] == pytest.approx((0.30 + 0.25 + 0.20) / 3)  # other images than for pick
    assert best["B"]["pick"] == pytest.approx(21.0)


def test_best_of_n_zscore_picks_one_image_per_prompt():
    z = agg.standardized(TABLE)
    pooled = np.concatenate([TABLE["pick"]["A"].ravel(), TABLE["pick"]["B"].ravel()])
    np.testing.assert_allclose(z["pick"]["A"], (TABLE["pick"]["A"] - pooled.mean()) / pooled.std())
    # prompt 0 of A: image 0 has pick 20 (low) hps 0.30 (high); image 1 the reverse.
    mz = agg.mean_z(TABLE)["A"]
    choice = agg.chosen_images(mz)
    assert choice[2] == 1  # 25 and 0.20 beat 19 and 0.10 on both metrics
    assert choice[1] == 0  # exact tie -> first image
    best = agg.best_of_n(TABLE, "zscore")
    rows = np.arange(3)
    assert best["A"]["pick"] == pytest.approx(TABLE["pick"]["A"][rows, choice].mean())
    assert best["A"]["hps"] == pytest.approx(TABLE["hps"]["A"][rows, choice].mean())
    # the raw-mean rule is dominated by the large-scale metric: prompt 0 picks image 1 (pick 22)
    raw = agg.best_of_n(TABLE, "mean")
    assert raw["A"]["hps"] == pytest.approx((0.20 + 0.25 + 0.20) / 3)
    with pytest.raises(ValueError, match="unknown best-of-N rule"):
        agg.best_of_n(TABLE, "median")


def test_zscore_choice_at_prompt_zero_is_hand_computed():
    z = agg.standardized(TABLE)
    s0 = (z["pick"]["A"][0, 0] + z["hps"]["A"][0, 0]) / 2
    s1 = (z["pick"]["A"][0, 1] + z["hps"]["A"][0, 1]) / 2
    assert agg.chosen_images(agg.mean_z(TABLE)["A"])[0] == (0 if s0 >= s1 else 1)


def test_win_rate_per_prompt_with_ties_counting_half():
    wr = agg.win_rates(TABLE, "prompt")
    # pick prompt means: A = 21, 21, 22 ; B = 21, 20, 22 -> tie, win, tie
    assert wr["A"]["B"]["pick"] == pytest.approx((0.5 + 1 + 0.5) / 3)
    assert wr["B"]["A"]["pick"] == pytest.approx((0.5 + 0 + 0.5) / 3)
    # hps prompt means: A = .25 .25 .15 ; B = .25 .25 .20 -> tie tie loss
    assert wr["A"]["B"]["hps"] == pytest.approx((0.5 + 0.5 + 0) / 3)
    for m in ("pick", "hps", "average"):
        assert wr["A"]["B"][m] + wr["B"]["A"][m] == pytest.approx(1.0)


def test_win_rate_per_image_compares_same_seed_images():
    wr = agg.win_rates(TABLE, "image")
    # pick: (20<21) (22>21) (21>20) (21>20) (19<22) (25>22) -> 4/6
    assert wr["A"]["B"]["pick"] == pytest.approx(4 / 6)
    with pytest.raises(ValueError, match="unknown win-rate unit"):
        agg.win_rates(TABLE, "pixel")


def test_win_rate_on_the_average_uses_standardised_scores():
    # A loses every prompt on the big-scale metric and wins every prompt on the small one.
    # A raw average (20 + .9) / 2 < (21 + .1) / 2 would give B every prompt; standardised:
    # big z = -1 (A) / +1 (B); small pooled [.9 .9 .5 .1 .1 .1]: mean .4333, std .3590,
    # z_A = 1.300, 1.300, 0.186 and z_B = -0.929 -> mean z A = .150 .150 -.407 vs B = .036.
    table = {
        "big": {"A": np.array([[20.0], [20.0], [20.0]]), "B": np.array([[21.0], [21.0], [21.0]])},
        "small": {"A": np.array([[0.9], [0.9], [0.5]]), "B": np.array([[0.1], [0.1], [0.1]])},
    }
    wr = agg.win_rates(table, "prompt")
    assert wr["A"]["B"]["big"] == 0.0
    assert wr["A"]["B"]["small"] == 1.0
    assert wr["A"]["B"]["average"] == pytest.approx(2 / 3)


def test_identical_models_tie_everywhere():
    table = {"m": {"A": TABLE["pick"]["A"], "B": TABLE["pick"]["A"].copy()}}
    wr = agg.win_rates(table)
    assert wr["A"]["B"] == {"m": 0.5, "average": 0.5}


def test_bad_tables_are_rejected():
    with pytest.raises(ValueError, match="shape"):
        agg.summary({"m": {"A": np.zeros((2, 2)), "B": np.zeros((3, 2))}})
    with pytest.raises(ValueError, match="covers models"):
        agg.summary({"m": {"A": np.zeros((2, 2))}, "n": {"B": np.zeros((2, 2))}})
    with pytest.raises(ValueError, match="non-empty"):
        agg.summary({"m": {"A": np.zeros(3)}})


def test_markdown_report_has_the_paper_tables():
    results = {
        "metrics": ["pick", "hps"],
        "metric_kinds": {"pick": "pickscore", "hps": "hpsv2"},
        "n_prompts": 3,
        "settings": {
            "n_images_per_prompt": 2,
            "seed": 0,
            "num_inference_steps": 20,
            "scheduler": "dpmsolver++",
            "guidance_scale": 7.5,
            "win_rate_unit": "prompt",
        },
        "mean": agg.summary(TABLE, "mean"),
        "median": agg.summary(TABLE, "median"),
        "best_of_n": {"zscore": agg.best_of_n(TABLE, "zscore")},
        "win_rate": agg.win_rates(TABLE),
        "baseline": "B",
        "distribution": {
            "A": {"fid": 1.5, "kid_mean": 0.01, "kid_std": 0.001},
            "B": {"fid": 2.5, "kid_mean": 0.02, "kid_std": 0.002},
        },
    }
    md = render_markdown(results)
    assert "## Mean scores" in md and "## Median scores" in md and "## Best-of-2 (zscore" in md
    assert "## Win rate over B (%)" in md
    assert "| A | 66.7 | 33.3 |" in md  # pick and hps win rates of A over B in percent
    assert "PickScore: logit_scale.exp() x cosine" in md and "HPSv2: cosine" in md
    # the best mean PickScore is bolded; the lower FID is the best
    assert "**21.3333**" in md
    assert "**1.5000**" in md
