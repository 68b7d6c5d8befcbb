"""Saving a pretrained toy pipeline atomically, and reusing an earlier one's frozen VAE."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path


def load_frozen_vae(pipeline_dir: Path, expected: dict):
    """The ``vae/`` of an earlier toy pipeline; refused unless its architecture matches this config."""
    from diffusers import AutoencoderKL

    from spin_diffusion.errors import UserError

    vae_dir = pipeline_dir / "vae"
    if not (vae_dir / "config.json").is_file():
        raise UserError(f"vae_from: {vae_dir} has no config.json (not a diffusers pipeline directory)")
    vae = AutoencoderKL.from_pretrained(vae_dir)
    keys = ("block_out_channels", "latent_channels", "sample_size")
    mismatch = [k for k in keys if tuple(_as_tuple(vae.config[k])) != tuple(_as_tuple(expected[k]))]
    if mismatch:
        raise UserError(
            f"vae_from: {vae_dir} has a different {', '.join(mismatch)} than this pretraining config"
        )
    vae.requires_grad_(False)
    vae.eval()
    return vae


def _as_tuple(value) -> tuple:
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)


def save_pipeline(pipe, out_dir: str | os.PathLike[str], summary: dict) -> Path:
    """``save_pretrained`` into a temporary sibling, then swap it in (never a half-written model)."""
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        pipe.save_pretrained(tmp, safe_serialization=True)
        (tmp / "pretrain_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
