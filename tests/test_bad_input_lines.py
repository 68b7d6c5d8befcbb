"""Bad input that used to end in a traceback (or a misleading word) is one line naming the row or field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from spin_diffusion.config.data import DataConfig
from spin_diffusion.config.run import validate_config
from spin_diffusion.data.problems import BAD_CAPTION, MISSING_CAPTION
from spin_diffusion.data.sources import scan_source
from spin_diffusion.errors import ConfigError
from tiny_runs import colour_squares


def _captions(tmp_path: Path, captions: list) -> DataConfig:
    root = colour_squares(tmp_path / "d", ["red"] * len(captions))
    rows = [json.dumps({"file_name": f"{i}.png", "text": c}) for i, c in enumerate(captions)]
    (root / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    return DataConfig(source="imagefolder", path=str(root), resolution=16)


def test_a_caption_with_a_lone_surrogate_is_a_bad_caption_with_its_line(tmp_path: Path) -> None:
    cfg = _captions(tmp_path, ["a red square", "a \ud800 b"])
    assert '"a \\ud800 b"' in (Path(cfg.path) / "metadata.jsonl").read_text()  # valid JSON, invalid UTF-8
    stats = scan_source(cfg)
    assert stats.usable == 1 and stats.problems == {BAD_CAPTION: 1}
    assert (
        "metadata.jsonl:2" in stats.shown[BAD_CAPTION][0]
        and "not valid Unicode" in stats.shown[BAD_CAPTION][0]
    )


def test_a_caption_list_without_text_is_not_called_empty(tmp_path: Path) -> None:
    stats = scan_source(_captions(tmp_path, [[1, 2], ["", "a red square"]]))
    assert stats.usable == 1 and stats.problems == {MISSING_CAPTION: 1}
    assert "list with no text" in stats.shown[MISSING_CAPTION][0]


@pytest.mark.parametrize("seed", [-1, 2**32])
def test_a_seed_outside_what_the_generators_take_is_refused_by_validation(seed: int) -> None:
    raw = {"name": "t", "model": {"pretrained": "m"}, "seed": seed,
           "data": {"source": "imagefolder", "path": "d", "resolution": 16}}  # fmt: skip
    with pytest.raises(ConfigError, match="seed"):
        validate_config(raw)
    validate_config({**raw, "seed": 2**32 - 1})


def test_a_run_directory_that_cannot_take_the_lock_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno
    import os

    from spin_diffusion.errors import UserError
    from spin_diffusion.infra import dirlock
    from spin_diffusion.selfplay import rundir

    real_open = os.open

    def read_only(path, flags, *args):
        if str(path).endswith(dirlock.LOCK):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(dirlock.os, "open", read_only)  # as a non-root user on a read-only directory
    lock = rundir.run_lock(tmp_path / "run")
    with pytest.raises(UserError, match=r"cannot create the lock file .*Permission denied.*writable"), lock:
        pass


def test_a_pickapic_file_without_a_label_column_is_told_why_it_was_read_as_parquet(
    tmp_path: Path, capsys
) -> None:
    from spin_diffusion.cli.main import main
    from spin_diffusion.data.testing import image_bytes, make_image, write_parquet

    path = write_parquet(
        tmp_path / "pap.parquet",
        {"caption": ["a"], "jpg_0": [image_bytes(make_image(0), "JPEG")],
         "jpg_1": [image_bytes(make_image(1), "JPEG")], "label_0": [1.0]},
    )  # fmt: skip
    assert main(["data", "check", str(path)]) == 2
    err = capsys.readouterr().err
    assert "looks like Pick-a-Pic" in err and "no label_1 column" in err, err
