"""The benchmark: generate N images per prompt per model, score them all, write the paper's tables.

Every stage is cached in the output directory (see ``store``): images are
written one by one as they are made, scores are appended as each batch is
scored, so an interrupted evaluation resumes at image granularity, and calling
again with one more model (as the self-play driver does after each iteration)
only generates and scores that model.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spin_diffusion.config.evaluation import EvaluationConfig, ModelEntry, ScorerConfig, check_model_name
from spin_diffusion.errors import ConfigError
from spin_diffusion.evaluation import aggregate as agg
from spin_diffusion.evaluation import distribution as dist
from spin_diffusion.evaluation import plots, registry
from spin_diffusion.evaluation.checks import check_evaluation
from spin_diffusion.evaluation.report import render_markdown
from spin_diffusion.evaluation.scorer_base import resolve_device
from spin_diffusion.evaluation.set_metrics import distribution_per_model, toy_set_metrics
from spin_diffusion.evaluation.store import (
    EvalStore,
    ScoreKey,
    file_hash,
    open_image,
    prompt_id,
    weights_stamp,
)
from spin_diffusion.infra.atomic import atomic_file, save_image_atomic, write_json_atomic, write_text_atomic
from spin_diffusion.infra.dirlock import directory_lock
from spin_diffusion.infra.seeds import sample_seed
from spin_diffusion.model import loading
from spin_diffusion.sampling import generate

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger("spin_diffusion.evaluation")
SCORE_CHUNK = 64  # images scored between two appends to scores.jsonl


def _entries(models: Mapping[str, Any]) -> dict[str, ModelEntry]:
    out: dict[str, ModelEntry] = {}
    if not models:
        raise ConfigError("evaluate_models needs at least one model")
    for name, value in models.items():
        check_model_name(name)
        if isinstance(value, ModelEntry):
            out[name] = value
        elif isinstance(value, Mapping):
            out[name] = ModelEntry.model_validate(dict(value))
        else:
            out[name] = ModelEntry(path=str(value))
    return out


def check_scorers(cfg: EvaluationConfig) -> None:
    """Load every configured scorer (and the FID feature model) once, then free it.

    Generation can take hours; a missing, wrong or incomplete scorer file must
    stop the command before it starts, not after. Loading is the only check that
    also catches weights of the wrong layout, so each scorer is built for real
    (on the CPU, so no accelerator memory is held while the images are made).
    """

    for scorer_cfg in cfg.scorers:
        scorer = registry.build_scorer(scorer_cfg, "cpu")
        del scorer
    if cfg.distribution is not None:
        feature = dist.build_feature_extractor(cfg.distribution, "cpu")
        del feature
    gc.collect()


def _images_missing(store: EvalStore, names: list[str], prompts: list[str], cfg: EvaluationConfig) -> bool:
    return any(
        not store.image_path(name, prompt_id(p), j).is_file()
        for name in names
        for p in prompts
        for j in range(cfg.n_images_per_prompt)
    )


def image_seed(cfg: EvaluationConfig, pid: str, j: int) -> int:
    """Image j of a prompt gets the same seed for every model."""

    return sample_seed(cfg.seed, pid, j)


def _model_record(entry: ModelEntry, cfg: EvaluationConfig) -> dict[str, Any]:
    def norm(p: str | None) -> str | None:
        if p is None:
            return None
        path = Path(p).expanduser()
        return str(path.resolve()) if path.exists() else p

    return {
        "path": norm(entry.path),
        "trained": norm(entry.trained),
        "weights": weights_stamp(entry.path, entry.trained),  # retrained in place: other weights
        **cfg.sampling_fingerprint(),
    }


def ensure_images(
    store: EvalStore, name: str, entry: ModelEntry, prompts: list[str], cfg: EvaluationConfig, device: str
) -> int:
    """Generate the images of ``name`` that are not on disk yet; returns how many were made."""
    store.check_model(name, _model_record(entry, cfg))
    todo: dict[tuple[str, int], str] = {}
    for p in prompts:
        pid = prompt_id(p)
        for j in range(cfg.n_images_per_prompt):
            if not store.image_path(name, pid, j).is_file():
                todo.setdefault((pid, j), p)
    if not todo:
        return 0

    log.info("%s: generating %d images", name, len(todo))
    pipe = loading.load_pipeline(entry.path, trained=entry.trained)
    pipe.to(device)
    generate.use_scheduler(pipe, cfg.scheduler)
    items = list(todo.items())
    for start in range(0, len(items), cfg.batch_size):
        chunk = items[start : start + cfg.batch_size]
        images = generate.generate_images(
            pipe,
            [p for _, p in chunk],
            [image_seed(cfg, pid, j) for (pid, j), _ in chunk],
            num_inference_steps=cfg.num_inference_steps,
            guidance_scale=cfg.guidance_scale,
            batch_size=cfg.batch_size,
        )
        for ((pid, j), _), image in zip(chunk, images, strict=True):
            save_image_atomic(image, store.image_path(name, pid, j))
    del pipe
    gc.collect()
    return len(todo)


def score_images(
    store: EvalStore,
    models: list[str],
    prompts: list[str],
    cfg: EvaluationConfig,
    device: str,
    scorer_cfg: ScorerConfig,
    hashes: dict[Path, str],
) -> int:
    """Score every image that has no valid stored score for this scorer; returns how many."""
    fp = scorer_cfg.fingerprint()
    todo: list[tuple[ScoreKey, Path, str, str]] = []
    seen: set[ScoreKey] = set()
    for name in models:
        for p in prompts:
            pid = prompt_id(p)
            for j in range(cfg.n_images_per_prompt):
                key = ScoreKey(name, pid, j, scorer_cfg.metric)
                if key in seen:
                    continue
                seen.add(key)
                path = store.image_path(name, pid, j)
                sha = hashes.setdefault(path, file_hash(path))
                if store.stored_score(key, fp, sha) is None:
                    todo.append((key, path, sha, p))
    if not todo:
        return 0

    log.info("%s: scoring %d images", scorer_cfg.metric, len(todo))
    scorer = registry.build_scorer(scorer_cfg, device)
    for start in range(0, len(todo), SCORE_CHUNK):
        chunk = todo[start : start + SCORE_CHUNK]
        values = scorer.score([open_image(path) for _, path, _, _ in chunk], [p for *_, p in chunk])
        store.add_scores(
            {
                "model": key.model,
                "prompt_id": key.prompt_id,
                "image_index": key.image_index,
                "metric": key.metric,
                "scorer": fp,
                "image_sha": sha,
                "value": float(v),
            }
            for (key, _, sha, _), v in zip(chunk, values.tolist(), strict=True)
        )
    del scorer
    gc.collect()
    return len(todo)


def build_table(
    store: EvalStore, models: list[str], prompts: list[str], cfg: EvaluationConfig, hashes: dict[Path, str]
) -> dict[str, dict[str, np.ndarray]]:
    """``table[metric][model]``: [prompts, images] array from the stored scores."""
    import numpy as np

    table: dict[str, dict[str, np.ndarray]] = {}
    for s in cfg.scorers:
        fp = s.fingerprint()
        table[s.metric] = {}
        for name in models:
            arr = np.empty((len(prompts), cfg.n_images_per_prompt), dtype=np.float64)
            for i, p in enumerate(prompts):
                pid = prompt_id(p)
                for j in range(cfg.n_images_per_prompt):
                    path = store.image_path(name, pid, j)
                    v = store.stored_score(ScoreKey(name, pid, j, s.metric), fp, hashes[path])
                    if v is None:
                        raise RuntimeError(f"missing score {s.metric} for {path}")
                    arr[i, j] = v
            table[s.metric][name] = arr
    return table


def _write_wide_scores(
    path: Path, table: dict[str, dict[str, np.ndarray]], prompts: list[str], cfg: EvaluationConfig
) -> None:
    """One row per image with every metric as a column (parquet), for analysis in pandas."""

    import pyarrow as pa
    import pyarrow.parquet as pq

    metrics = list(table)
    models = list(table[metrics[0]])
    cols: dict[str, list[Any]] = {"model": [], "prompt_id": [], "prompt": [], "image_index": [], "seed": []}
    cols.update({m: [] for m in metrics})
    for name in models:
        for i, p in enumerate(prompts):
            pid = prompt_id(p)
            for j in range(cfg.n_images_per_prompt):
                cols["model"].append(name)
                cols["prompt_id"].append(pid)
                cols["prompt"].append(p)
                cols["image_index"].append(j)
                cols["seed"].append(image_seed(cfg, pid, j))
                for m in metrics:
                    cols[m].append(float(table[m][name][i, j]))
    with atomic_file(path) as tmp:
        pq.write_table(pa.table(cols), tmp)


def aggregate_results(
    table: dict[str, dict[str, np.ndarray]], cfg: EvaluationConfig, baseline: str | None
) -> dict[str, Any]:
    """Mean, median, best-of-N and win rates from a score table (the pure part of the report)."""

    return {
        "mean": agg.summary(table, "mean"),
        "median": agg.summary(table, "median"),
        "best_of_n": {rule: agg.best_of_n(table, rule) for rule in cfg.best_of_n},
        "win_rate": agg.win_rates(table, cfg.win_rate_unit),
        "baseline": baseline,
    }


def evaluate_models(
    models: Mapping[str, Any],
    cfg: EvaluationConfig,
    out_dir: str | Path,
    *,
    baseline: str | None = None,
) -> dict[str, Any]:
    """Evaluate ``models`` (name -> pipeline path, or {path, trained}) and write the report.

    Writes into ``out_dir``: images, ``scores.jsonl`` (+ ``scores.parquet``),
    ``results.json`` (the returned dict), ``results.md``, ``grid.png`` and
    ``plots/*.png``. ``baseline`` (default: the first model) is the model the
    win-rate table and plot compare against; win rates of every ordered pair
    are in the dict either way.
    """

    entries = _entries(models)
    names = list(entries)
    baseline = baseline if baseline is not None else names[0]
    if baseline not in entries:
        raise ConfigError(f"baseline {baseline!r} is not one of the models ({', '.join(names)})")
    _, prompts = check_evaluation(models, entries, cfg)  # the checks of `evaluate --check`
    with directory_lock(Path(out_dir), "evaluation", "choose another output directory"):
        return _evaluate_locked(entries, cfg, EvalStore(Path(out_dir)), prompts, baseline)


def _evaluate_locked(
    entries: dict[str, ModelEntry], cfg: EvaluationConfig, store: EvalStore, prompts: list[str], baseline: str
) -> dict[str, Any]:
    """Images, scores and the report, with the output directory locked against a second evaluation."""

    names = list(entries)
    device = resolve_device(cfg.device)
    if _images_missing(store, names, prompts, cfg):
        check_scorers(cfg)  # before any generation; a rerun with every image present skips it
    write_json_atomic(store.root / "prompts.json", [{"id": prompt_id(p), "prompt": p} for p in prompts])

    for name, entry in entries.items():
        ensure_images(store, name, entry, prompts, cfg, device)
    hashes: dict[Path, str] = {}
    for scorer_cfg in cfg.scorers:
        score_images(store, names, prompts, cfg, device, scorer_cfg, hashes)
    table = build_table(store, names, prompts, cfg, hashes)

    results: dict[str, Any] = {
        "models": {n: e.model_dump() for n, e in entries.items()},
        "metrics": cfg.metrics,
        "metric_kinds": {s.metric: s.kind for s in cfg.scorers},
        "n_prompts": len(prompts),
        "settings": {
            "n_images_per_prompt": cfg.n_images_per_prompt,
            "seed": cfg.seed,
            "num_inference_steps": cfg.num_inference_steps,
            "guidance_scale": cfg.guidance_scale,
            "scheduler": cfg.scheduler,
            "win_rate_unit": cfg.win_rate_unit,
            "best_of_n": list(cfg.best_of_n),
            "prompts": cfg.prompts if isinstance(cfg.prompts, list) else cfg.prompts.model_dump(mode="json"),
        },
    }
    results.update(aggregate_results(table, cfg, baseline))
    if cfg.distribution is not None:
        results["distribution"] = distribution_per_model(store, names, prompts, cfg, device, hashes)
        results["distribution_reference"] = cfg.distribution.reference_dir
        results["distribution_feature"] = f"{cfg.distribution.feature} ({cfg.distribution.feature_path})"

    if any(sc.kind.startswith("toy_") for sc in cfg.scorers):
        results["toy_set_metrics"] = toy_set_metrics(store, names, prompts, cfg)

    artefacts = {"scores": "scores.jsonl", "scores_table": "scores.parquet", "results": "results.json"}
    _write_wide_scores(store.root / "scores.parquet", table, prompts, cfg)
    if cfg.grid_prompts > 0:
        shown = list(dict.fromkeys(prompts))[: cfg.grid_prompts]
        rows = {n: [open_image(store.image_path(n, prompt_id(p), 0)) for p in shown] for n in names}
        grid = plots.labelled_grid(rows, captions=shown)  # the prompt under each image
        save_image_atomic(grid, store.root / "grid.png")
        artefacts["grid"] = "grid.png"

    plots.plot_metrics(results, store.root / "plots" / "metrics.png")
    artefacts["metrics_plot"] = "plots/metrics.png"
    if len(names) > 1:
        plots.plot_win_rates(results, baseline, store.root / "plots" / "win_rate.png")
        artefacts["win_rate_plot"] = "plots/win_rate.png"
    results["artefacts"] = artefacts

    write_json_atomic(store.root / "results.json", results)
    write_text_atomic(store.root / "results.md", render_markdown(results))
    log.info("wrote %s", store.root / "results.md")
    return results
