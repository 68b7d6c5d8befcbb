"""Build a real, tiny Stable Diffusion (1.x/2.x or XL) pipeline offline, from configs only.

Tests, the demo and the toy world need the exact code path users run on
SD-1.5, SD-2.1 or SDXL (same classes, same ``save_pretrained`` layout, same
loader) without downloading weights; this module assembles one from small configs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import pairwise
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from diffusers import (
        AutoencoderKL,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTokenizer

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"


def _bpe(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Apply BPE merges the way the tokenizer does: always the best-ranked adjacent pair first."""
    while len(symbols) > 1:
        pairs = [(ranks.get((a, b), len(ranks)), i) for i, (a, b) in enumerate(pairwise(symbols))]
        rank, i = min(pairs)
        if rank == len(ranks):
            break
        symbols = [*symbols[:i], symbols[i] + symbols[i + 1], *symbols[i + 2 :]]
    return symbols


def build_word_tokenizer(words: list[str], max_length: int = 16) -> CLIPTokenizer:
    """A ``CLIPTokenizer`` whose BPE merges spell each of ``words`` as exactly one token.

    For each word the merges learnt so far are replayed (as the tokenizer would)
    and a merge is appended until the word is one symbol. A new merge ranks
    below every earlier one, so it never changes how an earlier word splits.
    The saved tokenizer loads with the ordinary ``CLIPTokenizer.from_pretrained``.
    """
    from transformers import CLIPTokenizer

    vocab: dict[str, int] = {}
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}

    def add(token: str) -> None:
        if token not in vocab:
            vocab[token] = len(vocab)

    add(BOS)
    add(EOS)
    for word in sorted({w.lower() for w in words if w}):
        symbols = [*word[:-1], word[-1] + "</w>"]
        for s in symbols:
            add(s)
        while len(symbols := _bpe(symbols, ranks)) > 1:
            pair = (symbols[0], symbols[1])
            ranks[pair] = len(merges)
            merges.append(pair)
            add(pair[0] + pair[1])
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)


@dataclass
class TinyPipelineSpec:
    """Sizes of a tiny SD-architecture pipeline (defaults: ~1M-parameter UNet, 32 px images)."""

    words: list[str] = field(default_factory=lambda: ["a", "red", "blue", "circle", "square"])
    image_size: int = 32
    vae_channels: tuple[int, ...] = (16, 32)  # len - 1 halvings: 32 px -> 16x16 latents
    latent_channels: int = 4
    vae_scaling_factor: float = 1.0
    unet_channels: tuple[int, ...] = (32, 64)
    layers_per_block: int = 1
    attention_head_dim: int = 8
    norm_num_groups: int = 8
    text_hidden_size: int = 32
    text_layers: int = 2
    text_heads: int = 2
    max_length: int = 16
    prediction_type: str = "epsilon"
    num_train_timesteps: int = 1000
    linear_projection: bool = False  # SD 2.x and SDXL use linear projections in their transformers
    addition_time_embed_dim: int = 8  # SDXL only: embedding width of each of the 6 size ids

    @property
    def latent_size(self) -> int:
        return self.image_size // 2 ** (len(self.vae_channels) - 1)


def build_tiny_pipeline(spec: TinyPipelineSpec | None = None, seed: int = 0) -> StableDiffusionPipeline:
    """Assemble a randomly initialised ``StableDiffusionPipeline`` from ``spec``.

    With ``prediction_type="v_prediction"`` and ``linear_projection=True`` it has
    the shape of SD 2.x (768-v) in miniature.
    """
    import torch
    from diffusers import StableDiffusionPipeline

    spec = spec or TinyPipelineSpec()
    tokenizer = build_word_tokenizer(spec.words, spec.max_length)
    torch.manual_seed(seed)
    unet = _unet(spec, cross_attention_dim=spec.text_hidden_size)
    vae = _vae(spec)
    text_encoder = _text_encoder(spec, tokenizer)
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=_scheduler(spec),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build_tiny_sdxl_pipeline(
    spec: TinyPipelineSpec | None = None, seed: int = 0
) -> StableDiffusionXLPipeline:
    """Assemble a randomly initialised ``StableDiffusionXLPipeline`` from ``spec``.

    As in SDXL: two CLIP text encoders (the second with a projection, whose
    pooled output is ``text_embeds``), a UNet conditioned on both encoders'
    hidden states side by side and with ``addition_embed_type="text_time"``
    (6 size ids embedded with ``addition_time_embed_dim`` each, plus the pooled
    projection), and ``force_zeros_for_empty_prompt``.
    """
    import torch
    from diffusers import StableDiffusionXLPipeline

    spec = spec or TinyPipelineSpec()
    tokenizer = build_word_tokenizer(spec.words, spec.max_length)
    tokenizer_2 = build_word_tokenizer(spec.words, spec.max_length)
    torch.manual_seed(seed)
    unet = _unet(
        spec,
        cross_attention_dim=2 * spec.text_hidden_size,
        addition_embed_type="text_time",
        addition_time_embed_dim=spec.addition_time_embed_dim,
        projection_class_embeddings_input_dim=6 * spec.addition_time_embed_dim + spec.text_hidden_size,
    )
    vae = _vae(spec)
    text_encoder = _text_encoder(spec, tokenizer)
    text_encoder_2 = _text_encoder(spec, tokenizer_2, projection=True)
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=_scheduler(spec),
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )


def _unet(spec: TinyPipelineSpec, **extra: Any) -> UNet2DConditionModel:
    from diffusers import UNet2DConditionModel

    n_unet = len(spec.unet_channels)
    return UNet2DConditionModel(
        sample_size=spec.latent_size,
        in_channels=spec.latent_channels,
        out_channels=spec.latent_channels,
        block_out_channels=spec.unet_channels,
        layers_per_block=spec.layers_per_block,
        down_block_types=("CrossAttnDownBlock2D",) * (n_unet - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n_unet - 1),
        attention_head_dim=spec.attention_head_dim,
        norm_num_groups=spec.norm_num_groups,
        use_linear_projection=spec.linear_projection,
        **extra,
    )


def _vae(spec: TinyPipelineSpec) -> AutoencoderKL:
    from diffusers import AutoencoderKL

    n_vae = len(spec.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=spec.vae_channels,
        down_block_types=("DownEncoderBlock2D",) * n_vae,
        up_block_types=("UpDecoderBlock2D",) * n_vae,
        latent_channels=spec.latent_channels,
        sample_size=spec.image_size,
        norm_num_groups=spec.norm_num_groups,
        scaling_factor=spec.vae_scaling_factor,
    )


def _text_encoder(spec: TinyPipelineSpec, tokenizer: CLIPTokenizer, projection: bool = False) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=len(tokenizer.get_vocab()),
        hidden_size=spec.text_hidden_size,
        intermediate_size=spec.text_hidden_size * 4,
        num_hidden_layers=spec.text_layers,
        num_attention_heads=spec.text_heads,
        max_position_embeddings=spec.max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        projection_dim=spec.text_hidden_size,
    )
    return CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)


def _scheduler(spec: TinyPipelineSpec) -> Any:
    from diffusers import DDPMScheduler, DPMSolverMultistepScheduler

    train_scheduler = DDPMScheduler(
        num_train_timesteps=spec.num_train_timesteps,
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        prediction_type=spec.prediction_type,
        clip_sample=False,
        steps_offset=1,
    )
    return DPMSolverMultistepScheduler.from_config(train_scheduler.config)
