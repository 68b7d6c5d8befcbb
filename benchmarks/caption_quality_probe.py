"""How much prompt fidelity can exact captions buy a toy UNet base? Continue its pretraining on fresh scenes.

A control for the bench's validity question (docs/results.md, "Bench validity"): if continuing a
base on *exact* captions does not raise held-out fidelity much more than continuing it on the web's
*noisy* captions for the same steps, then the toy world leaves fine-tuning little fidelity to gain,
whatever the method. This continues a UNet toy base with the pretraining loss (UNet and, unless
``--frozen-text``, text encoder) on ``--scenes`` freshly drawn scenes, captioned exactly (every
attribute named) or as the web captions them (omissions and 15% wrong values), drawn in the web or
the curated style, and saves the pipeline. Judge it with ``spin-diffusion toy evaluate OUT
--n-prompts 200 --guidance 3.0`` and ``spin-diffusion toy caption-sensitivity OUT``.

    .venv/bin/python benchmarks/caption_quality_probe.py BASE OUT --captions exact   # ~5 min, 2 cores
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from spin_diffusion.model.loading import load_pipeline
from spin_diffusion.toy.pretrain import PretrainConfig, encode_latents, train_denoiser
from spin_diffusion.toy.pretrain_io import save_pipeline
from spin_diffusion.toy.render import render_scene
from spin_diffusion.toy.world import ObjectSpec, PromptSpec, complete_spec, corrupt_spec, spec_to_prompt


def scenes_and_captions(n: int, captions: str, style: str, seed: int) -> tuple[list[str], torch.Tensor]:
    """``n`` fresh scenes (one object or two, as the web has them), their captions and pixels in [-1, 1]."""
    rng = np.random.default_rng(5 + seed)
    texts, images = [], []
    for _ in range(n):
        scene = complete_spec(PromptSpec((ObjectSpec(),) * (2 if rng.random() < 0.4 else 1)), rng)
        spec = corrupt_spec(scene, rng) if captions == "web" else scene
        texts.append(spec_to_prompt(spec, rng))
        images.append(np.asarray(render_scene(scene, 32, style, rng), dtype=np.float32))
    pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2) / 127.5 - 1.0
    return texts, pixels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("base", help="a UNet toy pipeline directory (toy-base or a longer-pretrained one)")
    ap.add_argument("out", help="where the continued pipeline is saved")
    ap.add_argument("--captions", choices=["exact", "web"], required=True)
    ap.add_argument("--style", choices=["web", "curated"], default="web")
    ap.add_argument("--frozen-text", action="store_true", help="train the UNet only")
    ap.add_argument("--scenes", type=int, default=8000)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    pipe = load_pipeline(args.base)
    if args.frozen_text:
        pipe.text_encoder.requires_grad_(False)  # AdamW skips parameters without gradients
    texts, pixels = scenes_and_captions(args.scenes, args.captions, args.style, args.seed)
    latents = encode_latents(pipe.vae, pixels)
    cfg = PretrainConfig(unet_steps=args.steps, unet_lr=args.lr, warmup_steps=100, threads=args.threads,
                         seed=args.seed, vae_from=args.base)  # fmt: skip
    gen = torch.Generator().manual_seed(args.seed)
    train_denoiser(pipe, latents, texts, cfg, gen, lambda rec: rec["step"] % 500 or print(json.dumps(rec)))
    save_pipeline(pipe, args.out, {"probe": vars(args)})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
