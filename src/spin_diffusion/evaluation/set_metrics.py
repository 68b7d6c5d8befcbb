"""Numbers over each model's whole image set: FID/KID against reference images, and the toy oracle's set metrics.

Split from the runner, which calls them once every image is generated and scored.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from spin_diffusion.config.evaluation import EvaluationConfig
from spin_diffusion.evaluation import distribution as dist
from spin_diffusion.evaluation.store import EvalStore, open_image, prompt_id
from spin_diffusion.infra.atomic import write_json_atomic
from spin_diffusion.toy import oracle
from spin_diffusion.toy.diagnostics import fidelity_breakdown

log = logging.getLogger("spin_diffusion.evaluation")


def distribution_per_model(
    store: EvalStore, models: list[str], prompts: list[str], cfg: EvaluationConfig, device: str, hashes: dict
) -> dict[str, dict[str, float]]:
    """FID/KID per model, cached by (image hashes, reference, settings)."""
    dcfg = cfg.distribution
    assert dcfg is not None
    ref_dir = Path(dcfg.reference_dir)
    ref_files = sorted(f.name for f in ref_dir.iterdir()) if ref_dir.is_dir() else []
    settings = json.dumps([dcfg.model_dump(mode="json"), ref_files], sort_keys=True)
    cache_path = store.root / "distribution_cache.json"
    cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    keys = {}
    for name in models:
        h = hashlib.blake2b(settings.encode(), digest_size=8)
        for p in prompts:
            for j in range(cfg.n_images_per_prompt):
                h.update(hashes[store.image_path(name, prompt_id(p), j)].encode())
        keys[name] = h.hexdigest()
    todo = [n for n in models if cache.get(n, {}).get("key") != keys[n]]
    if todo:
        log.info("FID/KID for %s", ", ".join(todo))
        feature = dist.build_feature_extractor(dcfg, device)
        size = 299 if isinstance(feature, int) else 224
        reference = dist.images_to_tensor(dist.read_image_dir(ref_dir, dcfg.max_reference_images), size)
        generated = {
            n: dist.images_to_tensor(
                [
                    open_image(store.image_path(n, prompt_id(p), j))
                    for p in prompts
                    for j in range(cfg.n_images_per_prompt)
                ],
                size,
            )
            for n in todo
        }
        values = dist.distribution_metrics(
            generated,
            reference,
            feature,
            kid_subset_size=dcfg.kid_subset_size,
            kid_subsets=dcfg.kid_subsets,
            batch_size=dcfg.batch_size,
            feature_weights=dcfg.feature_path if isinstance(feature, int) else None,
            seed=cfg.seed,
        )
        for n, v in values.items():
            cache[n] = {"key": keys[n], "values": v}
        write_json_atomic(cache_path, cache)
    return {n: cache[n]["values"] for n in models}


def toy_set_metrics(
    store: EvalStore, models: list[str], prompts: list[str], cfg: EvaluationConfig
) -> dict[str, dict[str, float]]:
    """The toy oracle's set-level numbers per model (open-attribute TV distance, diversity) and its
    fidelity checks by attribute (count, colour, ..., objects found per asked, empty images)."""
    out = {}
    for name in models:
        pairs = [(p, j) for p in prompts for j in range(cfg.n_images_per_prompt)]
        images = [open_image(store.image_path(name, prompt_id(p), j)) for p, j in pairs]
        texts = [p for p, _ in pairs]
        values = {**oracle.set_metrics(images, texts), **fidelity_breakdown(images, texts)}
        out[name] = {k: float(v) for k, v in values.items()}
    return out
