"""PickScore: a CLIP-H model fine-tuned on Pick-a-Pic preferences (Kirstain et al., 2023).

Convention (the official one, and the scale of the paper's tables, ~21 for
SD-1.5): ``score = logit_scale.exp() * cos(text_embedding, image_embedding)``.
With the released checkpoint ``logit_scale.exp()`` is 100, so this is 100x the
cosine similarity.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from spin_diffusion.evaluation.clip_utils import (
    features,
    load_clip_image_processor,
    load_clip_model,
    load_clip_tokenizer,
    pixel_values,
)
from spin_diffusion.evaluation.scorer_base import BatchedScorer

if TYPE_CHECKING:
    import torch
    from PIL import Image


class PickScoreScorer(BatchedScorer):
    """Loads ``CLIPModel`` weights from ``model_path`` and processor files from ``processor_path``."""

    name = "pickscore"

    def __init__(
        self,
        model_path: str | Path,
        processor_path: str | Path | None = None,
        *,
        device: str = "cpu",
        batch_size: int = 16,
        name: str | None = None,
    ):
        super().__init__(device, batch_size, name)
        proc = processor_path or model_path
        self.model = load_clip_model(model_path, "PickScore model", device)
        self.image_processor = load_clip_image_processor(proc, "PickScore processor")
        self.tokenizer = load_clip_tokenizer(proc, "PickScore processor")
        self.max_length = int(self.model.config.text_config.max_position_embeddings)

    def _score_batch(self, images: list[Image.Image], prompts: list[str]) -> torch.Tensor:
        import torch.nn.functional as F

        pixels = pixel_values(self.image_processor, images, self.device)
        text = self.tokenizer(
            prompts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        img = F.normalize(features(self.model.get_image_features(pixel_values=pixels)), dim=-1)
        txt = F.normalize(
            features(
                self.model.get_text_features(
                    input_ids=text["input_ids"], attention_mask=text["attention_mask"]
                )
            ),
            dim=-1,
        )
        return self.model.logit_scale.exp() * (img * txt).sum(-1)
