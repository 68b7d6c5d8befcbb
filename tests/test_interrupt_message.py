"""Ctrl-C outside the stages that handle it themselves (latent encoding, evaluation) still says so."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from spin_diffusion.cli.main import main


def test_ctrl_c_inside_a_command_exits_130_with_a_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    import spin_diffusion.toy.datasets as datasets

    def ctrl_c(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)  # the signal arrives before this ends
        raise AssertionError("SIGINT did not interrupt")

    monkeypatch.setattr(datasets, "write_imagefolder", ctrl_c)
    before = signal.getsignal(signal.SIGINT)
    assert main(["toy", "dataset", str(tmp_path / "d"), "--n", "2"]) == 130
    assert "interrupted (Ctrl-C)" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is before  # the handler is put back
