"""Build real, tiny flow-matching pipelines (SD3, FLUX.1 and Sana) offline, from configs only.

Tests need the exact classes users run on SD3.5 or FLUX.1 (same
``save_pretrained`` layout, same loader, same ``encode_prompt`` and sampler)
without downloading anything. The CLIP tokenizers are the word-level ones of
:mod:`spin_diffusion.model.tiny`; T5's tokenizer is a word-level ``tokenizers``
model wrapped in ``T5TokenizerFast`` (no sentencepiece file is needed).
Sizes are settings, and SD3 can be built without its T5 encoder
(``StableDiffusion3Pipeline`` accepts ``text_encoder_3=None``), which is the
smallest flow-matching text-to-image model diffusers runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from spin_diffusion.model.tiny import TinyPipelineSpec, build_word_tokenizer

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, FluxPipeline, StableDiffusion3Pipeline


@dataclass
class TinyFlowSpec:
    """Sizes of a tiny flow-matching pipeline (defaults: 32 px images, 16-channel 16x16 latents)."""

    words: list[str] = field(default_factory=lambda: ["a", "red", "blue", "green", "circle", "square"])
    image_size: int = 32
    vae_channels: tuple[int, ...] = (16, 32)  # len - 1 halvings: 32 px -> 16x16 latents
    latent_channels: int = 16
    vae_scaling_factor: float = 1.5305  # SD3's values; FLUX.1's are 0.3611 / 0.1159
    vae_shift_factor: float = 0.0609
    patch_size: int = 2  # SD3's patch size (FLUX packs 2x2 itself)
    num_layers: int = 2
    num_single_layers: int = 1  # FLUX only
    attention_head_dim: int = 8
    num_attention_heads: int = 2
    clip_hidden_size: int = 16
    clip_layers: int = 1
    clip_max_length: int = 16
    t5: bool = True
    t5_hidden_size: int = 32
    t5_layers: int = 1
    scheduler_shift: float = 3.0  # SD3.5's shift; FLUX.1 uses resolution-dependent shifting instead
    guidance_embeds: bool = False  # FLUX.1-dev: True (guidance-distilled)

    @property
    def latent_size(self) -> int:
        return self.image_size // 2 ** (len(self.vae_channels) - 1)


def build_t5_tokenizer(words: list[str], max_length: int = 32) -> Any:
    """A ``T5TokenizerFast`` whose Unigram vocabulary spells each of ``words`` as one piece, built from text.

    T5's own layout (``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2, ``▁``-prefixed
    pieces, ``</s>`` appended); it saves and loads as an ordinary T5 tokenizer.
    """
    from transformers import T5TokenizerFast

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [(f"▁{w}", -1.0) for w in sorted({w.lower() for w in words if w})]
    return T5TokenizerFast(vocab=vocab, extra_ids=0, model_max_length=max_length)


def _clip_pair(spec: TinyFlowSpec, projection: bool = True) -> tuple[Any, Any, Any, Any]:
    """Two CLIP text encoders (with projections: SD3's CLIP-L and CLIP-G in miniature) and tokenizers."""
    from spin_diffusion.model.tiny import _text_encoder

    clip = TinyPipelineSpec(
        words=spec.words,
        text_hidden_size=spec.clip_hidden_size,
        text_layers=spec.clip_layers,
        max_length=spec.clip_max_length,
    )
    tok1 = build_word_tokenizer(spec.words, spec.clip_max_length)
    tok2 = build_word_tokenizer(spec.words, spec.clip_max_length)
    return (
        _text_encoder(clip, tok1, projection=projection),
        tok1,
        _text_encoder(clip, tok2, projection=projection),
        tok2,
    )


def _t5(spec: TinyFlowSpec) -> tuple[Any, Any]:
    from transformers import T5Config, T5EncoderModel

    tokenizer = build_t5_tokenizer(spec.words)
    config = T5Config(
        vocab_size=len(tokenizer.get_vocab()),
        d_model=spec.t5_hidden_size,
        d_kv=8,
        d_ff=spec.t5_hidden_size * 2,
        num_layers=spec.t5_layers,
        num_heads=2,
        relative_attention_num_buckets=8,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    return T5EncoderModel(config).eval(), tokenizer  # eval, as from_pretrained gives it (T5 has dropout)


def _vae(spec: TinyFlowSpec) -> AutoencoderKL:
    from diffusers import AutoencoderKL

    n = len(spec.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=spec.vae_channels,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        latent_channels=spec.latent_channels,
        sample_size=spec.image_size,
        norm_num_groups=8,
        scaling_factor=spec.vae_scaling_factor,
        shift_factor=spec.vae_shift_factor,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )


def build_tiny_sd3_pipeline(spec: TinyFlowSpec | None = None, seed: int = 0) -> StableDiffusion3Pipeline:
    """A randomly initialised ``StableDiffusion3Pipeline`` (SD3/SD3.5 in miniature), T5 optional."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    spec = spec or TinyFlowSpec()
    torch.manual_seed(seed)
    enc1, tok1, enc2, tok2 = _clip_pair(spec)
    enc3, tok3 = _t5(spec) if spec.t5 else (None, None)
    inner = spec.num_attention_heads * spec.attention_head_dim
    transformer = SD3Transformer2DModel(
        sample_size=spec.latent_size,
        patch_size=spec.patch_size,
        in_channels=spec.latent_channels,
        out_channels=spec.latent_channels,
        num_layers=spec.num_layers,
        attention_head_dim=spec.attention_head_dim,
        num_attention_heads=spec.num_attention_heads,
        joint_attention_dim=spec.t5_hidden_size,  # CLIP states are zero-padded to T5's width
        caption_projection_dim=inner,
        pooled_projection_dim=2 * spec.clip_hidden_size,
        pos_embed_max_size=spec.latent_size,
    )
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=spec.scheduler_shift),
        vae=_vae(spec),
        text_encoder=enc1,
        tokenizer=tok1,
        text_encoder_2=enc2,
        tokenizer_2=tok2,
        text_encoder_3=enc3,
        tokenizer_3=tok3,
    )


def build_tiny_flux_pipeline(spec: TinyFlowSpec | None = None, seed: int = 0) -> FluxPipeline:
    """A randomly initialised ``FluxPipeline`` (FLUX.1 in miniature): CLIP pooled + T5, dynamic shifting.

    ``spec.guidance_embeds`` makes it FLUX.1-dev-like (guidance-distilled: a
    guidance value is embedded instead of classifier-free guidance).
    """
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    spec = spec or TinyFlowSpec(vae_scaling_factor=0.3611, vae_shift_factor=0.1159)
    torch.manual_seed(seed)
    enc1, tok1, _, _ = _clip_pair(spec, projection=False)  # FLUX reads CLIP's pooler_output
    enc2, tok2 = _t5(spec)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=4 * spec.latent_channels,
        num_layers=spec.num_layers,
        num_single_layers=spec.num_single_layers,
        attention_head_dim=spec.attention_head_dim,
        num_attention_heads=spec.num_attention_heads,
        joint_attention_dim=spec.t5_hidden_size,
        pooled_projection_dim=spec.clip_hidden_size,
        guidance_embeds=spec.guidance_embeds,
        axes_dims_rope=(2, 2, 4),  # sums to attention_head_dim
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=1.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=16,
        max_image_seq_len=256,
    )
    return FluxPipeline(
        transformer=transformer,
        scheduler=scheduler,
        vae=_vae(spec),
        text_encoder=enc1,
        tokenizer=tok1,
        text_encoder_2=enc2,
        tokenizer_2=tok2,
    )


def build_char_gemma_tokenizer(max_length: int = 300) -> Any:
    """A ``GemmaTokenizer`` over single characters (lower-case letters, digits, punctuation), built offline."""
    import string

    from transformers import GemmaTokenizer

    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<mask>": 4, "\u2581": 5}
    for ch in string.ascii_lowercase + string.digits + ".,:;'\"-!?()":
        vocab.setdefault(ch, len(vocab))
    tokenizer = GemmaTokenizer(vocab=vocab, merges=[], model_max_length=max_length)
    tokenizer.padding_side = "right"  # as Sana's pipeline pads its prompts
    return tokenizer


def build_tiny_sana_pipeline(seed: int = 0, latent_channels: int = 8) -> Any:
    """A randomly initialised ``SanaPipeline`` in miniature: Gemma-2, a two-block DC-AE (2x down), a one-layer
    linear-attention transformer, and Sana's DPM-Solver flow sampler with ``flow_shift`` 3."""
    import torch
    from diffusers import AutoencoderDC, DPMSolverMultistepScheduler, SanaPipeline, SanaTransformer2DModel
    from transformers import Gemma2Config, Gemma2Model

    tokenizer = build_char_gemma_tokenizer()
    torch.manual_seed(seed)
    text_encoder = Gemma2Model(
        Gemma2Config(
            head_dim=8,
            hidden_size=16,
            intermediate_size=32,
            num_attention_heads=2,
            num_hidden_layers=1,
            num_key_value_heads=1,
            vocab_size=len(tokenizer.get_vocab()),
            max_position_embeddings=2048,
            pad_token_id=0,
            bos_token_id=2,
            eos_token_id=1,
        )
    ).eval()
    transformer = SanaTransformer2DModel(
        patch_size=1,
        in_channels=latent_channels,
        out_channels=latent_channels,
        num_layers=1,
        num_attention_heads=2,
        attention_head_dim=8,
        num_cross_attention_heads=2,
        cross_attention_head_dim=8,
        cross_attention_dim=16,
        caption_channels=16,
        sample_size=16,
    )
    vae = AutoencoderDC(
        in_channels=3,
        latent_channels=latent_channels,
        attention_head_dim=4,
        encoder_block_types=("ResBlock", "EfficientViTBlock"),
        decoder_block_types=("ResBlock", "EfficientViTBlock"),
        encoder_block_out_channels=(8, 8),
        decoder_block_out_channels=(8, 8),
        encoder_qkv_multiscales=((), (5,)),
        decoder_qkv_multiscales=((), (5,)),
        encoder_layers_per_block=(1, 1),
        decoder_layers_per_block=(1, 1),
        downsample_block_type="conv",
        upsample_block_type="interpolate",
        decoder_norm_types="rms_norm",
        decoder_act_fns="silu",
        scaling_factor=0.41407,
    )
    scheduler = DPMSolverMultistepScheduler(
        flow_shift=3.0, use_flow_sigmas=True, prediction_type="flow_prediction"
    )
    return SanaPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler
    )
