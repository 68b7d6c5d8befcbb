"""Evaluation prompt sets in their published formats."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from spin_diffusion.config.data import PromptSetConfig
from spin_diffusion.data.prompts import load_prompts
from spin_diffusion.data.testing import write_parquet
from spin_diffusion.errors import DataError


def load(**kw):
    return load_prompts(PromptSetConfig(**kw))


def test_text_file_one_prompt_per_line(tmp_path):
    p = tmp_path / "p.txt"
    p.write_text("\ufeffa red cube\n\n  two blue balls  \r\na cat\n", encoding="utf-8")
    assert load(kind="text", path=str(p)) == ["a red cube", "two blue balls", "a cat"]
    assert load(kind="text", path=str(p), limit=2) == ["a red cube", "two blue balls"]


def test_partiprompts_tsv_with_quotes_and_categories(tmp_path):
    p = tmp_path / "PartiPrompts.tsv"
    p.write_text(
        "Prompt\tCategory\tChallenge\tNote\n"
        'a sign that says "hello"\tWorld Knowledge\tWriting\t\n'
        '"quoted at start" poster\tArts\tBasic\t\n'
        "a horse\tAnimals\tBasic\t\n"
        "a dog\tAnimals\tBasic\t\n",
        encoding="utf-8",
    )
    assert load(kind="partiprompts", path=str(p)) == [
        'a sign that says "hello"',
        '"quoted at start" poster',
        "a horse",
        "a dog",
    ]
    assert load(kind="partiprompts", path=str(p), categories=["Animals"]) == ["a horse", "a dog"]
    with pytest.raises(DataError, match="no prompts in categories"):
        load(kind="partiprompts", path=str(p), categories=["Vehicles"])
    with pytest.raises(DataError, match="column 'Text' not found; header has: Prompt, Category"):
        load(kind="partiprompts", path=str(p), column="Text")


def test_hpsv2_file_and_style_directory(tmp_path):
    d = tmp_path / "hps"
    d.mkdir()
    for style, prompts in {"anime": ["a1", "a2"], "photo": ["p1"], "paintings": ["x1", "x2", "x3"]}.items():
        (d / f"{style}.json").write_text(json.dumps(prompts))
    assert load(kind="hpsv2", path=str(d / "photo.json")) == ["p1"]
    assert load(kind="hpsv2", path=str(d)) == ["a1", "a2", "x1", "x2", "x3", "p1"]  # styles in name order
    assert load(kind="hpsv2", path=str(d), styles=["photo", "anime"]) == ["p1", "a1", "a2"]
    with pytest.raises(DataError, match="no style file\\(s\\) concept-art.json"):
        load(kind="hpsv2", path=str(d), styles=["concept-art"])
    (d / "bad.json").write_text(json.dumps({"not": "a list"}))
    with pytest.raises(DataError, match="bad.json: expected a JSON list"):
        load(kind="hpsv2", path=str(d / "bad.json"))


def test_pickapic_unique_parquet(tmp_path):
    p = write_parquet(
        tmp_path / "test_unique.parquet", {"caption": ["b", "a", "b", "", None], "other": [1, 2, 3, 4, 5]}
    )
    assert load(kind="pickapic", path=str(p)) == ["b", "a", "b"]
    assert load(kind="pickapic", path=str(p), deduplicate=True) == ["b", "a"]
    with pytest.raises(DataError, match="column 'prompt' not found"):
        load(kind="pickapic", path=str(p), column="prompt")


def test_config_validation_and_missing_files(tmp_path):
    with pytest.raises(ValidationError, match="categories only applies"):
        PromptSetConfig(kind="text", path="x", categories=["a"])
    with pytest.raises(ValidationError, match="limit must be >= 1"):
        PromptSetConfig(kind="text", path="x", limit=0)
    with pytest.raises(ValidationError):
        PromptSetConfig(kind="text", path="x", unknown=1)
    with pytest.raises(DataError, match="no such file"):
        load(kind="text", path=str(tmp_path / "none.txt"))
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(DataError, match="no prompts found"):
        load(kind="text", path=str(tmp_path / "empty.txt"))
