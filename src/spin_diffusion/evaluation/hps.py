"""HPSv2 / HPSv2.1: an open_clip ViT-H-14 fine-tuned on human preference (Wu et al., 2023).

Convention (the official ``hpsv2.score`` one, and the paper's ~0.27 scale): the
score is the plain cosine similarity of the normalised image and text
embeddings, *not* multiplied by 100 or by ``logit_scale``. Preprocessing is the
HPS evaluation transform: bicubic resize of the longer side to 224, centred
black padding to a square, CLIP mean/std normalisation. The checkpoint is the
released ``HPS_v2_compressed.pt`` / ``HPS_v2.1_compressed.pt`` (a dict whose
``state_dict`` holds open_clip keys), loaded with ``weights_only=True``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from spin_diffusion.evaluation.clip_utils import features, load_clip_tokenizer
from spin_diffusion.evaluation.openclip_convert import load_openclip_as_clipmodel
from spin_diffusion.evaluation.scorer_base import (
    CLIP_MEAN,
    CLIP_STD,
    BatchedScorer,
    load_torch_state,
    require_file,
    resize_longest_pad_square,
    to_normalized_tensor,
)

if TYPE_CHECKING:
    import torch
    from PIL import Image


class HPSv2Scorer(BatchedScorer):
    """HPS from a local checkpoint file and a local CLIP BPE tokenizer directory."""

    name = "hpsv2"

    def __init__(
        self,
        checkpoint: str | Path,
        tokenizer_path: str | Path,
        *,
        device: str = "cpu",
        batch_size: int = 16,
        name: str | None = None,
    ):
        super().__init__(device, batch_size, name)
        path = require_file(checkpoint, "HPSv2 checkpoint")
        self.tokenizer = load_clip_tokenizer(tokenizer_path, "HPSv2 tokenizer")
        state = load_torch_state(path, "HPSv2 checkpoint")
        tok = self.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        self.model = load_openclip_as_clipmodel(
            {k: v.float() for k, v in state.items()},
            eos_token_id=tok.eos_token_id,
            bos_token_id=tok.bos_token_id,
            pad_token_id=pad,
        ).to(device)
        self.image_size = int(self.model.config.vision_config.image_size)
        self.context_length = int(self.model.config.text_config.max_position_embeddings)

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        return to_normalized_tensor(
            [resize_longest_pad_square(im, self.image_size) for im in images], CLIP_MEAN, CLIP_STD
        )

    def _score_batch(self, images: list[Image.Image], prompts: list[str]) -> torch.Tensor:
        import torch.nn.functional as F

        pixels = self.preprocess(images).to(self.device)
        ids = self.tokenizer(
            prompts,
            padding="max_length",
            truncation=True,
            max_length=self.context_length,
            return_tensors="pt",
        )["input_ids"].to(self.device)
        # No padding mask, as in open_clip: the text transformer is causal and pools
        # at the end-of-text token, so tokens after it cannot change the result.
        img = F.normalize(features(self.model.get_image_features(pixel_values=pixels)), dim=-1)
        txt = F.normalize(features(self.model.get_text_features(input_ids=ids)), dim=-1)
        return (img * txt).sum(-1)
