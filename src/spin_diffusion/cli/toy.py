"""``spin-diffusion toy ...``: data, prompts, judging, pretraining and checking of the toy base model.

Heavy imports (torch, diffusers) happen inside the commands, so ``--help`` stays instant.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

import typer

from spin_diffusion.errors import UserError

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


@app.command()
def dataset(
    out_dir: Annotated[Path, typer.Argument(help="imagefolder to create (PNGs + metadata.jsonl)")],
    n: Annotated[int, typer.Option(min=1, help="number of (prompt, image) pairs")] = 1000,
    seed: Annotated[int, typer.Option(help="data seed")] = 0,
    distribution: Annotated[str, typer.Option(help="curated (fine-tuning) or web (pretraining)")] = "curated",
    size: Annotated[int, typer.Option(min=16, help="image side in pixels")] = 32,
    overwrite: Annotated[bool, typer.Option(help="replace an existing non-empty directory")] = False,
) -> None:
    """Write toy (prompt, image) pairs in the imagefolder layout diffusers training scripts read."""
    from spin_diffusion.toy.datasets import write_imagefolder

    if distribution not in ("curated", "web"):
        raise UserError(f"--distribution must be 'curated' or 'web', got {distribution!r}")
    out = write_imagefolder(out_dir, n, seed, distribution, size, overwrite)  # type: ignore[arg-type]
    typer.echo(f"wrote {n} {distribution} pairs to {out}")


@app.command()
def preferences(
    out_file: Annotated[Path, typer.Argument(help="parquet file to write (Pick-a-Pic v2 columns)")],
    n: Annotated[int, typer.Option(min=1, help="number of rows (about 10% are ties)")] = 1000,
    seed: Annotated[int, typer.Option(help="data seed")] = 0,
    size: Annotated[int, typer.Option(min=16, help="image side in pixels")] = 32,
    matched: Annotated[
        bool,
        typer.Option(help="the prompts and winner images of `toy dataset --n N --seed S` (no ties)"),
    ] = False,
) -> None:
    """Write toy preference pairs (curated winner vs web-rendered loser) for the DPO baseline."""
    from spin_diffusion.toy.preferences import write_preference_parquet

    out = write_preference_parquet(out_file, n, seed, size, matched=matched)
    typer.echo(f"wrote {n} preference rows to {out}")


@app.command()
def prompts(
    split: Annotated[str, typer.Argument(help="finetune or eval")],
    n: Annotated[int, typer.Option(min=1, help="number of prompts")] = 100,
    seed: Annotated[int, typer.Option(help="prompt seed")] = 0,
) -> None:
    """Print fine-tuning or evaluation prompts, one per line (the two sets never share a spec)."""
    from spin_diffusion.toy.datasets import eval_prompts, finetune_prompts

    if split not in ("finetune", "eval"):
        raise UserError(f"split must be 'finetune' or 'eval', got {split!r}")
    for p in (finetune_prompts if split == "finetune" else eval_prompts)(n, seed):
        typer.echo(p)


@app.command()
def judge(
    image: Annotated[Path, typer.Argument(help="an image file")],
    prompt: Annotated[str, typer.Argument(help="the toy prompt it was generated for")],
) -> None:
    """Print the oracle's per-attribute verdict for one image as JSON."""
    from PIL import Image, UnidentifiedImageError

    from spin_diffusion.toy.oracle import judge as judge_image

    try:
        with Image.open(image) as im:
            verdict = judge_image(im.convert("RGB"), prompt)
    except (FileNotFoundError, UnidentifiedImageError, OSError) as exc:
        raise UserError(f"{image}: cannot read image ({exc.__class__.__name__})") from exc
    typer.echo(json.dumps(verdict, indent=2))


@app.command()
def pretrain(
    out_dir: Annotated[Path, typer.Argument(help="where the pipeline is saved (diffusers layout)")],
    family: Annotated[
        Literal["sd", "sd3"],
        typer.Option(
            help="sd: the UNet base (toy-base); sd3: SD3 without T5, rectified flow (toy-flow-base)"
        ),
    ] = "sd",
    seed: Annotated[int, typer.Option(help="seed of data, init and training")] = 0,
    n_images: Annotated[int, typer.Option(min=16, help="web pairs in the fixed pretraining set")] = 8000,
    vae_steps: Annotated[int | None, typer.Option(min=1, help="default: the family's")] = None,
    decoder_steps: Annotated[int | None, typer.Option(min=0, help="default: the family's")] = None,
    unet_steps: Annotated[
        int | None, typer.Option(min=1, help="denoiser steps (default: the family's)")
    ] = None,
    unet_batch_size: Annotated[int | None, typer.Option(min=1, help="default: the family's")] = None,
    threads: Annotated[int, typer.Option(min=1, help="torch threads")] = 2,
    snapshot_every: Annotated[int, typer.Option(min=0, help="also save <out_dir>.step-N every N steps")] = 0,
    vae_from: Annotated[
        Path | None, typer.Option(help="reuse this pipeline's VAE (skips the VAE stages)")
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            help="JSON/YAML PretrainConfig ('family: sd3' for the flow base); overrides the options"
        ),
    ] = None,
) -> None:
    """Pretrain a toy base on web data: VAE, then the denoiser + text encoders, then the decoder (JSON logs)."""
    if config is not None:
        cfg = _load_pretrain_config(config)
    else:
        given = {"vae_steps": vae_steps, "decoder_steps": decoder_steps, "unet_steps": unet_steps,
                 "unet_batch_size": unet_batch_size}  # fmt: skip
        cfg = _pretrain_config_class(family)(
            seed=seed, n_images=n_images, threads=threads, snapshot_every=snapshot_every,
            vae_from=None if vae_from is None else str(vae_from),
            **{k: v for k, v in given.items() if v is not None},
        )  # fmt: skip
    _run_pretrain(cfg, out_dir)


def _pretrain_config_class(family: str):
    from spin_diffusion.toy.pretrain import PretrainConfig
    from spin_diffusion.toy.pretrain_flow import FlowPretrainConfig

    return FlowPretrainConfig if family == "sd3" else PretrainConfig


def _run_pretrain(cfg, out_dir: Path) -> None:
    from spin_diffusion.toy.pretrain import pretrain as run_sd
    from spin_diffusion.toy.pretrain_flow import FlowPretrainConfig, pretrain_flow

    (pretrain_flow if isinstance(cfg, FlowPretrainConfig) else run_sd)(cfg, out_dir)


def _load_pretrain_config(path: Path):
    from pydantic import ValidationError

    from spin_diffusion.config.base import read_yaml_file

    data = read_yaml_file(path) or {}  # JSON is YAML; duplicate keys are refused
    family = data.get("family", "sd") if isinstance(data, dict) else "sd"
    if family not in ("sd", "sd3"):
        raise UserError(f"{path}: field 'family': must be 'sd' or 'sd3', got {family!r}")
    try:
        return _pretrain_config_class(family).model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(x) for x in err["loc"])
        raise UserError(f"{path}: field {field!r}: {err['msg']}") from exc


@app.command()
def evaluate(
    model: Annotated[
        str, typer.Argument(help="pipeline directory ('base' = the shipped toy model)")
    ] = "base",
    n_prompts: Annotated[int, typer.Option(min=1)] = 64,
    images_per_prompt: Annotated[int, typer.Option(min=1)] = 2,
    seed: Annotated[int, typer.Option()] = 0,
    guidance: Annotated[float, typer.Option(help="classifier-free guidance scale")] = 5.0,
    steps: Annotated[int, typer.Option(min=1, help="sampler steps")] = 20,
    reference: Annotated[
        Literal["none", "curated", "web"], typer.Option(help="score rendered images instead of the model")
    ] = "none",
) -> None:
    """Oracle numbers (fidelity, style, open-attribute TV, diversity) on toy eval prompts, as JSON."""
    from spin_diffusion.toy import base_model_path
    from spin_diffusion.toy.quick_eval import evaluate_model, evaluate_renders

    if reference != "none":
        result = evaluate_renders(n_prompts, images_per_prompt, seed, reference)
    else:
        path = base_model_path() if model == "base" else model
        result = evaluate_model(path, n_prompts, images_per_prompt, seed, guidance, steps)
    typer.echo(json.dumps({k: round(v, 4) for k, v in result.items()}, indent=2))


@app.command("caption-sensitivity")
def caption_sensitivity_cmd(
    model: Annotated[
        str, typer.Argument(help="pipeline directory, either family ('base' = the shipped toy model)")
    ] = "base",
    scenes: Annotated[int, typer.Option(min=1, help="one-object renders measured")] = 128,
    repeats: Annotated[int, typer.Option(min=1, help="noise draws per noise point")] = 2,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Which prompt words the model listens to: its denoising error with one attribute swapped.

    Prints a table of error(swapped caption) / error(true caption) by noise level; 1.000 means
    the model ignores that word, so fine-tuning on exact captions cannot show that attribute.
    """
    from spin_diffusion.model.loading import load_pipeline
    from spin_diffusion.toy import base_model_path
    from spin_diffusion.toy.caption_sensitivity import caption_sensitivity, sensitivity_markdown

    pipe = load_pipeline(base_model_path() if model == "base" else model)
    typer.echo(sensitivity_markdown(caption_sensitivity(pipe, n_scenes=scenes, repeats=repeats, seed=seed)))


@app.command("refine-decoder")
def refine_decoder_cmd(
    model_dir: Annotated[
        Path, typer.Argument(help="a pipeline written by `toy pretrain` (updated in place)")
    ],
    steps: Annotated[int, typer.Option(min=1, help="decoder steps")] = 1500,
    threads: Annotated[int, typer.Option(min=1)] = 2,
) -> None:
    """Run pretraining's stage 3 alone: refine the VAE decoder with the encoder (and UNet) untouched."""
    import torch
    from diffusers import DiffusionPipeline

    from spin_diffusion.toy.pretrain import refine_decoder
    from spin_diffusion.toy.pretrain_io import save_pipeline

    summary_path = model_dir / "pretrain_summary.json"
    if not summary_path.is_file():
        raise UserError(
            f"{model_dir}: no pretrain_summary.json (not written by `spin-diffusion toy pretrain`)"
        )
    summary = json.loads(summary_path.read_text())
    config_class = _pretrain_config_class(summary["config"].get("family", "sd"))
    known = set(config_class.model_fields)
    cfg = config_class(**{k: v for k, v in summary["config"].items() if k in known}).model_copy(
        update={"decoder_steps": steps, "threads": threads}
    )
    torch.set_num_threads(threads)
    pipe = DiffusionPipeline.from_pretrained(model_dir)  # either toy family (SD or SD3)
    refine_decoder(pipe.vae, cfg, lambda rec: typer.echo(json.dumps(rec)))
    save_pipeline(pipe, model_dir, {**summary, "decoder_refined": {"steps": steps}})


_OUT = typer.Option(help="study directory (resumable; re-run to continue)")
_SEEDS = typer.Option(help="comma-separated seeds (default: the config's, 1,2,3)")
_PAIRS = typer.Option(min=16, help="curated pairs per seed (default 2000)")
_CONFIG = typer.Option(help="YAML/JSON ReproduceConfig")
_SET = typer.Option("--set", "-s", help="override a setting, e.g. --set spin.latents=raw")


@app.command()
def reproduce(
    out: Annotated[Path, _OUT] = Path("runs/reproduce"),
    seeds: Annotated[str | None, _SEEDS] = None,
    pairs: Annotated[int | None, _PAIRS] = None,
    config: Annotated[Path | None, _CONFIG] = None,
    set_: Annotated[list[str] | None, _SET] = None,
) -> None:
    """Table 1 and Figure 5 on the toy world: base, SFT curve, DPO, SPIN iterations, several seeds."""
    _run_study(out, seeds, pairs, config, set_, compare=False)


@app.command()
def compare(
    out: Annotated[Path, _OUT] = Path("runs/reproduce"),
    seeds: Annotated[str | None, _SEEDS] = None,
    pairs: Annotated[int | None, _PAIRS] = None,
    config: Annotated[Path | None, _CONFIG] = None,
    set_: Annotated[list[str] | None, _SET] = None,
) -> None:
    """Every method on the same pairs and seeds: SFT, DPO, SPIN and the Diffusion-DPO family, one table.

    In the reproduction's directory (the default) the runs it trained are reused; writes compare.md,
    compare.json and plots/compare.png.
    """
    _run_study(out, seeds, pairs, config, set_, compare=True)


def _run_study(
    out: Path,
    seeds: str | None,
    pairs: int | None,
    config: Path | None,
    set_: list[str] | None,
    compare: bool,
) -> None:
    import shlex
    import sys

    from pydantic import ValidationError

    from spin_diffusion.config.overrides import apply_overrides
    from spin_diffusion.studies.reproduce import reproduce
    from spin_diffusion.studies.runs import methods_for_base
    from spin_diffusion.studies.settings import ALL_METHODS, ReproduceConfig
    from spin_diffusion.studies.tables import COMPARISON_TITLE

    raw = _read_mapping(config) if config is not None else {}
    if seeds is not None:
        raw["seeds"] = _parse_seeds(seeds)
    if pairs is not None:
        raw["pairs"] = pairs
    raw = apply_overrides(raw, set_ or [])
    if compare:  # every method the base's family defines
        raw.setdefault("methods", methods_for_base(str(raw.get("base", "toy-base")), ALL_METHODS))
    try:
        cfg = ReproduceConfig.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(x) for x in err["loc"]) or "(top level)"
        msg = str(err["msg"]).removeprefix("Value error, ")
        raise UserError(f"reproduce setting {where!r}: {msg}") from exc
    command = "spin-diffusion " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    kind = {"report": "compare", "title": COMPARISON_TITLE} if compare else {}
    result = reproduce(cfg, out, command, **kind)
    typer.echo(result["report"])
    report = "compare" if compare else "results"
    typer.echo(f"wrote {out / (report + '.md')} and {result['plot']}")


def _read_mapping(path: Path) -> dict:
    from spin_diffusion.config.base import read_yaml

    return read_yaml(path)  # one-line errors; duplicate keys and non-UTF-8 text are refused


def _parse_seeds(seeds: str) -> list[int]:
    """``--seeds 1,2,3`` as a list; one clear line for anything else."""
    try:
        return [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError as exc:
        raise UserError(f"--seeds must be comma-separated integers, got {seeds!r}") from exc


@app.command()
def figure5(
    out: Annotated[Path, _OUT] = Path("runs/figure5"),
    seeds: Annotated[str | None, _SEEDS] = None,
    config: Annotated[Path | None, typer.Option(help="YAML/JSON Figure5Config")] = None,
    set_: Annotated[list[str] | None, _SET] = None,
) -> None:
    """Figure 5 as the paper ran it: iteration 1 continued vs iteration 2, both from iteration 1's plateau.

    Writes figure5.md, figure5.json and plots/figure5.png into --out (docs/results.md says what it runs).
    """
    import shlex
    import sys

    from pydantic import ValidationError

    from spin_diffusion.config.run import apply_overrides
    from spin_diffusion.studies.figure5 import Figure5Config
    from spin_diffusion.studies.figure5 import figure5 as run_figure5

    raw = _read_mapping(config) if config is not None else {}
    if seeds is not None:
        raw["seeds"] = _parse_seeds(seeds)
    raw = apply_overrides(raw, set_ or [])
    try:
        cfg = Figure5Config.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(x) for x in err["loc"]) or "(top level)"
        raise UserError(
            f"figure5 setting {where!r}: {str(err['msg']).removeprefix('Value error, ')}"
        ) from exc
    command = "spin-diffusion " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    result = run_figure5(cfg, out, command)
    typer.echo(result["report"])
    typer.echo(f"wrote {out / 'figure5.md'} and {result['plot']}")
