"""Evaluation images reused by model weights, not by name or path.

An evaluation directory caches images per model name and refuses a name whose path changed. In
a study the same weights are often judged under several names and paths: the shipped base in
every seed's evaluation, and (with a constant learning rate) the Figure 5 study's iteration-1
snapshot at step 120 is the reproduction's SPIN iteration 1. Images depend only on the weights,
the prompt, the image seed and the sampler settings, so before an evaluation this links the
images of any model with the same weight files and the same sampler settings from the study's
other evaluation directories; the evaluation then generates only what is still missing, and
records its own ``model.json`` as usual.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from spin_diffusion.studies.reuse import link_or_copy

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".json", ".txt", ".model")


def weights_key(path: str | None, trained: str | None) -> str | None:
    """A hash of every weight and config file of a pipeline directory and its fine-tuned weights.

    None when ``path`` is not a local directory (a hub id): such a model is never matched.
    """
    if path is None or not Path(path).is_dir():
        return None
    h = hashlib.blake2b(digest_size=16)
    for root in (path, trained):
        h.update(b"\0root")
        if root is None:
            continue
        p = Path(root)
        if not p.exists():
            return None
        files = (
            [p]
            if p.is_file()
            else sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in WEIGHT_SUFFIXES)
        )
        for f in files:
            h.update((f.name if p.is_file() else f.relative_to(p).as_posix()).encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def _index(sources: Iterable[Path], sampling: Mapping[str, Any]) -> dict[str, Path]:
    """weights key -> an images directory made with ``sampling``, over the source evaluation dirs."""
    index: dict[str, Path] = {}
    for src in sources:
        for record_path in sorted(Path(src).glob("models/*/model.json")):
            record = json.loads(record_path.read_text())
            settings = {k: v for k, v in record.items() if k not in ("path", "trained")}
            images = record_path.parent / "images"
            if settings != dict(sampling) or not images.is_dir():
                continue
            key = weights_key(record.get("path"), record.get("trained"))
            if key is not None:
                index.setdefault(key, images)
    return index


def link_images_by_weights(
    target: Path,
    models: Mapping[str, Mapping[str, Any]],
    sampling: Mapping[str, Any],
    sources: Iterable[Path],
) -> list[str]:
    """Link into ``target`` the images of every model in ``models`` (name -> {path, trained}) that has
    none there yet and whose weights were judged with the same ``sampling`` settings in a source dir.

    Returns the names linked. Files are hard links (copies where links fail); the evaluation writes
    images atomically by rename, so it never changes a source's file.
    """
    target = Path(target)
    wanted = {n: e for n, e in models.items() if not (target / "models" / n / "images").exists()}
    if not wanted:
        return []
    index = _index([s for s in sources if Path(s).resolve() != target.resolve()], sampling)
    linked = []
    for name, entry in wanted.items():
        src = index.get(weights_key(entry.get("path"), entry.get("trained")) or "")
        if src is None:
            continue
        dst = target / "models" / name / "images"
        tmp = dst.with_name(".images.linking")
        shutil.rmtree(tmp, ignore_errors=True)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(src, tmp, copy_function=link_or_copy)
        tmp.rename(dst)
        linked.append(name)
    return linked


def study_eval_dirs(out: Path) -> list[Path]:
    """Every evaluation directory of a study directory (each seed's reproduction and Figure 5 ones)."""
    out = Path(out)
    return sorted([*out.glob("seed-*/eval"), *out.glob("seed-*/figure5-eval")])
