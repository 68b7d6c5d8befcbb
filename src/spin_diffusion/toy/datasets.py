"""Toy (prompt, image) data: web pairs for pretraining, curated pairs and prompt sets for fine-tuning/eval.

Splits are by prompt *spec* (a stable hash of what the prompt asks for), so paraphrases of an
evaluation prompt never leak into fine-tuning; and the (colour, shape) pairs in
``HELD_OUT_COMBOS`` never appear in fine-tuning data at all, not even as a sampled attribute.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from spin_diffusion.errors import DataError
from spin_diffusion.toy.render import render_scene
from spin_diffusion.toy.world import (
    HELD_OUT_COMBOS,
    ObjectSpec,
    PromptSpec,
    complete_spec,
    corrupt_spec,
    eval_bucket,
    mentions_held_out,
    sample_spec,
    spec_to_prompt,
)

Distribution = Literal["curated", "web"]
# Different seed streams so finetune, eval and web data drawn with the same user seed are unrelated.
_STREAM = {"web": 0, "curated": 1, "finetune_prompts": 2, "eval_prompts": 3}


def _rng(stream: str, seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([_STREAM[stream], seed, index])


def curated_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of curated pair ``index`` (so other data can be made for exactly those prompts)."""
    return _rng("curated", seed, index)


def is_finetune_spec(spec: PromptSpec) -> bool:
    """Fine-tuning may use a prompt spec only if it is outside the eval bucket and names no held-out combo."""
    return not eval_bucket(spec) and not mentions_held_out(spec)


def _finetune_spec(rng: np.random.Generator) -> PromptSpec:
    while True:
        spec = sample_spec(rng, exclude=HELD_OUT_COMBOS)
        if is_finetune_spec(spec):
            return spec


def web_pair(rng: np.random.Generator, size: int = 32) -> tuple[str, Image.Image]:
    """One pretraining pair: any scene (held-out combos included), a noisy caption, a degraded image."""
    n = 2 if rng.random() < 0.4 else 1
    scene = complete_spec(PromptSpec((ObjectSpec(),) * n), rng)
    caption = spec_to_prompt(corrupt_spec(scene, rng), rng)
    return caption, render_scene(scene, size, "web", rng)


def curated_example(rng: np.random.Generator) -> tuple[str, PromptSpec]:
    """A fine-tuning prompt and the complete scene drawn for it (held-out combos excluded)."""
    spec = _finetune_spec(rng)
    text = spec_to_prompt(spec, rng)
    return text, complete_spec(spec, rng, HELD_OUT_COMBOS)


def curated_pair(rng: np.random.Generator, size: int = 32) -> tuple[str, Image.Image]:
    """One fine-tuning pair: a fine-tuning prompt, an accurate clean image in the house style."""
    text, scene = curated_example(rng)
    return text, render_scene(scene, size, "curated", rng)


def generate_pairs(
    n: int, seed: int, distribution: Distribution = "curated", size: int = 32
) -> list[tuple[str, Image.Image]]:
    """``n`` pairs; pair ``i`` depends only on (distribution, seed, i), so prefixes are stable."""
    if distribution not in ("curated", "web"):
        raise ValueError(f"distribution must be 'curated' or 'web', got {distribution!r}")
    make = web_pair if distribution == "web" else curated_pair
    return [make(_rng(distribution, seed, i), size) for i in range(n)]


def write_imagefolder(
    out_dir: str | os.PathLike[str],
    n: int,
    seed: int,
    distribution: Distribution = "curated",
    size: int = 32,
    overwrite: bool = False,
) -> Path:
    """Write ``n`` pairs as PNGs + ``metadata.jsonl`` (``file_name``, ``text``), atomically.

    Everything goes to a temporary sibling directory that is renamed into place at the end,
    so an interrupted run never leaves a folder that looks complete.
    """
    out = Path(out_dir)
    if n < 1:
        raise DataError(f"{out}: number of pairs must be >= 1, got {n}")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise DataError(f"{out}: directory exists and is not empty (pass overwrite=True to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        with open(tmp / "metadata.jsonl", "w", encoding="utf-8") as meta:
            for i, (text, image) in enumerate(generate_pairs(n, seed, distribution, size)):
                name = f"{i:06d}.png"
                image.save(tmp / name)
                meta.write(json.dumps({"file_name": name, "text": text}) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def finetune_prompts(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct fine-tuning prompts (never an eval spec, never a held-out combo)."""
    return _distinct_prompts(n, "finetune_prompts", seed, _finetune_spec)


def _eval_spec(rng: np.random.Generator) -> PromptSpec:
    """An eval spec: a quarter name a held-out (colour, shape) combo, the rest come from the eval bucket."""
    if rng.random() < 0.25:
        colour, shape = sorted(HELD_OUT_COMBOS)[int(rng.integers(len(HELD_OUT_COMBOS)))]
        spec = sample_spec(rng)
        objs = list(spec.objects)
        k = int(rng.integers(len(objs)))
        objs[k] = ObjectSpec(colour, shape, objs[k].size, objs[k].position)
        held = PromptSpec(tuple(objs))
        try:
            complete_spec(held, rng, max_tries=200)
            return held
        except DataError:
            pass  # e.g. the other object already had that colour: fall through
    while True:
        spec = sample_spec(rng)
        if eval_bucket(spec):
            return spec


def eval_prompts(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct evaluation prompts, disjoint (by spec) from every fine-tuning prompt."""
    return _distinct_prompts(n, "eval_prompts", seed, _eval_spec)


def _distinct_prompts(n: int, stream: str, seed: int, make) -> list[str]:
    rng = _rng(stream, seed, 0)
    seen: set[str] = set()
    out: list[str] = []
    for _ in range(50 * n + 1000):
        if len(out) == n:
            return out
        text = spec_to_prompt(make(rng), rng)
        if text not in seen:
            seen.add(text)
            out.append(text)
    raise DataError(f"could not draw {n} distinct {stream.replace('_', ' ')} (the grammar is too small)")
