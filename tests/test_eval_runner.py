"""The benchmark end to end: two tiny models x 8 prompts x 2 images, all scorers, reports, reuse, resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import spin_diffusion.evaluation.registry as registry
import spin_diffusion.model.loading as models_mod
import spin_diffusion.sampling.generate as sampling_mod
from spin_diffusion.config.evaluation import EvaluationConfig
from spin_diffusion.errors import CheckpointError
from spin_diffusion.evaluation import tiny_scorers as ts
from spin_diffusion.evaluation.runner import evaluate_models
from spin_diffusion.evaluation.store import prompt_id

PROMPTS = [
    "a red circle",
    "a blue square",
    "a green square",
    "a red square in the top left corner",
    "a blue circle",
    "a small red circle",
    "a big blue square at the bottom right",
    "a green circle and a red square",
]
METRICS = ["pickscore", "hpsv2", "imagereward", "aesthetic", "toy_fidelity"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_weights")
    clip = ts.save_tiny_clip(root / "clip")
    hps, hps_tok = ts.save_tiny_hps(root / "hps")
    ir, ir_tok = ts.save_tiny_imagereward(root / "ir")
    aes = ts.save_tiny_aesthetic(root / "aes", input_size=16)
    refs = root / "refs"
    refs.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(refs / f"{i}.png")
    return {
        "clip": clip,
        "hps": hps,
        "hps_tok": hps_tok,
        "ir": ir,
        "ir_tok": ir_tok,
        "aes": aes,
        "refs": refs,
    }


def _cfg(weights, **kw) -> EvaluationConfig:
    base = {
        "prompts": PROMPTS,
        "n_images_per_prompt": 2,
        "num_inference_steps": 2,
        "batch_size": 8,
        "device": "cpu",
        "best_of_n": ["max", "zscore", "mean"],
        "scorers": [
            {"kind": "pickscore", "path": str(weights["clip"]), "batch_size": 8},
            {"kind": "hpsv2", "path": str(weights["hps"]), "tokenizer_path": str(weights["hps_tok"])},
            {"kind": "imagereward", "path": str(weights["ir"]), "tokenizer_path": str(weights["ir_tok"])},
            {"kind": "aesthetic", "path": str(weights["aes"]), "clip_path": str(weights["clip"])},
            {"kind": "toy_fidelity"},
        ],
        "distribution": {
            "reference_dir": str(weights["refs"]),
            "feature": "clip",
            "feature_path": str(weights["clip"]),
            "kid_subset_size": 4,
            "kid_subsets": 3,
        },
    }
    base.update(kw)
    return EvaluationConfig.model_validate(base)


@pytest.fixture(scope="module")
def evaluated(weights, tiny_pipeline_dir, tiny_vpred_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "out"
    models = {"base": tiny_pipeline_dir, "iter-1": tiny_vpred_dir}
    results = evaluate_models(models, _cfg(weights), out)
    return {"out": out, "models": models, "results": results}


def _score_rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]


def test_two_models_produce_every_report(evaluated):
    out, results = evaluated["out"], evaluated["results"]
    for name in (
        "results.md",
        "results.json",
        "grid.png",
        "plots/metrics.png",
        "plots/win_rate.png",
        "scores.parquet",
    ):
        assert (out / name).is_file(), name
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(results))
    assert results["metrics"] == METRICS and results["n_prompts"] == 8 and results["baseline"] == "base"
    for table in ("mean", "median"):
        assert set(results[table]) == {"base", "iter-1"}
        assert set(results[table]["base"]) == {*METRICS, "average"}
    assert set(results["best_of_n"]) == {"max", "zscore", "mean"}
    wr = results["win_rate"]
    for m in (*METRICS, "average"):
        assert wr["base"]["iter-1"][m] + wr["iter-1"]["base"][m] == pytest.approx(1.0)
    assert set(results["distribution"]["base"]) == {"fid", "kid_mean", "kid_std", "n"}
    assert results["distribution"]["base"]["n"] == 16
    md = (out / "results.md").read_text()
    assert "## Mean scores" in md and "## Win rate over base (%)" in md and "## Best-of-2 (zscore" in md
    assert "## Distribution metrics" in md and "## Toy oracle set metrics" in md
    assert {"fidelity", "style"} <= set(results["toy_set_metrics"]["iter-1"])
    assert results["toy_set_metrics"]["base"]["fidelity"] == pytest.approx(
        results["mean"]["base"]["toy_fidelity"]
    )
    # 2 models x 8 prompts x 2 images, every image scored by every metric
    rows = _score_rows(out)
    assert len(rows) == 2 * 8 * 2 * len(METRICS)
    assert len(list((out / "models" / "base" / "images").glob("*.png"))) == 16
    grid = Image.open(out / "grid.png")
    # one row per model: 16 px images shown at 128 px, each with its prompt written under it
    assert grid.height % 2 == 0 and grid.height // 2 > 128 + 2
    assert grid.width > 8 * 128


def test_per_image_scores_are_the_stored_values(evaluated):
    import pyarrow.parquet as pq

    out, results = evaluated["out"], evaluated["results"]
    table = pq.read_table(out / "scores.parquet").to_pandas()
    assert len(table) == 32 and set(METRICS) <= set(table.columns)
    base = table[table.model == "base"]
    assert results["mean"]["base"]["pickscore"] == pytest.approx(base.pickscore.mean())
    assert results["median"]["base"]["hpsv2"] == pytest.approx(base.hpsv2.median())
    # the same seed is used for image j of a prompt in both models
    seeds = table.pivot_table(index=["prompt_id", "image_index"], columns="model", values="seed")
    assert (seeds["base"] == seeds["iter-1"]).all()


def test_rerun_reuses_images_and_scores(evaluated, weights, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("nothing should be regenerated or rescored")

    monkeypatch.setattr(models_mod, "load_pipeline", refuse)
    monkeypatch.setattr(registry, "build_scorer", refuse)
    n_rows = len(_score_rows(evaluated["out"]))
    again = evaluate_models(evaluated["models"], _cfg(weights), evaluated["out"])
    assert len(_score_rows(evaluated["out"])) == n_rows
    for key in ("mean", "median", "best_of_n", "win_rate", "distribution"):
        assert again[key] == evaluated["results"][key]


def test_adding_a_model_only_generates_that_model(evaluated, weights, tmp_path, monkeypatch):
    out = tmp_path / "out"
    shutil.copytree(evaluated["out"], out)
    loaded = []
    real_load = models_mod.load_pipeline

    def counting_load(path, **kw):
        loaded.append(Path(path))
        return real_load(path, **kw)

    monkeypatch.setattr(models_mod, "load_pipeline", counting_load)
    models = {**evaluated["models"], "copy": evaluated["models"]["base"]}  # the base again, as a 3rd model
    results = evaluate_models(models, _cfg(weights, distribution=None), out, baseline="copy")
    assert loaded == [Path(evaluated["models"]["base"])]
    rows = _score_rows(out)
    assert {r["model"] for r in rows[-16 * len(METRICS) :]} == {"copy"}
    assert len(rows) == 3 * 16 * len(METRICS)
    # shared seeds: the same model regenerated gives the same images and scores as the stored ones
    pid = prompt_id(PROMPTS[0])
    a = np.asarray(Image.open(out / "models" / "base" / "images" / f"{pid}_1.png"))
    b = np.asarray(Image.open(out / "models" / "copy" / "images" / f"{pid}_1.png"))
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
    assert results["win_rate"]["base"]["copy"]["average"] == pytest.approx(0.5, abs=0.15)
    assert "## Win rate over copy (%)" in (out / "results.md").read_text()


def test_resume_after_an_interrupted_run(evaluated, weights, tmp_path, monkeypatch):
    out = tmp_path / "out"
    shutil.copytree(evaluated["out"], out)
    pid = prompt_id(PROMPTS[3])
    (out / "models" / "iter-1" / "images" / f"{pid}_0.png").unlink()  # one image was never written
    lines = (out / "scores.jsonl").read_text().splitlines()
    (out / "scores.jsonl").write_text("\n".join(lines[:-3]) + "\n" + lines[-3][:20])  # a torn last line
    generated = []
    real_generate = sampling_mod.generate_images

    def counting_generate(pipe, prompts, seeds, **kw):
        generated.extend(prompts)
        return real_generate(pipe, prompts, seeds, **kw)

    monkeypatch.setattr(sampling_mod, "generate_images", counting_generate)
    results = evaluate_models(evaluated["models"], _cfg(weights), out)
    assert generated == [PROMPTS[3]]
    # the regenerated image is identical (same seed), so every metric agrees with the first run
    for m in METRICS:
        assert results["mean"]["iter-1"][m] == pytest.approx(
            evaluated["results"]["mean"]["iter-1"][m], abs=1e-3
        )
    rows = [
        json.loads(line)
        for line in (out / "scores.jsonl").read_text().splitlines()
        if line.startswith("{") and line.endswith("}")
    ]
    assert len({(r["model"], r["prompt_id"], r["image_index"], r["metric"]) for r in rows}) == 32 * len(
        METRICS
    )


def test_changed_sampling_settings_are_refused(evaluated, weights, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(evaluated["out"], out)
    with pytest.raises(
        CheckpointError, match=r"models/base holds images made differently \(guidance_scale 7.5 -> 3.0\)"
    ):
        evaluate_models(evaluated["models"], _cfg(weights, guidance_scale=3.0), out)


def test_cli_evaluate_command(evaluated, weights, tmp_path, capsys):
    from spin_diffusion.cli.main import main

    out = tmp_path / "out"
    shutil.copytree(evaluated["out"], out)
    cfg = _cfg(weights).model_dump(mode="json")
    job = {
        "models": {k: str(v) for k, v in evaluated["models"].items()},
        "baseline": "iter-1",
        "output_dir": str(out),
        "evaluation": cfg,
    }
    path = tmp_path / "eval.yaml"
    import yaml

    path.write_text(yaml.safe_dump(job))
    assert main(["evaluate", str(path)]) == 0
    printed = capsys.readouterr().out
    assert "report:" in printed and "## Mean scores" in printed
    assert "## Win rate over iter-1 (%)" in (out / "results.md").read_text()

    job["models"]["broken"] = str(tmp_path / "no-such-model")
    path.write_text(yaml.safe_dump(job))
    assert main(["evaluate", str(path)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: models.broken: {tmp_path / 'no-such-model'} does not exist\n"


def _with_a_broken_file(weights, tmp_path, what: str) -> EvaluationConfig:
    cfg = _cfg(weights).model_dump(mode="json")
    nope = str(tmp_path / "nope")
    if what == "scorer path":
        cfg["scorers"][3]["path"] = nope  # the aesthetic MLP, the 4th of 5 scorers
    elif what == "tokenizer":
        cfg["scorers"][2]["tokenizer_path"] = nope
    elif what == "clip weights":  # a CLIP folder whose weights do not all load (item 6)
        bad = tmp_path / "clip_without_projection"
        shutil.copytree(weights["clip"], bad)
        from safetensors.torch import load_file, save_file

        state = load_file(str(bad / "model.safetensors"))
        state.pop("text_projection.weight")
        save_file(state, str(bad / "model.safetensors"), metadata={"format": "pt"})
        cfg["scorers"][0]["path"] = str(bad)
    else:  # the FID feature model
        cfg["distribution"]["feature_path"] = nope
    return EvaluationConfig.model_validate(cfg)


@pytest.mark.parametrize("what", ["scorer path", "tokenizer", "clip weights", "FID feature model"])
def test_a_bad_scorer_file_stops_before_any_image_is_generated(
    weights, tiny_pipeline_dir, tmp_path, monkeypatch, what
):
    calls = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise AssertionError("a pipeline was loaded before the scorers were checked")

    monkeypatch.setattr(models_mod, "load_pipeline", refuse)
    monkeypatch.setattr(sampling_mod, "generate_images", refuse)
    out = tmp_path / "out"
    with pytest.raises(CheckpointError) as info:
        evaluate_models({"base": tiny_pipeline_dir}, _with_a_broken_file(weights, tmp_path, what), out)
    assert "\n" not in str(info.value)
    assert calls == []
    assert not list(out.rglob("*.png"))
