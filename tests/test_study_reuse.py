"""A study links finished opponent samples into another run only when they are the same samples."""

from __future__ import annotations

from pathlib import Path

import yaml

from spin_diffusion.config.run import validate_config
from spin_diffusion.studies.reuse import same_first_samples, share_opponent_samples

RAW = {
    "name": "a",
    "model": {"pretrained": "base"},
    "data": {"source": "imagefolder", "path": "d", "resolution": 32},
    "sampling": {"num_inference_steps": 8, "batch_size": 4},
}


def _cfg(tmp_path: Path, **changes) -> object:
    raw = yaml.safe_load(yaml.safe_dump(RAW))
    raw["output_dir"] = str(tmp_path)
    for dotted, value in changes.items():
        node = raw
        *parents, last = dotted.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return validate_config(raw)


def test_only_the_same_base_data_seed_and_sampler_count_as_the_same_samples(tmp_path: Path) -> None:
    a = _cfg(tmp_path)
    assert same_first_samples(a, _cfg(tmp_path, name="b", sampling__batch_size=64))  # batch: same images
    assert not same_first_samples(a, _cfg(tmp_path, seed=1))
    assert not same_first_samples(a, _cfg(tmp_path, sampling__num_inference_steps=20))
    assert not same_first_samples(a, _cfg(tmp_path, model__pretrained="other"))
    assert not same_first_samples(a, _cfg(tmp_path, data__path="e"))


def test_finished_samples_are_linked_and_nothing_else(tmp_path: Path) -> None:
    source = _cfg(tmp_path, name="src")
    samples = source.run_dir / "iter-1" / "samples"
    samples.mkdir(parents=True)
    (samples / "manifest.json").write_text("{}")
    (samples / "shard-00000.safetensors").write_bytes(b"x")
    (source.run_dir / "config.yaml").write_text(yaml.safe_dump(source.model_dump(mode="json")))
    target = _cfg(tmp_path, name="dst")
    assert not share_opponent_samples(source.run_dir, target)  # iteration 1 is not finished yet
    (source.run_dir / "iter-1" / "iteration.json").write_text("{}")
    assert not share_opponent_samples(source.run_dir, _cfg(tmp_path, name="other", seed=5))
    assert not (tmp_path / "other").exists()
    assert share_opponent_samples(source.run_dir, target)
    linked = target.run_dir / "iter-1" / "samples" / "shard-00000.safetensors"
    assert linked.stat().st_ino == (samples / "shard-00000.safetensors").stat().st_ino
    assert not share_opponent_samples(source.run_dir, target)  # the target has samples already


def test_evaluation_images_are_reused_by_weights_not_by_name_or_path(
    tmp_path: Path, tiny_pipeline_dir: Path
) -> None:
    import json
    import shutil

    from PIL import Image

    from spin_diffusion.config.evaluation import EvaluationConfig
    from spin_diffusion.evaluation.runner import ensure_images
    from spin_diffusion.evaluation.store import EvalStore, prompt_id
    from spin_diffusion.studies.image_reuse import link_images_by_weights, weights_key

    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(tiny_pipeline_dir, a)
    shutil.copytree(tiny_pipeline_dir, b)
    assert weights_key(str(a), None) == weights_key(str(b), None) is not None
    assert weights_key("some/hub-id", None) is None
    cfg = EvaluationConfig.model_validate(
        {"prompts": ["a red circle"], "scorers": [{"kind": "toy_fidelity"}], "n_images_per_prompt": 1}
    )
    sampling = cfg.sampling_fingerprint()
    source = tmp_path / "seed-1" / "eval"
    images = source / "models" / "base" / "images"
    images.mkdir(parents=True)
    Image.new("RGB", (16, 16), "red").save(images / f"{prompt_id('a red circle')}_0.png")
    (source / "models" / "base" / "model.json").write_text(
        json.dumps({"path": str(a), "trained": None, **sampling})
    )

    target = tmp_path / "seed-2" / "eval"
    other = tmp_path / "c"
    shutil.copytree(tiny_pipeline_dir, other)
    (other / "unet" / "config.json").write_text(
        (other / "unet" / "config.json").read_text() + " "
    )  # other files
    models = {"base-here": {"path": str(b)}, "different": {"path": str(other)}}
    assert link_images_by_weights(target, models, {**sampling, "seed": 99}, [source]) == []  # other sampler
    assert link_images_by_weights(target, models, sampling, [source, target]) == ["base-here"]
    linked = target / "models" / "base-here" / "images" / f"{prompt_id('a red circle')}_0.png"
    assert linked.stat().st_ino == (images / linked.name).stat().st_ino
    assert link_images_by_weights(target, models, sampling, [source]) == []  # it has images now
    # the evaluation takes them as its own: nothing to generate, its own record written
    from spin_diffusion.config.evaluation import ModelEntry

    store = EvalStore(target)
    made = ensure_images(store, "base-here", ModelEntry(path=str(b)), ["a red circle"], cfg, "cpu")
    assert made == 0 and json.loads((target / "models" / "base-here" / "model.json").read_text())[
        "path"
    ] == str(b)
