"""End to end on the tiny flow-matching pipelines (SD3, FLUX.1, Sana): SPIN x2, SFT (LoRA), DPO and the
DPO family, resume after an interruption, and the results loading in plain diffusers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from family_runs import (
    check_dpo_precomputed,
    check_resume_after_interruption,
    check_sft_lora,
    check_spin_two_iterations,
    fresh_accelerator_state,  # noqa: F401 (autouse fixture)
    make_imagefolder,
    make_pickapic,
    train_log,
    write_config,
)
from spin_diffusion.cli.main import main
from spin_diffusion.model.tiny_flow import (
    build_tiny_flux_pipeline,
    build_tiny_sana_pipeline,
    build_tiny_sd3_pipeline,
)
from test_flow import flux_spec, sd3_spec

pytestmark = pytest.mark.slow

#: A flow family samples with its own flow-matching sampler; the tiny models sample at 16 px in checks
#: (Sana's pipeline asks for multiples of 32, unbinned).
FLOW = {"sampling": {"scheduler": "pipeline", "num_inference_steps": 2, "guidance_scale": 2.0}}


@dataclass(frozen=True)
class FlowBase:
    path: Path
    cls: Any
    extra: dict[str, Any]  # config overrides: the flow sampler (and Sana's resolution)
    call: dict[str, Any]  # plain-pipeline sampling arguments of the load-and-sample checks

    @property
    def with_eval(self) -> dict[str, Any]:
        """``extra`` plus the flow sampler for check_spin_two_iterations' evaluation."""
        return {**self.extra, "evaluation": {"scheduler": "pipeline"}}


@pytest.fixture(scope="module", params=["sd3", "flux", "sana"])
def flow_base(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> FlowBase:
    from diffusers import FluxPipeline, SanaPipeline, StableDiffusion3Pipeline

    path = tmp_path_factory.mktemp(request.param) / "pipeline"
    small = {"height": 16, "width": 16}
    if request.param == "sd3":
        build_tiny_sd3_pipeline(sd3_spec()).save_pretrained(str(path), safe_serialization=True)
        return FlowBase(path, StableDiffusion3Pipeline, FLOW, small)
    if request.param == "flux":
        build_tiny_flux_pipeline(flux_spec()).save_pretrained(str(path), safe_serialization=True)
        return FlowBase(path, FluxPipeline, FLOW, small)
    build_tiny_sana_pipeline().save_pretrained(str(path), safe_serialization=True)
    sana = {**FLOW, "data": {"resolution": 32}}
    return FlowBase(path, SanaPipeline, sana, {"height": 32, "width": 32, "use_resolution_binning": False})


def test_spin_two_iterations(tmp_path: Path, flow_base: FlowBase, monkeypatch) -> None:
    b = flow_base
    check_spin_two_iterations(tmp_path, b.path, b.cls, monkeypatch, extra=b.with_eval, call=b.call)


def test_sft_lora(tmp_path: Path, flow_base: FlowBase) -> None:
    b = flow_base
    check_sft_lora(tmp_path, b.path, b.cls, extra=b.extra, call=b.call)


def test_sft_lora_in_bf16_mixed_precision(tmp_path: Path, flow_base: FlowBase) -> None:
    b = flow_base
    check_sft_lora(tmp_path, b.path, b.cls, mixed_precision="bf16", extra=b.extra, call=b.call)


def test_dpo_with_precomputed_reference(tmp_path: Path, flow_base: FlowBase) -> None:
    b = flow_base
    check_dpo_precomputed(tmp_path, b.path, b.cls, extra=b.extra, call=b.call)


@pytest.mark.parametrize("method", ["dmpo", "see-dpo", "adaptive-dpo", "kto"])
def test_the_dpo_family_runs_with_a_lora(tmp_path: Path, flow_base, method: str) -> None:
    base = flow_base.path
    data = {"source": "pickapic", "path": str(make_pickapic(tmp_path / "pickapic" / "train.parquet"))}
    cfg = write_config(
        tmp_path,
        base,
        data,
        method=method,
        iterations=[{"beta": 2500}],
        model={"pretrained": str(base), "lora": {"enabled": True, "rank": 2}},
        **flow_base.extra,
    )
    assert main(["train", str(cfg)]) == 0
    log = train_log(tmp_path / "runs" / "run" / "iter-1")
    assert len(log) == 2 and all(row["loss"] == row["loss"] for row in log)  # finite, not NaN


@pytest.mark.parametrize("method", ["spin-exact", "inversion-dpo"])
def test_methods_not_built_for_flow_models_are_refused_in_one_line(
    tmp_path: Path, flow_base: FlowBase, method: str, capsys
) -> None:
    base, cls = flow_base.path, flow_base.cls
    data = {"source": "imagefolder", "path": str(tmp_path / "nowhere")}
    sampler = "ddim" if method == "spin-exact" else "pipeline"  # spin-exact's own check wants ddim
    cfg = write_config(
        tmp_path,
        base,
        data,
        method=method,
        iterations=[{}],
        sampling={**FLOW["sampling"], "scheduler": sampler},
    )
    assert main(["train", str(cfg)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err and f"method: {method} is not available for {cls.__name__}" in err[-1]
    assert not (tmp_path / "runs" / "run").exists()


def test_a_sampler_a_flow_family_cannot_use_is_refused_before_training(
    tmp_path: Path, flow_base: FlowBase, capsys
) -> None:
    base, cls = flow_base.path, flow_base.cls
    data = {"source": "imagefolder", "path": str(make_imagefolder(tmp_path / "data"))}
    evaluation = {
        "prompts": ["a red circle"],
        "scorers": [{"kind": "toy_fidelity"}],
        "scheduler": "dpmsolver++",
    }
    cfg = write_config(tmp_path, base, data, evaluation=evaluation, **flow_base.extra)
    assert main(["train", str(cfg)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert f"evaluation.scheduler: dpmsolver++ does not apply to {cls.__name__}" in err[-1]
    assert not (tmp_path / "runs" / "run" / "iter-1").exists()


def test_resume_after_an_interruption(tmp_path: Path, flow_base: FlowBase, monkeypatch) -> None:
    check_resume_after_interruption(tmp_path, flow_base.path, monkeypatch, extra=flow_base.extra)
