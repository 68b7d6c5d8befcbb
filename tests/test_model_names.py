"""Model names of the toy studies: one parse/name pair, and every model a study judges round-trips."""

from __future__ import annotations

from pathlib import Path

import pytest

from spin_diffusion.studies.model_names import ModelName, sft_step
from spin_diffusion.studies.runs import examples_seen, models_of
from spin_diffusion.studies.settings import ALL_METHODS, ReproduceConfig


@pytest.mark.parametrize(
    ("name", "record"),
    [
        ("base", ModelName("base")),
        ("sft-150", ModelName("sft", step=150)),
        ("dpo", ModelName("dpo")),
        ("inversion-dpo", ModelName("inversion-dpo")),
        ("spin-3", ModelName("spin", iteration=3)),
        ("spin-12", ModelName("spin", iteration=12)),
        ("spin-exact-2", ModelName("spin-exact", iteration=2)),
        ("spin-1-continued", ModelName("spin-continued", iteration=1)),
        ("sft-best", ModelName("sft-best")),
    ],
)
def test_parse_and_name_are_inverse(name: str, record: ModelName) -> None:
    assert ModelName.parse(name) == record
    assert record.name == name == str(record)


def test_every_judged_model_round_trips_and_has_a_budget(tmp_path: Path) -> None:
    cfg = ReproduceConfig(methods=list(ALL_METHODS))
    names = list(models_of(cfg, tmp_path))
    assert [ModelName.parse(n).name for n in names] == names
    assert names[:2] == ["base", "sft-150"] and "spin-exact-2" in names and "spin-1-continued" in names
    its = cfg.spin.iterations
    assert examples_seen(cfg, "spin-2") == (its[0].max_steps + its[1].max_steps) * cfg.batch_size
    assert examples_seen(cfg, "spin-1-continued") == examples_seen(cfg, "spin-2")
    assert examples_seen(cfg, "sft-300") == 300 * cfg.batch_size and examples_seen(cfg, "base") == 0
    assert sft_step("sft-300") == 300 and sft_step("spin-3") is None and sft_step("sft-best") is None
    with pytest.raises(ValueError, match="not a model"):
        examples_seen(cfg, "spin-exact")
