"""How captions become conditioning for the flow families: the pipeline's own ``encode_prompt``.

SD3: CLIP-L and CLIP-G penultimate states side by side, zero-padded to T5's
width and followed by T5's states (zeros when the pipeline has no T5), plus the
two CLIPs' pooled projections concatenated. FLUX.1: T5's states and CLIP's
pooled output (``txt_ids`` are zeros, rebuilt at the network call). Calling
``encode_prompt`` itself, rather than a copy of it, keeps training conditioned
exactly as the sampler is; an empty caption (caption dropout) is encoded as
``""``, which is what both pipelines' unconditional input is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from spin_diffusion.model.conditioning import Conditioning, PromptEncoder, SizeCond

if TYPE_CHECKING:
    import torch


class _PipelineEncoder(PromptEncoder):
    """A flow pipeline's text encoders, used through ``pipe.encode_prompt``."""

    component_names: tuple[str, ...] = ()

    def __init__(self, pipe: Any):
        super().__init__(pipe)
        self.pipe = pipe

    @property
    def modules(self) -> list[torch.nn.Module]:
        found = (getattr(self.pipe, n, None) for n in self.component_names)
        return [m for m in found if m is not None]

    @property
    def tokenizer(self) -> Any:
        return self.pipe.tokenizer

    @property
    def device(self) -> Any:
        return self.pipe.text_encoder.device


class SD3PromptEncoder(_PipelineEncoder):
    """``StableDiffusion3Pipeline.encode_prompt`` without classifier-free guidance."""

    component_names = ("text_encoder", "text_encoder_2", "text_encoder_3")

    def encode(
        self,
        captions: Sequence[str],
        sizes: Sequence[SizeCond | None] | None = None,
        latent_hw: tuple[int, int] | None = None,
        pair_sizes: Sequence[SizeCond | None] | None = None,
    ) -> Conditioning:
        import torch

        with torch.no_grad():
            states, _, pooled, _ = self.pipe.encode_prompt(
                prompt=list(captions),
                prompt_2=None,
                prompt_3=None,
                device=self.device,
                do_classifier_free_guidance=False,
            )
        return Conditioning(states, pooled)


class SanaPromptEncoder(_PipelineEncoder):
    """``SanaPipeline.encode_prompt``: Gemma-2's states (its complex human instruction prepended, as the
    pipeline does) and their attention mask."""

    component_names = ("text_encoder",)

    def encode(
        self,
        captions: Sequence[str],
        sizes: Sequence[SizeCond | None] | None = None,
        latent_hw: tuple[int, int] | None = None,
        pair_sizes: Sequence[SizeCond | None] | None = None,
    ) -> Conditioning:
        import torch

        with torch.no_grad():
            states, mask, _, _ = self.pipe.encode_prompt(
                list(captions), do_classifier_free_guidance=False, device=self.device
            )
        return Conditioning(states, attention_mask=mask)


class FluxPromptEncoder(_PipelineEncoder):
    """``FluxPipeline.encode_prompt``: T5 states and CLIP's pooled output."""

    component_names = ("text_encoder", "text_encoder_2")

    def encode(
        self,
        captions: Sequence[str],
        sizes: Sequence[SizeCond | None] | None = None,
        latent_hw: tuple[int, int] | None = None,
        pair_sizes: Sequence[SizeCond | None] | None = None,
    ) -> Conditioning:
        import torch

        with torch.no_grad():
            states, pooled, _ = self.pipe.encode_prompt(
                prompt=list(captions), prompt_2=None, device=self.device
            )
        return Conditioning(states, pooled)
