"""LAION aesthetic score: the improved-aesthetic-predictor MLP on CLIP ViT-L/14 image embeddings.

The predictor (``sac+logos+ava1-l14-linearMSE.pth``) is five linear layers
768-1024-128-64-16-1 with dropout between the first four and no activation, so
at inference it is one affine map of the L2-normalised CLIP image embedding.
The score is on the AVA 1-10 scale (SD-1.5 averages ~5.8 in the paper).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from spin_diffusion.errors import CheckpointError
from spin_diffusion.evaluation.clip_utils import (
    features,
    load_clip_image_processor,
    load_clip_model,
    pixel_values,
)
from spin_diffusion.evaluation.scorer_base import BatchedScorer, load_torch_state, require_file

if TYPE_CHECKING:
    import torch
    from PIL import Image

MLP_DIMS = (1024, 128, 64, 16, 1)
MLP_KEYS = ("layers.0", "layers.2", "layers.4", "layers.6", "layers.7")


def build_aesthetic_mlp(input_size: int = 768, dims: tuple[int, ...] = MLP_DIMS) -> torch.nn.Sequential:
    """The predictor's layout: Linear, Dropout(0.2), Linear, Dropout(0.2), Linear, Dropout(0.1), Linear, Linear."""
    from torch import nn

    a, b, c, d, e = dims
    return nn.Sequential(
        nn.Linear(input_size, a),
        nn.Dropout(0.2),
        nn.Linear(a, b),
        nn.Dropout(0.2),
        nn.Linear(b, c),
        nn.Dropout(0.1),
        nn.Linear(c, d),
        nn.Linear(d, e),
    )


def load_aesthetic_mlp(path: str | Path) -> torch.nn.Sequential:
    """The MLP from a ``.pth`` state dict with keys ``layers.{0,2,4,6,7}.{weight,bias}``."""
    p = require_file(path, "aesthetic predictor weights")
    state = load_torch_state(p, "aesthetic predictor weights")
    expected = {f"{k}.{n}" for k in MLP_KEYS for n in ("weight", "bias")}
    if set(state) != expected:
        extra = sorted(set(state) - expected)[:3]
        missing = sorted(expected - set(state))[:3]
        raise CheckpointError(
            f"aesthetic predictor weights {p} do not have the keys layers.{{0,2,4,6,7}}: "
            f"missing {missing}, unexpected {extra}"
        )
    input_size = state["layers.0.weight"].shape[1]
    dims = tuple(state[f"{k}.weight"].shape[0] for k in MLP_KEYS)
    if dims[-1] != 1:
        raise CheckpointError(
            f"aesthetic predictor weights {p}: the last layer must output 1 value, not {dims[-1]}"
        )
    mlp = build_aesthetic_mlp(input_size, dims)
    mlp.load_state_dict({k.removeprefix("layers."): v.float() for k, v in state.items()})
    return mlp.eval()


class AestheticScorer(BatchedScorer):
    """CLIP ViT-L/14 (a local ``CLIPModel`` dir with processor files) + the aesthetic MLP."""

    name = "aesthetic"

    def __init__(
        self,
        mlp_path: str | Path,
        clip_path: str | Path,
        *,
        device: str = "cpu",
        batch_size: int = 16,
        name: str | None = None,
    ):
        super().__init__(device, batch_size, name)
        self.mlp = load_aesthetic_mlp(mlp_path).to(device)
        self.clip = load_clip_model(clip_path, "aesthetic CLIP model", device)
        self.image_processor = load_clip_image_processor(clip_path, "aesthetic CLIP model")
        dim = int(self.clip.config.projection_dim)
        if self.mlp[0].in_features != dim:
            raise CheckpointError(
                f"aesthetic predictor expects {self.mlp[0].in_features}-d embeddings but the CLIP model at "
                f"{clip_path} gives {dim}-d (the predictor needs CLIP ViT-L/14)"
            )

    def embed(self, images: list[Image.Image]) -> torch.Tensor:
        """L2-normalised CLIP image embeddings."""
        import torch.nn.functional as F

        pixels = pixel_values(self.image_processor, images, self.device)
        return F.normalize(features(self.clip.get_image_features(pixel_values=pixels)).float(), dim=-1)

    def _score_batch(self, images: list[Image.Image], prompts: list[str]) -> torch.Tensor:
        return self.mlp(self.embed(images)).squeeze(-1)
