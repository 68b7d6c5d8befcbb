"""Evaluation prompt sets: plain text, PartiPrompts TSV, HPSv2 benchmark JSON, Pick-a-Pic parquet.

Each reader returns prompts in file order so evaluation is reproducible and
``limit`` always picks the same prompts.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from spin_diffusion.config.data import PromptSetConfig
from spin_diffusion.errors import DataError


def _text(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text") from None
    return [line.strip() for line in lines if line.strip()]


def _partiprompts(path: Path, column: str, categories: list[str] | None) -> list[str]:
    with open(path, encoding="utf-8-sig", newline="") as fh:
        # PartiPrompts is plain TSV: quotes inside prompts are literal characters.
        reader = csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        fields = reader.fieldnames or []
        if column not in fields:
            raise DataError(
                f"{path}: column '{column}' not found; header has: {', '.join(fields) or 'nothing'}"
            )
        if categories is not None and "Category" not in fields:
            raise DataError(f"{path}: categories given but the file has no 'Category' column")
        wanted = None if categories is None else set(categories)
        out = []
        for row in reader:
            if wanted is not None and (row.get("Category") or "").strip() not in wanted:
                continue
            text = (row.get(column) or "").strip()
            if text:
                out.append(text)
    if wanted is not None and not out:
        raise DataError(f"{path}: no prompts in categories {sorted(wanted)}")
    return out


def _hpsv2_file(path: Path) -> list[str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, list) or not all(isinstance(p, str) for p in data):
        raise DataError(f"{path}: expected a JSON list of prompt strings (HPSv2 benchmark format)")
    return [p.strip() for p in data if p.strip()]


def _hpsv2(path: Path, styles: list[str] | None) -> list[str]:
    if path.is_file():
        return _hpsv2_file(path)
    files = {f.stem: f for f in sorted(path.glob("*.json"))}
    if not files:
        raise DataError(f"{path}: no HPSv2 *.json prompt files in the directory")
    chosen = sorted(files) if styles is None else styles
    missing = [s for s in chosen if s not in files]
    if missing:
        raise DataError(
            f"{path}: no style file(s) {', '.join(missing)}.json; available: {', '.join(sorted(files))}"
        )
    return [p for style in chosen for p in _hpsv2_file(files[style])]


def _pickapic(path: str, column: str) -> list[str]:
    import pyarrow.parquet as pq

    from spin_diffusion.data.files import parquet_files

    out: list[str] = []
    for f in parquet_files(path):
        try:
            pf = pq.ParquetFile(f)
        except Exception as exc:  # noqa: BLE001 - arrow raises several types for bad files
            raise DataError(f"{f}: not a readable parquet file ({str(exc).splitlines()[0]})") from None
        if column not in pf.schema_arrow.names:
            raise DataError(
                f"{f}: column '{column}' not found; available: {', '.join(pf.schema_arrow.names)}"
            )
        for batch in pf.iter_batches(columns=[column], batch_size=4096):
            out.extend(p.strip() for p in batch.column(0).to_pylist() if isinstance(p, str) and p.strip())
    return out


def load_prompts(cfg: PromptSetConfig) -> list[str]:
    """The prompt set's prompts in file order (blank entries dropped), deduplicated and limited if asked."""
    path = Path(cfg.path)
    if cfg.kind != "pickapic" and not path.exists():
        raise DataError(f"prompt set path {cfg.path}: no such file or directory")
    if cfg.kind in ("text", "partiprompts") and not path.is_file():
        raise DataError(f"prompt set path {cfg.path}: expected a file")
    if cfg.kind == "text":
        prompts = _text(path)
    elif cfg.kind == "partiprompts":
        prompts = _partiprompts(path, cfg.column or "Prompt", cfg.categories)
    elif cfg.kind == "hpsv2":
        prompts = _hpsv2(path, cfg.styles)
    else:
        prompts = _pickapic(cfg.path, cfg.column or "caption")
    if cfg.deduplicate:
        prompts = list(dict.fromkeys(prompts))
    if cfg.limit is not None:
        prompts = prompts[: cfg.limit]
    if not prompts:
        raise DataError(f"prompt set {cfg.path}: no prompts found")
    return prompts
