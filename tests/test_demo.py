"""`spin-diffusion demo --quick`: base, SFT, DPO and SPIN iterations from the shipped base, the oracle table."""

from __future__ import annotations

from pathlib import Path

from spin_diffusion.cli.main import main


def test_quick_demo_prints_the_table(tmp_path: Path, capsys) -> None:
    assert main(["demo", "--quick", "--iterations", "2", "--output-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    table = (tmp_path / "demo-quick" / "demo_table.md").read_text()
    assert table in out
    rows = {line.split("|")[1].strip(): line.split("|")[2:-1] for line in table.splitlines()[2:]}
    assert list(rows) == ["curated data", "base", "sft-best", "dpo", "spin-1", "spin-2"]
    curated, base = float(rows["curated data"][1]), float(rows["base"][1])
    assert curated > 0.95 and base < curated - 0.3  # the base is clearly below the data it will learn from
    assert rows["spin-2"][-3].strip().endswith("%")  # win rate against the base
    assert rows["spin-2"][-1].strip().endswith("%")  # and against DPO
    attributes = (tmp_path / "demo-quick" / "demo_attributes.md").read_text()
    assert attributes in out and "| colour |" in attributes and "| empty images |" in attributes
    assert [line.split("|")[1].strip() for line in attributes.splitlines()[2:]] == list(rows)[1:]
    assert (tmp_path / "demo-quick" / "seed-0" / "eval" / "grid.png").is_file()
    assert (tmp_path / "demo-quick" / "plots" / "curves.png").is_file()
