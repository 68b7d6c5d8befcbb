"""The run-directory layout: one object names every path, and finds iterations in numeric order."""

from __future__ import annotations

from pathlib import Path

from spin_diffusion.infra.run_layout import RunLayout, iteration_name, parse_iteration_name


def test_iteration_paths(tmp_path: Path) -> None:
    it = RunLayout(tmp_path).iteration(3)
    assert it.root == tmp_path / "iter-3" and it.k == 3
    assert it.model == tmp_path / "iter-3" / "model"
    assert it.done == tmp_path / "iter-3" / "iteration.json"
    assert it.snapshot(40) == tmp_path / "iter-3" / "snapshots" / "step-40"
    assert it.checkpoints.name == "checkpoints" and it.samples.name == "samples"
    assert it.train_log.name == "train_log.jsonl"
    assert it.reference_table.name == "reference_errors.safetensors"


def test_iterations_are_found_in_numeric_order_and_other_names_ignored(tmp_path: Path) -> None:
    for name in ("iter-10", "iter-2", "iter-x", "iter-1"):
        (tmp_path / name).mkdir()
    (tmp_path / "iter-3").write_text("not a directory")
    assert [it.k for it in RunLayout(tmp_path).iterations()] == [1, 2, 10]
    assert parse_iteration_name("iter-7") == 7 and parse_iteration_name("iter-7b") is None
    assert iteration_name(7) == "iter-7"
