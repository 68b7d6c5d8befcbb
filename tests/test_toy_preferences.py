"""Toy Pick-a-Pic-schema preferences: winners are the curated renders, ties present, positions shuffled."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from spin_diffusion.config.data import DataConfig
from spin_diffusion.data.sources import open_source
from spin_diffusion.toy.oracle import OracleScorer
from spin_diffusion.toy.preferences import preference_rows, write_preference_parquet


def test_rows_are_deterministic_and_shuffled() -> None:
    a, b = preference_rows(20, seed=1), preference_rows(20, seed=1)
    assert a == b
    labels = a["label_0"]
    assert {0.0, 1.0} <= set(labels)
    assert all(x + y == 1.0 for x, y in zip(labels, a["label_1"], strict=True))


def test_data_layer_reads_winners_with_better_style(tmp_path: Path) -> None:
    path = write_preference_parquet(tmp_path / "prefs.parquet", 24, seed=0)
    rows = preference_rows(24, seed=0)
    ties = sum(1 for x in rows["label_0"] if x == 0.5)
    cfg = DataConfig(source="pickapic", path=str(path), resolution=32)
    pairs = list(open_source(cfg, pairs=True))
    assert len(pairs) == 24 - ties
    style = OracleScorer("style")
    win = style.score([p.image_win for p in pairs], [p.caption for p in pairs])
    lose = style.score([p.image_lose for p in pairs], [p.caption for p in pairs])
    assert (win > lose).float().mean() > 0.9
    assert Image.open(io.BytesIO(rows["jpg_0"][0])).size == (32, 32)
