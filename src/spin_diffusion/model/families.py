"""How captions become the UNet's conditioning, per model family: the one place that knows SD from SDXL.

A :class:`ModelFamily` is resolved once per run from the pipeline's class (the
``_class_name`` of ``model_index.json``), never from a model's name. It says
which components the pipeline must have and builds a :class:`PromptEncoder`,
which turns captions (and, for SDXL, each image's size and crop) into a
:class:`Conditioning`: the UNet's ``encoder_hidden_states`` plus the
``added_cond_kwargs`` SDXL needs. Sampling, training, the reference errors
(live or precomputed), evaluation and saving all use the pipeline classes of
diffusers and this seam, so no other module asks which model it runs.

Supported: ``StableDiffusionPipeline`` (SD 1.x and 2.x, epsilon or
v-prediction) and ``StableDiffusionXLPipeline`` (SDXL base).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spin_diffusion.errors import CheckpointError

if TYPE_CHECKING:
    import torch


#: SDXL's size micro-conditioning of one image, in ``add_time_ids`` order:
#: (original height, original width, crop top, crop left, target height, target width).
SizeCond = tuple[int, int, int, int, int, int]


def encode_prompts(text_encoder: Any, tokenizer: Any, captions: Sequence[str]) -> torch.Tensor:
    """Frozen text-encoder hidden states, as ``StableDiffusionPipeline`` conditions the UNet."""
    import torch

    tokens = _tokens(tokenizer, captions)
    mask = None
    if getattr(text_encoder.config, "use_attention_mask", False):
        mask = tokens.attention_mask.to(text_encoder.device)
    with torch.no_grad():
        return text_encoder(tokens.input_ids.to(text_encoder.device), attention_mask=mask)[0]


def _tokens(tokenizer: Any, captions: Sequence[str]) -> Any:
    return tokenizer(
        list(captions),
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )


@dataclass(frozen=True)
class Conditioning:
    """What the UNet is conditioned on for a batch (``[B, ...]`` tensors).

    ``text_embeds`` and ``time_ids`` are SDXL's added conditions (None for
    SD 1/2). ``pair_time_ids`` are the time ids of the second members of a
    pair batch (generated or rejected images have their own size and crop);
    :meth:`pair` lays out the conditioning of the doubled ``[a; b]`` batch.
    """

    hidden_states: torch.Tensor
    text_embeds: torch.Tensor | None = None
    time_ids: torch.Tensor | None = None
    pair_time_ids: torch.Tensor | None = None

    @property
    def device(self) -> torch.device:
        return self.hidden_states.device

    def __len__(self) -> int:
        return int(self.hidden_states.shape[0])

    def to(self, device: Any = None, dtype: torch.dtype | None = None) -> Conditioning:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device=device, dtype=dtype)

        return Conditioning(
            move(self.hidden_states), move(self.text_embeds), move(self.time_ids), move(self.pair_time_ids)
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


class SDPromptEncoder(PromptEncoder):
    """SD 1.x / 2.x: the text encoder's last hidden states; an empty caption is encoded like any other."""

    def __init__(self, pipe: Any):
        super().__init__(pipe)
        self.text_encoder = pipe.text_encoder
        self._tokenizer = pipe.tokenizer

    @property
    def modules(self) -> list[torch.nn.Module]:
        return [self.text_encoder]

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    def encode(
        self,
        captions: Sequence[str],
        sizes: Sequence[SizeCond | None] | None = None,
        latent_hw: tuple[int, int] | None = None,
        pair_sizes: Sequence[SizeCond | None] | None = None,
    ) -> Conditioning:
        return Conditioning(encode_prompts(self.text_encoder, self._tokenizer, captions))


class SDXLPromptEncoder(PromptEncoder):
    """SDXL: both encoders' penultimate hidden states side by side, the second's pooled projection,
    and ``add_time_ids`` = original size + crop top-left + target size of each image.

    An empty caption (caption dropout) becomes what the pipeline's classifier-free
    guidance uses as its unconditional input: zeros when the pipeline is configured
    with ``force_zeros_for_empty_prompt`` (SDXL base is), else the encoded ``""``.
    Training the dropped captions on anything else would teach the UNet an
    unconditional branch that sampling never asks for.
    """

    def __init__(self, pipe: Any):
        super().__init__(pipe)
        self.encoders = [pipe.text_encoder, pipe.text_encoder_2]
        self.tokenizers = [pipe.tokenizer, pipe.tokenizer_2]
        self.zeros_for_empty = bool(getattr(pipe.config, "force_zeros_for_empty_prompt", False))
        unet = pipe.unet
        expected = unet.add_embedding.linear_1.in_features
        given = unet.config.addition_time_embed_dim * 6 + pipe.text_encoder_2.config.projection_dim
        if expected != given:
            raise CheckpointError(
                f"this SDXL UNet's added embedding takes {expected} inputs but 6 time ids and the second "
                f"text encoder's projection give {given}: the pipeline's components do not belong together"
            )

    @property
    def modules(self) -> list[torch.nn.Module]:
        return list(self.encoders)

    @property
    def tokenizer(self) -> Any:
        return self.tokenizers[0]

    def encode(
        self,
        captions: Sequence[str],
        sizes: Sequence[SizeCond | None] | None = None,
        latent_hw: tuple[int, int] | None = None,
        pair_sizes: Sequence[SizeCond | None] | None = None,
    ) -> Conditioning:
        import torch

        captions = list(captions)
        hidden, pooled = [], None
        with torch.no_grad():
            for tokenizer, encoder in zip(self.tokenizers, self.encoders, strict=True):
                ids = _tokens(tokenizer, captions).input_ids.to(encoder.device)
                out = encoder(ids, output_hidden_states=True)
                if out[0].ndim == 2:  # the encoder with projection: its pooled text embedding
                    pooled = out[0]
                hidden.append(out.hidden_states[-2])
        states = torch.cat(hidden, dim=-1)
        if pooled is None:
            raise CheckpointError("the SDXL pipeline's text_encoder_2 gives no pooled (projected) output")
        if self.zeros_for_empty:
            empty = torch.tensor([c == "" for c in captions], device=states.device)
            states = torch.where(empty[:, None, None], torch.zeros_like(states), states)
            pooled = torch.where(empty[:, None], torch.zeros_like(pooled), pooled)
        return Conditioning(
            states,
            pooled,
            self._time_ids(sizes, len(captions), latent_hw, states),
            None if pair_sizes is None else self._time_ids(pair_sizes, len(captions), latent_hw, states),
        )

    def _time_ids(
        self,
        sizes: Sequence[SizeCond | None] | None,
        n: int,
        latent_hw: tuple[int, int] | None,
        like: torch.Tensor,
    ) -> torch.Tensor:
        import torch

        sizes = list(sizes) if sizes is not None else [None] * n
        if len(sizes) != n:
            raise ValueError(f"{len(sizes)} image sizes for {n} captions")
        rows = []
        for s in sizes:
            if s is None:
                if latent_hw is None:
                    raise ValueError("SDXL conditioning needs each image's size or the latent size")
                s = self.default_size(latent_hw)
            rows.append([float(v) for v in s])
        return torch.tensor(rows, dtype=like.dtype, device=like.device)


@dataclass(frozen=True)
class ModelFamily:
    """One supported pipeline class: its components and how its captions become conditioning."""

    pipeline_class: str
    description: str
    required_components: tuple[str, ...]
    encoder: type[PromptEncoder]

    def prompt_encoder(self, pipe: Any) -> PromptEncoder:
        return self.encoder(pipe)


SD = ModelFamily(
    "StableDiffusionPipeline",
    "Stable Diffusion 1.x / 2.x (epsilon or v-prediction)",
    ("unet", "vae", "text_encoder", "tokenizer", "scheduler"),
    SDPromptEncoder,
)
SDXL = ModelFamily(
    "StableDiffusionXLPipeline",
    "Stable Diffusion XL base",
    ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler"),
    SDXLPromptEncoder,
)
FAMILIES: dict[str, ModelFamily] = {f.pipeline_class: f for f in (SD, SDXL)}


def supported_description() -> str:
    return "; ".join(f"{f.pipeline_class} ({f.description})" for f in FAMILIES.values())


def family_for_class(class_name: str | None, source: str) -> ModelFamily:
    """The family of a pipeline class name, or a one-line error naming what is supported."""
    family = FAMILIES.get(class_name or "")
    if family is None:
        raise CheckpointError(
            f"{source} is a {class_name or 'pipeline of unknown class'}, which spin-diffusion does not "
            f"support (flow-matching models such as SD3 or Flux cannot be trained here); supported: "
            f"{supported_description()}"
        )
    return family


def family_of_directory(path: Path) -> ModelFamily:
    """The family a local pipeline directory declares in ``model_index.json`` (checked before loading)."""
    index = Path(path) / "model_index.json"
    try:
        class_name = json.loads(index.read_text()).get("_class_name")
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{index} is unreadable ({type(exc).__name__})") from None
    return family_for_class(class_name, str(path))


def family_of(pipe: Any) -> ModelFamily:
    """The family of a loaded pipeline (by its class, as ``model_index.json`` names it)."""
    return family_for_class(type(pipe).__name__, "the model")


def prompt_encoder(pipe: Any) -> PromptEncoder:
    """The pipeline's :class:`PromptEncoder` (its family resolved from its class)."""
    return family_of(pipe).prompt_encoder(pipe)
