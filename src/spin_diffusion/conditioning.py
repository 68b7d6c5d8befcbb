"""How captions become the UNet's conditioning."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def encode_prompts(text_encoder: Any, tokenizer: Any, captions: Sequence[str]) -> torch.Tensor:
    """Frozen text-encoder hidden states, as the pipeline conditions the UNet."""
    import torch

    tokens = tokenizer(
        list(captions),
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        return text_encoder(tokens.input_ids.to(text_encoder.device))[0]
