"""``spin-diffusion`` command line: one sub-command per job.

Only typer, pydantic and the standard library are imported at start-up; each
command imports torch/diffusers when it runs, so ``--help`` and config errors
answer in about a second.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from spin_diffusion.errors import UserError

app = typer.Typer(
    name="spin-diffusion",
    help="Self-play fine-tuning (SPIN-Diffusion) of text-to-image diffusion models, with SFT/DPO baselines.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

ConfigArg = Annotated[Path, typer.Argument(help="run configuration (YAML)")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set", "-s", help="override a config value, e.g. --set training.max_steps=10 (repeatable)"
    ),
]


@app.command()
def train(config: ConfigArg, set_: SetOpt = None) -> None:
    """Train (SFT, DPO or SPIN self-play iterations) as the config says; resumes an existing run."""
    from spin_diffusion.config.run import load_config
    from spin_diffusion.selfplay.driver import run

    cfg = load_config(config, set_)
    results = run(cfg)
    done = len(results.get("iterations", []))
    typer.echo(f"finished {done} iteration(s) of {cfg.run_dir}; results: {cfg.run_dir / 'results.md'}")


@app.command("show-config")
def show_config(config: ConfigArg, set_: SetOpt = None) -> None:
    """Validate a config and print it fully resolved (every default filled in)."""
    from spin_diffusion.config.run import dump_config, load_config

    typer.echo(dump_config(load_config(config, set_)), nl=False)


@app.command()
def demo(
    output_dir: Annotated[Path, typer.Option(help="where the run directory goes")] = Path("runs"),
    iterations: Annotated[int, typer.Option(min=1, help="self-play iterations")] = 3,
    quick: Annotated[bool, typer.Option(help="a much smaller run, for smoke tests")] = False,
) -> None:
    """Base, SFT, DPO and SPIN iterations on the toy world (the short reproduction); prints the table."""
    from spin_diffusion.studies.demo import run_demo

    run_demo(output_dir=output_dir, iterations=iterations, quick=quick)


@app.command()
def export(
    run: Annotated[Path, typer.Argument(help="run directory (runs/NAME)")],
    out: Annotated[Path, typer.Argument(help="where the diffusers pipeline goes")],
    iteration: Annotated[
        int | None, typer.Option(min=1, help="which iteration (default: the last finished one)")
    ] = None,
    dtype: Annotated[str, typer.Option(help="float32, float16 or bfloat16 weights")] = "float32",
    overwrite: Annotated[bool, typer.Option(help="replace OUT if it exists")] = False,
    push_to_hub: Annotated[
        str | None, typer.Option("--push-to-hub", help="also upload to this hub repository (owner/name)")
    ] = None,
    private: Annotated[bool, typer.Option(help="create the hub repository as private")] = False,
) -> None:
    """Write one iteration of a run as a complete diffusers pipeline with a model card (and LoRA adapter)."""
    from spin_diffusion.export.exporter import export_run

    result = export_run(
        run, out, iteration, dtype=dtype, overwrite=overwrite, push=push_to_hub, private=private
    )
    typer.echo(f"exported iteration {result['iteration']} of {run} to {out}; load it with")
    typer.echo(f'  DiffusionPipeline.from_pretrained("{out}")')
    if result.get("lora"):
        typer.echo(f"LoRA adapter relative to the base model: {out / result['lora']}")
    if result.get("url"):
        typer.echo(f"uploaded to {result['url']}")


configs_app = typer.Typer(
    no_args_is_help=True, help="The example configs shipped with the package: list them, copy them to edit."
)


@configs_app.command("list")
def configs_list() -> None:
    """Each shipped config's name and what it is for."""
    from spin_diffusion.config.shipped import configs_dir, describe, shipped_configs

    for name, path in shipped_configs().items():
        typer.echo(f"{name:24s} {describe(path)}")
    typer.echo(f"(installed in {configs_dir()})")


@configs_app.command("copy")
def configs_copy(
    names: Annotated[list[str] | None, typer.Argument(help="configs to copy (default: all)")] = None,
    to: Annotated[Path, typer.Option("--to", help="destination directory")] = Path("configs"),
    overwrite: Annotated[bool, typer.Option(help="replace files that exist")] = False,
) -> None:
    """Copy shipped configs into a directory (./configs by default), to edit and run them."""
    from spin_diffusion.config.shipped import copy_configs

    for path in copy_configs(list(names or []), to, overwrite=overwrite):
        typer.echo(f"wrote {path}")


app.add_typer(configs_app, name="configs")


def _mount_subcommands() -> None:
    """Sub-apps of the data, evaluation and toy modules (each keeps its imports light)."""
    from spin_diffusion.cli.data import app as data_app
    from spin_diffusion.cli.evaluate import evaluate_command
    from spin_diffusion.cli.toy import app as toy_app

    app.add_typer(data_app, name="data", help="Check image-caption data before training on it.")
    app.add_typer(toy_app, name="toy", help="The embedded toy world: data, prompts, judge, pretraining.")
    app.command("evaluate")(evaluate_command)


_mount_subcommands()


def _click_exception_types() -> tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...]]:
    """(usage-error bases, abort types) of every click that may be in play.

    typer >= 0.24 bundles its own click (``typer._click``) whose exceptions do not subclass
    ``click.ClickException``; older typer raises plain click's. Both are caught so a version bump
    in either direction cannot turn a typo back into a traceback.
    """
    import importlib

    usage: list[type[BaseException]] = []
    abort: list[type[BaseException]] = []
    for module in ("typer._click.exceptions", "typer.exceptions", "click.exceptions"):
        try:
            mod = importlib.import_module(module)
        except ImportError:  # not every typer bundles click; click itself may be absent
            continue
        if isinstance(getattr(mod, "ClickException", None), type):
            usage.append(mod.ClickException)
        if isinstance(getattr(mod, "Abort", None), type):
            abort.append(mod.Abort)
    return tuple(usage), tuple(abort)


def configure_console() -> None:
    """Our own messages and one progress bar per stage; library chatter is turned down.

    Set before transformers/diffusers are imported (the commands import them
    lazily), which is when those libraries read their verbosity.
    """
    import logging
    import os

    for var, value in (("TRANSFORMERS_VERBOSITY", "error"), ("DIFFUSERS_VERBOSITY", "error")):
        os.environ.setdefault(var, value)
    logger = logging.getLogger("spin_diffusion")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


class CtrlCWitness:
    """Remembers that SIGINT arrived (still raising KeyboardInterrupt), so that the exit can say so."""

    def __init__(self) -> None:
        self.seen = False
        self._old: Any = None

    def _handle(self, signum: int, frame: Any) -> None:
        self.seen = True
        raise KeyboardInterrupt

    def __enter__(self) -> CtrlCWitness:
        import signal

        try:
            self._old = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: no handler, nothing to witness
            self._old = None
        return self

    def __exit__(self, *exc: Any) -> None:
        import signal

        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


def main(argv: list[str] | None = None) -> int:
    """Entry point: user errors become one line on stderr and a non-zero exit code."""
    configure_console()
    usage_errors, aborts = _click_exception_types()
    ctrl_c = CtrlCWitness()
    try:
        with ctrl_c:
            rc = app(args=argv, standalone_mode=False)
        if rc == 130 and ctrl_c.seen:  # typer turned the KeyboardInterrupt into a bare 130
            print(
                "interrupted (Ctrl-C); finished work is kept: run the same command to go on", file=sys.stderr
            )
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except usage_errors as exc:  # bad command, option or value: click's usage line and exit 2
        exc.show()  # type: ignore[attr-defined]
        return int(getattr(exc, "exit_code", 2))
    except aborts:
        print("aborted", file=sys.stderr)
        return 130
    return rc if isinstance(rc, int) else 0


if __name__ == "__main__":
    sys.exit(main())
