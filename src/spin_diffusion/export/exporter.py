"""``spin-diffusion export RUN OUT``: one finished iteration as a model anyone can load.

The run directory holds theta_k as weights relative to the base model
(``unet/`` or a LoRA), which only this project's loader knows how to apply.
The export is a complete diffusers pipeline (``DiffusionPipeline.from_pretrained(OUT)``
is all a user needs), plus for LoRA runs the one adapter relative to the
base, the resolved config, the evaluation grid and a model card. It is written
atomically: OUT is complete or absent.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from spin_diffusion.config.base import read_yaml
from spin_diffusion.config.run import validate_config
from spin_diffusion.errors import CheckpointError, ConfigError, UserError
from spin_diffusion.export.destination import (
    CONFIG_COPY,
    LORA_DIR,
    check_destination,
    check_replaceable,
    copy_regular_file,
    is_regular_file,
    read_regular_text,
)
from spin_diffusion.export.model_card import CardInputs, render_model_card
from spin_diffusion.infra.atomic import remove_stale_temporaries, write_text_atomic
from spin_diffusion.infra.run_layout import RunLayout
from spin_diffusion.model.families import denoiser_of
from spin_diffusion.model.loading import load_pipeline, looks_like_local_path
from spin_diffusion.model.lora import LORA_KIND, LORA_KIND_KEY, LORA_WEIGHT_NAME
from spin_diffusion.model.saving import save_full_pipeline
from spin_diffusion.selfplay.opponents import load_iteration_unet
from spin_diffusion.selfplay.rundir import iteration_done

log = logging.getLogger(__name__)

DTYPES = ("float32", "float16", "bfloat16")


def finished_iterations(run_dir: Path, total: int) -> list[int]:
    return [k for k in range(1, total + 1) if iteration_done(run_dir, k)]


def _hub_offline() -> bool:
    """True when huggingface_hub is told not to use the network (HF_HUB_OFFLINE, read now, not at import)."""
    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")
    if flag:
        return True
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def check_push_possible(repo_id: str) -> None:
    """Refuse ``--push-to-hub`` up front when the hub cannot be reached by configuration."""

    if looks_like_local_path(repo_id):
        raise ConfigError(f"--push-to-hub {repo_id}: a hub repository id looks like owner/name")
    if _hub_offline():
        raise UserError(
            f"--push-to-hub {repo_id}: HF_HUB_OFFLINE is set, so nothing can be uploaded; "
            "export without --push-to-hub, or unset HF_HUB_OFFLINE (and log in) to upload"
        )


def push_to_hub(out: Path, repo_id: str, private: bool) -> str:
    """Upload the export folder to a hub model repository (created if missing); returns its URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=str(out), commit_message="spin-diffusion export")
    except Exception as exc:  # noqa: BLE001 - network, auth and permission errors all become one line
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"--push-to-hub {repo_id}: upload failed: {first}") from None
    return f"https://huggingface.co/{repo_id}"


def _relative_lora(model_dir: Path) -> Path | None:
    """The iteration's LoRA file when it is relative to the base model (the only kind worth shipping)."""
    from safetensors import safe_open

    path = model_dir / LORA_WEIGHT_NAME
    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    return path if meta.get(LORA_KIND_KEY) == LORA_KIND else None


def export_run(
    run_dir: Path,
    out: Path,
    iteration: int | None = None,
    *,
    dtype: str = "float32",
    overwrite: bool = False,
    push: str | None = None,
    private: bool = False,
) -> dict[str, Any]:
    """Write iteration ``iteration`` (default: the last finished one) of ``run_dir`` to ``out``."""
    run_dir, out = Path(run_dir), Path(out)
    layout = RunLayout(run_dir)
    saved = layout.config
    if not is_regular_file(saved):
        raise ConfigError(f"{run_dir} is not a run directory (no config.yaml); give runs/NAME")
    cfg = validate_config(read_yaml(saved), str(saved))
    done = finished_iterations(run_dir, len(cfg.iterations))
    if not done:
        raise CheckpointError(f"{run_dir} has no finished iteration yet; train it first")
    k = done[-1] if iteration is None else iteration
    if k not in done:
        raise ConfigError(f"--iteration {k}: {run_dir} has finished iterations {', '.join(map(str, done))}")
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype {dtype}: use one of {', '.join(DTYPES)}")
    check_destination(run_dir, out)
    check_replaceable(out, overwrite)
    for stale in remove_stale_temporaries(out):
        log.info("removed %s, left by an export that did not finish", stale)
    if push is not None:
        check_push_possible(push)

    import torch

    model_dir = layout.iteration(k).model
    pipe = load_pipeline(cfg.model.pretrained, revision=cfg.model.revision, torch_dtype=getattr(torch, dtype))
    unet = load_iteration_unet(denoiser_of(pipe), pipe, model_dir)  # theta_k as a plain UNet, LoRA fused
    iterations = [json.loads(layout.iteration(j).done.read_text()) for j in done]
    eval_md, grid = layout.eval / "results.md", layout.eval / "grid.png"
    lora = _relative_lora(model_dir) if cfg.model.lora.enabled else None
    notes = []
    if cfg.model.lora.enabled and lora is None:
        notes.append(f"{model_dir} holds no LoRA relative to the base model, so no adapter is included.")
    if k != done[-1]:
        notes.append(f"The run has {done[-1]} finished iterations; this export is iteration {k}.")
    card = CardInputs(
        cfg=cfg,
        iteration=k,
        iterations=iterations,
        evaluation_md=read_regular_text(eval_md),
        has_grid=is_regular_file(grid),
        lora_file=f"{LORA_DIR}/{lora.name}" if lora else None,
        notes=notes,
    )

    def extra(tmp: Path) -> None:
        write_text_atomic(tmp / "README.md", render_model_card(card))
        if not copy_regular_file(saved, tmp / CONFIG_COPY):
            raise ConfigError(f"{saved} is not a regular file; an export copies regular files only")
        if card.has_grid:
            copy_regular_file(grid, tmp / "grid.png")
        if lora is not None:
            (tmp / LORA_DIR).mkdir()
            if not copy_regular_file(lora, tmp / LORA_DIR / lora.name):
                raise ConfigError(f"{lora} is not a regular file; an export copies regular files only")

    save_full_pipeline(pipe, unet, out, extra=extra)
    result: dict[str, Any] = {"out": str(out), "iteration": k, "lora": card.lora_file}
    if push is not None:
        result["url"] = push_to_hub(out, push, private)
    return result
