"""`spin-diffusion demo --quick`: the shipped base, two self-play iterations, the oracle table."""

from __future__ import annotations

from pathlib import Path

from spin_diffusion.cli import main


def test_quick_demo_prints_the_table(tmp_path: Path, capsys) -> None:
    assert main(["demo", "--quick", "--output-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    table = (tmp_path / "demo-quick" / "demo_table.md").read_text()
    assert table in out
    rows = {line.split("|")[1].strip(): line.split("|")[2:-1] for line in table.splitlines()[2:]}
    assert list(rows) == ["curated data", "base", "iter-1", "iter-2"]
    curated, base = float(rows["curated data"][0]), float(rows["base"][0])
    assert curated > 0.95 and base < curated - 0.3  # the base is clearly below the data it will learn from
    assert rows["iter-2"][-1].strip().endswith("%")  # win rate against the base
    assert (tmp_path / "demo-quick" / "eval" / "grid.png").is_file()
