"""``spin-diffusion data ...``: inspect a dataset before spending compute on it.

Module-level imports stay light (typer, pathlib); readers load on demand.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from spin_diffusion.errors import ConfigError, DataError, UserError

app = typer.Typer(help="Inspect and validate training data.", no_args_is_help=True, add_completion=False)


def _pair_methods() -> set[str]:
    from spin_diffusion.config.run import PREFERENCE_METHODS

    return {*PREFERENCE_METHODS, "diffusion_dpo", "diffusion-dpo"}


@app.callback()
def _group() -> None:
    """Inspect and validate training data."""  # a callback keeps `check` a sub-command


def _validation_message(exc: Any, prefix: str) -> str:
    """First pydantic error as one line: ``data.resolution: must be ...``."""
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err.get("loc", ()))
    msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
    more = f" (and {len(exc.errors()) - 1} more problems)" if len(exc.errors()) > 1 else ""
    return f"{prefix}{'.' + loc if loc else ''}: {msg}{more}"


def _read_yaml(path: Path) -> tuple[dict, bool]:
    """The ``data:`` mapping of a run config and whether the run trains on preference pairs."""
    from spin_diffusion.config.base import read_yaml_file

    doc = read_yaml_file(path)  # duplicate keys and non-UTF-8 text are one-line ConfigErrors
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a mapping with a 'data:' block")
    if "data" in doc:
        data = doc["data"]
    elif "source" in doc:
        data = doc  # a bare data config
    else:
        raise ConfigError(f"{path}: no 'data:' block")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: 'data' must be a mapping")
    method = str(doc.get("method", "")).lower()
    training = doc.get("training") if isinstance(doc.get("training"), dict) else {}
    kto = training.get("kto") if isinstance(training.get("kto"), dict) else {}
    # KTO on single labelled images reads an imagefolder's single images (RunConfig.pair_data)
    singles = method == "kto" and kto.get("unpaired") is True and data.get("source") != "pickapic"
    return dict(data), method in _pair_methods() and not singles


def infer_source(path: str) -> str:
    """Guess the source kind of a dataset path (used when --source is not given)."""
    from spin_diffusion.data.files import parquet_files
    from spin_diffusion.data.tables import parquet_columns

    p = Path(path)
    if p.is_dir():
        if any((d / m).is_file() for d in (p, p / "train") for m in ("metadata.jsonl", "metadata.csv")):
            return "imagefolder"
        if (p / "dataset_dict.json").is_file() or (p / "state.json").is_file():
            return "hf_disk"
        if not any(p.rglob("*.parquet")):
            return "hf"
    elif p.is_file() and p.suffix != ".parquet":
        return "hf"
    cols = parquet_columns(parquet_files(path)[0])
    return "pickapic" if {"jpg_0", "jpg_1", "label_0", "label_1"} <= set(cols) else "parquet"


def guess_note(path: str, source: str) -> str:
    """Why the guessed source was chosen, when a Pick-a-Pic file lacks a label column and so was not one."""
    from spin_diffusion.data.files import parquet_files
    from spin_diffusion.data.tables import parquet_columns

    if source != "parquet":
        return f"the source was guessed as {source}; pass --source to choose another"
    cols = set(parquet_columns(parquet_files(path)[0]))
    missing = sorted({"label_0", "label_1"} - cols)
    if {"jpg_0", "jpg_1"} <= cols and missing:
        return (
            f"it looks like Pick-a-Pic (jpg_0, jpg_1) but has no {' or '.join(missing)} column, so it was "
            "read as plain parquet; add the label column(s), or pass --source and --image-column"
        )
    return "the source was guessed as parquet; pass --source to choose another"


@app.command("check")
def check(
    target: str = typer.Argument(
        ..., help="A YAML run config with a 'data:' block, or a dataset dir/file/glob."
    ),
    source: str | None = typer.Option(
        None, help="imagefolder, parquet, pickapic, hf_disk or hf (default: guess)."
    ),
    caption_column: str | None = typer.Option(
        None, help="Caption column (default text; caption for pickapic)."
    ),
    image_column: str | None = typer.Option(None, help="Image column (default image)."),
    resolution: int | None = typer.Option(None, help="Training resolution (default 512 for a bare path)."),
    split: str | None = typer.Option(None, help="Split for hf/hf_disk sources (default train)."),
    min_image_size: int | None = typer.Option(
        None, help="Smallest usable shorter side (default resolution/4)."
    ),
    pairs: bool = typer.Option(
        False, "--pairs", help="Check preference pairs (DPO) instead of single images."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Read the whole source and report usable examples, dropped ties and problems (exit 1 if any)."""
    try:
        _check(
            target, source, caption_column, image_column, resolution, split, min_image_size, pairs, as_json
        )
    except UserError as exc:
        typer.echo(f"error: {exc}", err=True)
        # SystemExit (not typer.Exit) so the code survives click's standalone_mode=False.
        raise SystemExit(exc.exit_code) from None


def _check(
    target: str,
    source: str | None,
    caption_column: str | None,
    image_column: str | None,
    resolution: int | None,
    split: str | None,
    min_image_size: int | None,
    pairs: bool,
    as_json: bool,
) -> None:
    from pydantic import ValidationError

    from spin_diffusion.config.data import DataConfig
    from spin_diffusion.data.sources import scan_source

    is_yaml = Path(target).suffix.lower() in (".yaml", ".yml") and Path(target).is_file()
    guessed = False
    if is_yaml:
        data, dpo = _read_yaml(Path(target))
        pairs = pairs or dpo
        prefix = f"{target}: data"
    else:
        data = {"path": target, "resolution": 512}
        if source is None:
            if not Path(target).exists() and not any(ch in target for ch in "*?["):
                raise ConfigError(f"{target}: no such file, directory or YAML config")
            source = infer_source(target)
            guessed = True
        prefix = "data"
    overrides = {
        "source": source,
        "caption_column": caption_column,
        "image_column": image_column,
        "resolution": resolution,
        "split": split,
        "min_image_size": min_image_size,
    }
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        cfg = DataConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_validation_message(exc, prefix)) from None
    try:
        stats = scan_source(cfg, pairs=pairs)
    except DataError as exc:
        if guessed:
            raise DataError(f"{exc} ({guess_note(target, source)})") from None
        raise
    ok = stats.bad == 0 and stats.usable > 0
    if as_json:
        typer.echo(
            json.dumps({"path": cfg.path, "source": cfg.source, "pairs": pairs, "ok": ok, **stats.to_dict()})
        )
    else:
        typer.echo(
            f"data check: {cfg.path} (source {cfg.source}, {'preference pairs' if pairs else 'images'})"
        )
        for line in stats.summary_lines():
            typer.echo(line)
        if ok:
            typer.echo(f"OK: {stats.usable} usable examples")
        elif stats.usable == 0:
            typer.echo("FAILED: no usable examples")
        else:
            typer.echo(
                f"FAILED: {stats.bad} unusable examples (fix them or set data.skip_bad_examples: true)"
            )
    if not ok:
        raise SystemExit(1)
