"""Toy data: imagefolder layout written atomically, disjoint prompt splits, held-out combinations."""

from __future__ import annotations

import json

import numpy as np
import pytest

from spin_diffusion.cli.main import main
from spin_diffusion.errors import DataError
from spin_diffusion.toy.datasets import (
    curated_example,
    eval_prompts,
    finetune_prompts,
    generate_pairs,
    write_imagefolder,
)
from spin_diffusion.toy.world import HELD_OUT_COMBOS, parse_prompt


def test_write_imagefolder_layout_and_content(tmp_path):
    out = write_imagefolder(tmp_path / "curated", n=12, seed=3)
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and set(rows[0]) == {"file_name", "text"}
    assert sorted(p.name for p in out.glob("*.png")) == [r["file_name"] for r in rows]
    for r in rows:
        parse_prompt(r["text"])  # every caption is a valid toy prompt
    assert [p.name for p in tmp_path.iterdir()] == ["curated"]  # no temporary directory left behind


def test_write_imagefolder_refuses_to_clobber_and_is_deterministic(tmp_path):
    a = write_imagefolder(tmp_path / "a", n=5, seed=1, distribution="web")
    with pytest.raises(DataError, match="not empty"):
        write_imagefolder(a, n=5, seed=1)
    b = write_imagefolder(tmp_path / "b", n=5, seed=1, distribution="web")
    for f in ("metadata.jsonl", "000004.png"):
        assert (a / f).read_bytes() == (b / f).read_bytes()
    write_imagefolder(a, n=3, seed=2, overwrite=True)
    assert len(list(a.glob("*.png"))) == 3


def test_pairs_are_prefix_stable_and_sized():
    short, long = generate_pairs(4, 0, "curated", 48), generate_pairs(6, 0, "curated", 48)
    assert [t for t, _ in short] == [t for t, _ in long[:4]]
    assert long[5][1].size == (48, 48)


def test_eval_and_finetune_prompts_never_share_a_spec():
    ft = {parse_prompt(p).canonical() for p in finetune_prompts(1500, seed=0)}
    ev = [parse_prompt(p) for p in eval_prompts(300, seed=0)]
    assert len(ev) == 300 and not ft & {s.canonical() for s in ev}
    held = [s for s in ev if any((o.colour, o.shape) in HELD_OUT_COMBOS for o in s.objects)]
    assert 60 < len(held) < 180  # a quarter name one on purpose; random eval specs add more


def test_held_out_combos_never_appear_in_finetuning_data():
    rng = np.random.default_rng(0)
    for _ in range(1500):
        text, scene = curated_example(rng)
        assert parse_prompt(text).objects and all(
            (o.colour, o.shape) not in HELD_OUT_COMBOS for o in scene.objects
        )
    for p in finetune_prompts(1500, seed=1):
        assert all((o.colour, o.shape) not in HELD_OUT_COMBOS for o in parse_prompt(p).objects)


def test_cli_dataset_and_errors(tmp_path, capsys):
    out = tmp_path / "d"
    assert main(["toy", "dataset", str(out), "--n", "3", "--seed", "1"]) == 0
    assert len(list(out.glob("*.png"))) == 3
    assert main(["toy", "dataset", str(out), "--n", "3"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["toy", "dataset", str(tmp_path / "e"), "--distribution", "nice"]) == 2
    assert main(["toy", "prompts", "eval", "--n", "3"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 3


def test_cli_judge_prints_verdict_and_rejects_bad_files(tmp_path, capsys):
    out = write_imagefolder(tmp_path / "d", n=1, seed=0)
    row = json.loads((out / "metadata.jsonl").read_text())
    assert main(["toy", "judge", str(out / row["file_name"]), row["text"]]) == 0
    assert json.loads(capsys.readouterr().out)["fidelity"] == 1.0
    bad = tmp_path / "x.png"
    bad.write_text("not an image")
    assert main(["toy", "judge", str(bad), "a red circle"]) == 2
    assert "cannot read image" in capsys.readouterr().err
    assert main(["toy", "judge", str(out / row["file_name"]), "a red banana"]) == 2
    assert "banana" in capsys.readouterr().err
