"""What a denoiser is conditioned on (:class:`Conditioning`) and the base of every family's prompt encoder.

Kept apart from :mod:`spin_diffusion.model.families` (the table of supported
pipeline classes) so that each family's encoder module can build on it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


#: SDXL's size micro-conditioning of one image, in ``add_time_ids`` order:
#: (original height, original width, crop top, crop left, target height, target width).
SizeCond = tuple[int, int, int, int, int, int]


def encode_prompts(text_encoder: Any, tokenizer: Any, captions: Sequence[str]) -> torch.Tensor:
    """Frozen text-encoder hidden states, as ``StableDiffusionPipeline`` conditions the UNet."""
    import torch

    tokens = tokenize_captions(tokenizer, captions)
    mask = None
    if getattr(text_encoder.config, "use_attention_mask", False):
        mask = tokens.attention_mask.to(text_encoder.device)
    with torch.no_grad():
        return text_encoder(tokens.input_ids.to(text_encoder.device), attention_mask=mask)[0]


def tokenize_captions(tokenizer: Any, captions: Sequence[str]) -> Any:
    return tokenizer(
        list(captions),
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )


@dataclass(frozen=True)
class Conditioning:
    """What the denoiser is conditioned on for a batch (``[B, ...]`` tensors).

    ``text_embeds`` and ``time_ids`` are SDXL's added conditions (None for
    SD 1/2); SD3 and FLUX put their pooled text embedding in ``text_embeds``;
    ``attention_mask`` marks the real tokens of padded text states (Sana). ``pair_time_ids`` are the time ids of the second members of a
    pair batch (generated or rejected images have their own size and crop);
    :meth:`pair` lays out the conditioning of the doubled ``[a; b]`` batch.
    """

    hidden_states: torch.Tensor
    text_embeds: torch.Tensor | None = None
    time_ids: torch.Tensor | None = None
    pair_time_ids: torch.Tensor | None = None
    attention_mask: torch.Tensor | None = None

    @property
    def device(self) -> torch.device:
        return self.hidden_states.device

    def __len__(self) -> int:
        return int(self.hidden_states.shape[0])

    def to(self, device: Any = None, dtype: torch.dtype | None = None) -> Conditioning:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device=device, dtype=dtype)

        mask = None if self.attention_mask is None else self.attention_mask.to(device=device)
        return Conditioning(
            move(self.hidden_states),
            move(self.text_embeds),
            move(self.time_ids),
            move(self.pair_time_ids),
            mask,
        )

    def pair(self) -> Conditioning:
        """The conditioning of ``cat([members_a, members_b])``: same captions, each member's own sizes."""
        import torch

        time_ids = None
        if self.time_ids is not None:
            second = self.pair_time_ids if self.pair_time_ids is not None else self.time_ids
            time_ids = torch.cat([self.time_ids, second])
        return Conditioning(
            self.hidden_states.repeat(2, 1, 1),
            None if self.text_embeds is None else self.text_embeds.repeat(2, 1),
            time_ids,
            attention_mask=None if self.attention_mask is None else self.attention_mask.repeat(2, 1),
        )

    def unet_kwargs(self, dtype: torch.dtype) -> dict[str, Any]:
        """Keyword arguments of ``UNet2DConditionModel.forward`` in the UNet's dtype."""
        kwargs: dict[str, Any] = {"encoder_hidden_states": self.hidden_states.to(dtype)}
        if self.text_embeds is not None and self.time_ids is not None:
            kwargs["added_cond_kwargs"] = {
                "text_embeds": self.text_embeds.to(dtype),
                "time_ids": self.time_ids.to(dtype),
            }
        return kwargs


class PromptEncoder(ABC):
    """A pipeline's frozen text encoders, bound once; turns captions into :class:`Conditioning`."""

    def __init__(self, pipe: Any):
        self.vae_scale_factor = int(getattr(pipe, "vae_scale_factor", 8))

    @property
    @abstractmethod
    def modules(self) -> list[torch.nn.Module]:
        """The frozen text encoders (moved with :meth:`to`, never trained)."""

    @property
    @abstractmethod
    def tokenizer(self) -> Any:
        """The tokenizer whose vocabulary decides whether a caption is readable."""

    def to(self, device: Any) -> PromptEncoder:
        for m in self.modules:
            m.to(device)
        return self

    @abstractmethod
    def encode(
        self,
        captions: Sequence[str],
        sizes: Sequence[SizeCond | None] | None = None,
        latent_hw: tuple[int, int] | None = None,
        pair_sizes: Sequence[SizeCond | None] | None = None,
    ) -> Conditioning:
        """Conditioning of ``captions``; ``sizes`` matter to SDXL only (None: uncropped at the latent size)."""

    def default_size(self, latent_hw: tuple[int, int]) -> SizeCond:
        """An image seen whole at the size it is trained at: what a generated sample is."""
        h, w = (int(s) * self.vae_scale_factor for s in latent_hw)
        return (h, w, 0, 0, h, w)
