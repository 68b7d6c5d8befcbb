"""VAE encoding of real images: the deterministic latents the cache stores, and the VAE's fingerprint."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch

from spin_diffusion.data.records import Example, PairExample
from spin_diffusion.data.transforms import ImageTransform, hflip

#: Number of ``vae.encode`` calls made by this module in this process (tests count with it).
ENCODE_CALLS = 0


# ---------------------------------------------------------------- fingerprints and encoding


def vae_fingerprint(vae: Any) -> str:
    """sha256 of the VAE's config (minus private keys such as its path) and of every weight's bytes.

    Hashing all weights costs well under a second for the SD VAE (84M parameters)
    and catches any change of weights, dtype or architecture.
    """
    h = hashlib.sha256()
    config = {k: v for k, v in dict(vae.config).items() if not str(k).startswith("_")}
    h.update(json.dumps(config, sort_keys=True, default=str).encode())
    for name, tensor in sorted(vae.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def latent_scaling(vae: Any) -> tuple[float, float | None]:
    """(scaling_factor, shift_factor) from the VAE config; shift is None for SD 1.x/2.x/SDXL."""
    cfg = vae.config
    scale = getattr(cfg, "scaling_factor", None) or cfg.get("scaling_factor", 1.0)
    shift = getattr(cfg, "shift_factor", None)
    if shift is None and hasattr(cfg, "get"):
        shift = cfg.get("shift_factor")
    return float(scale), (None if shift is None else float(shift))


def _vae_place(vae: Any) -> tuple[torch.device, torch.dtype]:
    try:
        return vae.device, vae.dtype
    except AttributeError:
        p = next(vae.parameters())
        return p.device, p.dtype


@torch.no_grad()
def encode_pixels(vae: Any, pixels: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] pixels in [-1, 1] -> scaled float32 latents on CPU.

    Uses the posterior mean (``latent_dist.mode()``), so a cache is a
    deterministic function of images and VAE; sampling noise would make every
    rebuild differ and adds nothing the diffusion noise does not already add.
    """
    global ENCODE_CALLS
    ENCODE_CALLS += 1
    device, dtype = _vae_place(vae)
    encoded = vae.encode(pixels.to(device=device, dtype=dtype))
    # a KL VAE's posterior mean; a deterministic autoencoder (Sana's DC-AE) returns its latent as is
    z = encoded.latent_dist.mode() if hasattr(encoded, "latent_dist") else encoded.latent
    scale, shift = latent_scaling(vae)
    if shift is not None:
        z = z - shift
    return (z * scale).float().cpu()


def example_pixels(
    ex: Example | PairExample, transform: ImageTransform, flips: bool
) -> tuple[dict[str, torch.Tensor], dict[str, tuple[int, ...]]]:
    """Pixel tensors and size conditioning for every slot of one example.

    The flipped crop is the mirror of the same crop.
    """
    images = (
        {"win": ex.image_win, "lose": ex.image_lose} if isinstance(ex, PairExample) else {"latents": ex.image}
    )
    out = {k: transform(img, ex.id) for k, img in images.items()}
    sizes = {k: transform.size_cond(img, ex.id) for k, img in images.items()}
    if flips:
        out.update({f"{k}_flip": hflip(v) for k, v in list(out.items())})
        sizes.update({f"{k}_flip": transform.size_cond(img, ex.id, flip=True) for k, img in images.items()})
    return out, sizes
