"""`spin-diffusion data check`: one summary, exact tie counts, non-zero exit on unusable data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from spin_diffusion.cli.data import app
from spin_diffusion.data.testing import make_imagefolder, make_parquet, make_pickapic, write_parquet

runner = CliRunner()

LABELS = [(1, 0), (0.5, 0.5), (0, 1), (0.5, 0.5), (0.5, 0.5), (1, 0), (0, 1)]  # 3 ties


def test_check_pickapic_reports_exact_ties(tmp_path):
    path = make_pickapic(tmp_path / "pap.parquet", LABELS)
    res = runner.invoke(app, ["check", str(path), "--resolution", "32"])
    assert res.exit_code == 0, res.output
    assert "source pickapic" in res.output  # inferred from the columns
    assert "rows read:        7" in res.output
    assert "ties dropped:     3" in res.output
    assert "usable examples:  4" in res.output
    assert "OK: 4 usable examples" in res.output

    res = runner.invoke(app, ["check", str(path), "--resolution", "32", "--pairs", "--json"])
    assert res.exit_code == 0
    report = json.loads(res.output)
    assert (report["rows_read"], report["ties_dropped"], report["usable"], report["pairs"]) == (7, 3, 4, True)


def test_check_fails_with_problems_listed(tmp_path):
    root = make_imagefolder(tmp_path / "ds", ["ok", "", "fine"])
    (root / "img_002.png").write_bytes(b"junk")
    res = runner.invoke(app, ["check", str(root), "--resolution", "32"])
    assert res.exit_code == 1
    assert "source imagefolder" in res.output
    assert "usable examples:  1" in res.output and "unusable:         2" in res.output
    assert "empty_caption: 1" in res.output and "unreadable_image: 1" in res.output
    assert "metadata.jsonl:2 (img_001.png): caption 'text' is empty" in res.output
    assert "metadata.jsonl:3 (img_002.png)" in res.output
    assert "FAILED: 2 unusable examples" in res.output


def test_check_bad_label_fails(tmp_path):
    path = make_pickapic(tmp_path / "pap.parquet", [(1, 0), (0.2, 0.8)])
    res = runner.invoke(app, ["check", str(path), "--resolution", "32"])
    assert res.exit_code == 1
    assert "bad_label: 1" in res.output and "pap.parquet row 1: labels (0.2, 0.8)" in res.output


def test_check_yaml_run_config(tmp_path):
    make_parquet(tmp_path / "train.parquet", ["a", "b", "c"])
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        "name: demo\nmethod: sft\n"
        f"data:\n  source: parquet\n  path: {tmp_path / 'train.parquet'}\n  resolution: 32\n"
    )
    res = runner.invoke(app, ["check", str(cfg)])
    assert res.exit_code == 0, res.output
    assert "usable examples:  3" in res.output and "source parquet" in res.output

    # min_image_size from the command line makes every 48x40 image too small.
    res = runner.invoke(app, ["check", str(cfg), "--min-image-size", "41"])
    assert res.exit_code == 1 and "too_small: 3" in res.output

    dpo = tmp_path / "dpo.yaml"
    path = make_pickapic(tmp_path / "pap.parquet", LABELS)
    dpo.write_text(f"method: dpo\ndata:\n  source: pickapic\n  path: {path}\n  resolution: 32\n")
    res = runner.invoke(app, ["check", str(dpo)])
    assert res.exit_code == 0 and "preference pairs" in res.output and "ties dropped:     3" in res.output


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("data: [1, 2]\n", "'data' must be a mapping"),
        ("name: x\n", "no 'data:' block"),
        (
            "data:\n  source: parquet\n  path: x\n  resolution: 30\n",
            "data.resolution: resolution must be a positive multiple of 8",
        ),
        ("data:\n  source: csv\n  path: x\n  resolution: 32\n", "data.source"),
        ("data: {source: parquet\n", "not valid YAML"),
    ],
)
def test_check_bad_config_is_one_line_error(tmp_path, content, message):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(content)
    res = runner.invoke(app, ["check", str(cfg)])
    assert res.exit_code == 2
    assert res.stderr.startswith("error: ") and message in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.output


def test_check_fatal_data_errors(tmp_path):
    make_parquet(tmp_path / "p.parquet", ["a"])
    res = runner.invoke(app, ["check", str(tmp_path / "p.parquet"), "--caption-column", "caption"])
    assert res.exit_code == 2 and "column 'caption' (data.caption_column) not found" in res.stderr
    res = runner.invoke(app, ["check", str(tmp_path / "missing")])
    assert res.exit_code == 2 and res.stderr.startswith("error: ") and "no such file" in res.stderr
    write_parquet(tmp_path / "empty.parquet", {"image": [b""], "text": ["x"]})
    res = runner.invoke(app, ["check", str(tmp_path / "empty.parquet"), "--resolution", "32"])
    assert res.exit_code == 1 and "FAILED" in res.output


def test_check_through_the_main_cli(tmp_path):
    """The mounted sub-command keeps its summary and its non-zero exit code (one subprocess: ~10 s)."""
    pytest.importorskip("spin_diffusion.cli.main")
    path = make_pickapic(tmp_path / "pap.parquet", [*LABELS, (0.3, 0.7)])
    proc = subprocess.run(
        [sys.executable, "-m", "spin_diffusion.cli", "data", "check", str(path), "--resolution", "32"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
        timeout=300,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "ties dropped:     3" in proc.stdout and "usable examples:  4" in proc.stdout
    assert "bad_label: 1" in proc.stdout and "pap.parquet row 7: labels (0.3, 0.7)" in proc.stdout
    assert "Traceback" not in proc.stderr


def test_check_a_kto_run_on_single_labelled_images(tmp_path):
    """kto with training.kto.unpaired reads an imagefolder's single images, not preference pairs."""
    root = make_imagefolder(tmp_path / "ds", ["a red square", "a blue circle"])
    cfg = tmp_path / "kto.yaml"
    cfg.write_text(
        "method: kto\ntraining:\n  kto:\n    unpaired: true\n"
        f"data:\n  source: imagefolder\n  path: {root}\n  resolution: 32\n  label_column: label\n"
    )
    res = runner.invoke(app, ["check", str(cfg)])
    assert res.exit_code == 0, res.output
    assert "usable examples:  2" in res.output
