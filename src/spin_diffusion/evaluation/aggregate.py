"""Turning per-image scores into the paper's numbers: mean, median, best-of-N, win rate.

Pure numpy on a *score table*: ``table[metric][model]`` is an array of shape
``[prompts, images_per_prompt]`` whose column j holds, for every model, the
image made with the same seed. Rules, stated once:

- mean / median: over all P*N images of a model. The "average" column is the
  plain mean of the metric columns, as in the paper's tables (so it is dominated
  by PickScore's ~21 scale; it is reported because the paper reports it).
- best-of-N ``max``: per metric independently, the best of the N images of each
  prompt, averaged over prompts (an upper bound: different images per metric).
- best-of-N ``zscore``: one image per prompt, the one with the highest mean of
  standardised metrics; its raw metrics are averaged over prompts.
- best-of-N ``mean``: one image per prompt chosen by the raw mean of the
  metrics (the paper's literal wording "highest average score").
- standardising: z = (x - mu) / sigma with mu, sigma over every image of every
  model in the table (sigma 0 -> z 0), so all models share one scale.
- win rate of A over B: unit ``prompt`` compares per-prompt means of the N
  images (the paper's "proportion of prompts"); unit ``image`` compares the two
  images made with the same seed. A win counts 1, a tie 1/2. The "average"
  column compares the mean of standardised metrics. Rates are fractions in [0, 1].
- ties in choosing a best image go to the lowest image index.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

ScoreTable = Mapping[str, Mapping[str, np.ndarray]]
AVERAGE = "average"


def _check(table: ScoreTable) -> tuple[list[str], list[str]]:
    metrics = list(table)
    if not metrics:
        raise ValueError("score table has no metrics")
    models = list(table[metrics[0]])
    shape = None
    for m in metrics:
        if list(table[m]) != models:
            raise ValueError(f"metric {m!r} covers models {list(table[m])}, expected {models}")
        for name in models:
            a = np.asarray(table[m][name])
            if a.ndim != 2 or a.size == 0:
                raise ValueError(f"scores of {name}/{m} must be a non-empty [prompts, images] array")
            if shape is None:
                shape = a.shape
            elif a.shape != shape:
                raise ValueError(f"scores of {name}/{m} have shape {a.shape}, expected {shape}")
    return metrics, models


def _with_average(row: dict[str, float]) -> dict[str, float]:
    row[AVERAGE] = float(np.mean(list(row.values())))
    return row


def summary(table: ScoreTable, stat: str = "mean") -> dict[str, dict[str, float]]:
    """``{model: {metric: mean-or-median over all images, "average": mean of those}}``."""
    metrics, models = _check(table)
    fn = {"mean": np.mean, "median": np.median}[stat]
    return {
        name: _with_average({m: float(fn(np.asarray(table[m][name], dtype=np.float64))) for m in metrics})
        for name in models
    }


def standardized(table: ScoreTable) -> dict[str, dict[str, np.ndarray]]:
    """Each metric as z-scores with the mean and std of all images of all models."""
    metrics, models = _check(table)
    out: dict[str, dict[str, np.ndarray]] = {}
    for m in metrics:
        pooled = np.concatenate([np.asarray(table[m][n], dtype=np.float64).ravel() for n in models])
        mu, sigma = pooled.mean(), pooled.std()
        out[m] = {
            n: (np.asarray(table[m][n], dtype=np.float64) - mu) / sigma
            if sigma > 0
            else np.zeros_like(np.asarray(table[m][n], dtype=np.float64))
            for n in models
        }
    return out


def mean_z(table: ScoreTable) -> dict[str, np.ndarray]:
    """Per image, the mean over metrics of its standardised scores: ``{model: [P, N]}``."""
    z = standardized(table)
    metrics, models = _check(table)
    return {n: np.mean([z[m][n] for m in metrics], axis=0) for n in models}


def _raw_mean(table: ScoreTable) -> dict[str, np.ndarray]:
    metrics, models = _check(table)
    return {n: np.mean([np.asarray(table[m][n], dtype=np.float64) for m in metrics], axis=0) for n in models}


def best_of_n(table: ScoreTable, rule: str) -> dict[str, dict[str, float]]:
    """``{model: {metric: mean over prompts of the chosen image's score, "average": ...}}``."""
    metrics, models = _check(table)
    if rule == "max":
        return {
            n: _with_average(
                {m: float(np.asarray(table[m][n], dtype=np.float64).max(axis=1).mean()) for m in metrics}
            )
            for n in models
        }
    if rule not in ("zscore", "mean"):
        raise ValueError(f"unknown best-of-N rule {rule!r} (max, zscore or mean)")
    choice_score = mean_z(table) if rule == "zscore" else _raw_mean(table)
    out = {}
    for n in models:
        pick = chosen_images(choice_score[n])
        rows = np.arange(len(pick))
        out[n] = _with_average(
            {m: float(np.asarray(table[m][n], dtype=np.float64)[rows, pick].mean()) for m in metrics}
        )
    return out


def chosen_images(score: np.ndarray) -> np.ndarray:
    """Index of the best image per prompt (first one on ties)."""
    return np.argmax(np.asarray(score), axis=1)


def _wins(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(np.where(a > b, 1.0, np.where(a == b, 0.5, 0.0))))


def win_rates(
    table: ScoreTable, unit: str = "prompt", pairs: Sequence[tuple[str, str]] | None = None
) -> dict[str, dict[str, dict[str, float]]]:
    """``{model: {opponent: {metric: rate, "average": rate}}}`` for every ordered pair (or ``pairs``)."""
    metrics, models = _check(table)
    if unit not in ("prompt", "image"):
        raise ValueError(f"unknown win-rate unit {unit!r} (prompt or image)")
    avg = mean_z(table)

    def reduce(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        return x.mean(axis=1) if unit == "prompt" else x

    pairs = list(pairs) if pairs is not None else [(a, b) for a in models for b in models if a != b]
    out: dict[str, dict[str, dict[str, float]]] = {}
    for a, b in pairs:
        row = {m: _wins(reduce(table[m][a]), reduce(table[m][b])) for m in metrics}
        row[AVERAGE] = _wins(reduce(avg[a]), reduce(avg[b]))
        out.setdefault(a, {})[b] = row
    return out
