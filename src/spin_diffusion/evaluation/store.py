"""On-disk layout of an evaluation directory, so nothing is generated or scored twice.

    OUT/
      prompts.json                      the prompts of the last run (ids, texts)
      models/NAME/model.json            what made the images: path, LoRA, sampling settings
      models/NAME/images/ID_J.png       image J of the prompt with id ID (written atomically)
      scores.jsonl                      one row per (model, prompt id, image, metric)

A prompt's id is a hash of its text, and the seed of image J is derived from
(seed, id, J), so every model gets the same seeds and a changed prompt list
reuses the images of the prompts it keeps. A stored score is reused only if the
scorer fingerprint and the image's content hash both still match.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spin_diffusion.errors import CheckpointError
from spin_diffusion.infra.atomic import write_json_atomic

if TYPE_CHECKING:
    from PIL import Image


def prompt_id(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=8).hexdigest()


def open_image(path: Path) -> Image.Image:
    """A stored image as RGB, read fully so the file is closed at once."""
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB")


def file_hash(path: Path) -> str:
    return hashlib.blake2b(path.read_bytes(), digest_size=8).hexdigest()


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
LATER_KEYS = ("weights",)  # record keys older model.json files lack: added, not a difference


def weights_stamp(*paths: str | None) -> str | None:
    """A cheap stamp of the weight files under local ``paths`` (relative name, size, mtime).

    A model retrained in place writes new files, so its stamp changes and its
    cached images are not taken for the new model's. Hub ids (not local) give None.
    """
    h = hashlib.blake2b(digest_size=8)
    found = False
    for p in paths:
        root = Path(p).expanduser() if p else None
        if root is None or not root.exists():
            continue
        files = (
            [root] if root.is_file() else sorted(f for f in root.rglob("*") if f.suffix in WEIGHT_SUFFIXES)
        )
        for f in files:
            st = f.stat()
            h.update(
                f"{f.relative_to(root) if f != root else f.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode()
            )
            found = True
    return h.hexdigest() if found else None


@dataclass(frozen=True)
class ScoreKey:
    model: str
    prompt_id: str
    image_index: int
    metric: str


class EvalStore:
    """Paths and caches of one evaluation output directory."""

    def __init__(self, out_dir: Path):
        self.root = Path(out_dir)
        self.root.mkdir(parents=True, exist_ok=True)
        self.scores_path = self.root / "scores.jsonl"
        self._scores: dict[ScoreKey, dict[str, Any]] | None = None

    # ---------------------------------------------------------------- images
    def model_dir(self, model: str) -> Path:
        return self.root / "models" / model

    def image_path(self, model: str, pid: str, j: int) -> Path:
        return self.model_dir(model) / "images" / f"{pid}_{j}.png"

    def check_model(self, model: str, record: dict[str, Any]) -> None:
        """Record what makes ``model``'s images; refuse to mix images made differently."""
        path = self.model_dir(model) / "model.json"
        if path.is_file():
            try:
                saved = json.loads(path.read_text())
            except json.JSONDecodeError as exc:
                raise CheckpointError(f"{path} is not valid JSON; delete it to regenerate") from exc
            changed = [
                k
                for k in sorted(set(saved) | set(record))
                if saved.get(k) != record.get(k) and not (k in LATER_KEYS and k not in saved)
            ]
            if changed:
                what = ", ".join(f"{k} {saved.get(k)!r} -> {record.get(k)!r}" for k in changed)
                raise CheckpointError(
                    f"{self.model_dir(model)} holds images made differently ({what}); "
                    "delete that folder or use another output_dir"
                )
            if saved == record:
                return
        write_json_atomic(path, record)

    # ---------------------------------------------------------------- scores
    def _load_scores(self) -> dict[ScoreKey, dict[str, Any]]:
        if self._scores is None:
            self._scores = {}
            if self.scores_path.is_file():
                for line in self.scores_path.read_text().splitlines():
                    try:
                        row = json.loads(line)
                        key = ScoreKey(row["model"], row["prompt_id"], int(row["image_index"]), row["metric"])
                    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                        continue  # a line torn by an interrupted run: that score is recomputed
                    self._scores[key] = row
        return self._scores

    def stored_score(self, key: ScoreKey, scorer: str, image_sha: str) -> float | None:
        row = self._load_scores().get(key)
        if row is None or row.get("scorer") != scorer or row.get("image_sha") != image_sha:
            return None
        return float(row["value"])

    def add_scores(self, rows: Iterable[dict[str, Any]]) -> None:
        """Append rows (flushed and fsynced) so an interrupted run keeps what it scored."""
        rows = list(rows)
        if not rows:
            return
        cache = self._load_scores()
        needs_newline = False
        if self.scores_path.is_file() and self.scores_path.stat().st_size > 0:
            with self.scores_path.open("rb") as f:
                f.seek(-1, os.SEEK_END)
                needs_newline = f.read(1) != b"\n"
        with self.scores_path.open("a") as f:
            if needs_newline:
                f.write("\n")
            for row in rows:
                f.write(json.dumps(row) + "\n")
                cache[ScoreKey(row["model"], row["prompt_id"], int(row["image_index"]), row["metric"])] = row
            f.flush()
            os.fsync(f.fileno())
