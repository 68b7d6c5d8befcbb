"""The real architectures, built offline from their published configurations with random weights.

For benchmarks only (not for users): what a user's GPU must hold and how the
cost splits depend on the architecture, not on the weights. The dictionaries
below are the published ``config.json`` files of the hub repositories named
above each, reduced to the keys that shape the network (every other key is
the diffusers/transformers default, as in those files):

- SD-1.5: ``stable-diffusion-v1-5/stable-diffusion-v1-5`` (``unet/``, ``vae/``, ``text_encoder/``
  = OpenAI CLIP ViT-L/14), UNet 859,520,964 parameters.
- SD-2.1: ``stabilityai/stable-diffusion-2-1`` (768-v: ``prediction_type: v_prediction``; text
  encoder = OpenCLIP ViT-H/14's text tower, 23 of its 24 layers as the pipeline uses them).
- SDXL: ``stabilityai/stable-diffusion-xl-base-1.0`` (``unet/``, ``text_encoder/`` CLIP ViT-L,
  ``text_encoder_2/`` OpenCLIP ViT-bigG with projection, ``vae/``), UNet 2,567,463,684 parameters.
- SD3.5-medium: ``stabilityai/stable-diffusion-3.5-medium`` (``transformer/`` MMDiT-X, 16-channel
  ``vae/``, CLIP-L, CLIP-G, T5-XXL encoder).
- FLUX.1-dev: ``black-forest-labs/FLUX.1-dev`` (``transformer/``, 16-channel ``vae/``, CLIP-L, T5-XXL).

``width_divisor`` d > 1 builds the same architecture (same blocks, depths and
layer types) with every channel width divided by d, so parameters shrink about
d^2: how the code is checked on a shared CPU before the full size is run
(d = 1). The tokenizers have the real sizes: CLIP's BPE (49,408 tokens) from
the vocabulary file the ``open_clip_torch`` wheel ships when one is at hand,
else a synthetic BPE of the same size; a T5-size (32,128) unigram tokenizer.
"""

from __future__ import annotations

import gzip
import itertools
import os
import zipfile
from pathlib import Path
from typing import Any

CLIP_VOCAB_SIZE = 49408
T5_VOCAB_SIZE = 32128

# ----------------------------------------------------------------------------- published configs

SD15_UNET = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "down_block_types": [
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "attention_head_dim": 8,
    "cross_attention_dim": 768,
    "norm_num_groups": 32,
}
SD21_UNET = {
    **SD15_UNET,
    "sample_size": 96,
    "attention_head_dim": [5, 10, 20, 20],
    "cross_attention_dim": 1024,
    "use_linear_projection": True,
    "upcast_attention": True,
}
SDXL_UNET = {
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": [320, 640, 1280],
    "layers_per_block": 2,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "attention_head_dim": [5, 10, 20],
    "transformer_layers_per_block": [1, 2, 10],
    "cross_attention_dim": 2048,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,  # 6 size ids x 256 + the pooled 1280
    "norm_num_groups": 32,
}
SD_VAE = {  # SD-1.5, SD-2.1 and SDXL share the architecture; SDXL's scaling factor is 0.13025
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "scaling_factor": 0.18215,
}
FLOW_VAE = {**SD_VAE, "latent_channels": 16, "use_quant_conv": False, "use_post_quant_conv": False}
SD35_VAE = {**FLOW_VAE, "scaling_factor": 1.5305, "shift_factor": 0.0609}
FLUX_VAE = {**FLOW_VAE, "scaling_factor": 0.3611, "shift_factor": 0.1159}
CLIP_L = {  # openai/clip-vit-large-patch14's text tower
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
}
OPENCLIP_H = {  # SD-2.1's text_encoder/config.json (OpenCLIP ViT-H/14, penultimate layer: 23 layers)
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 23,
    "num_attention_heads": 16,
    "hidden_act": "gelu",
    "projection_dim": 512,
}
OPENCLIP_BIGG = {  # SDXL's text_encoder_2/config.json (OpenCLIP ViT-bigG/14)
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_hidden_layers": 32,
    "num_attention_heads": 20,
    "hidden_act": "gelu",
    "projection_dim": 1280,
}
T5_XXL = {  # google/t5-v1_1-xxl encoder, as SD3/SD3.5 text_encoder_3 and FLUX.1 text_encoder_2
    "d_model": 4096,
    "d_ff": 10240,
    "d_kv": 64,
    "num_heads": 64,
    "num_layers": 24,
    "feed_forward_proj": "gated-gelu",
    "vocab_size": T5_VOCAB_SIZE,
}
SD35_MEDIUM_TRANSFORMER = {
    "sample_size": 128,
    "patch_size": 2,
    "in_channels": 16,
    "out_channels": 16,
    "num_layers": 24,
    "attention_head_dim": 64,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "caption_projection_dim": 1536,
    "pooled_projection_dim": 2048,
    "pos_embed_max_size": 384,
    "qk_norm": "rms_norm",
    "dual_attention_layers": list(range(13)),
}
FLUX1_DEV_TRANSFORMER = {
    "patch_size": 1,
    "in_channels": 64,
    "num_layers": 19,
    "num_single_layers": 38,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "pooled_projection_dim": 768,
    "guidance_embeds": True,
    "axes_dims_rope": [16, 56, 56],
}

#: the architectures by name: (pipeline class, published sample size in latents)
ARCHITECTURES = ("sd15", "sd21", "sdxl", "sd35-medium", "flux1-dev")
UNET_ARCHITECTURES = ("sd15", "sd21", "sdxl")


# ----------------------------------------------------------------------------- narrowing


def _div(value: int, d: int, multiple: int = 1) -> int:
    """``value / d``, refused unless it stays a whole multiple of ``multiple`` (groups, heads)."""
    out, rest = divmod(value, d)
    if rest or out % multiple:
        raise ValueError(f"width divisor {d} does not divide {value} into a multiple of {multiple}")
    return out


def narrowed_unet(config: dict[str, Any], d: int, sample_size: int | None = None) -> dict[str, Any]:
    """A UNet config with channel widths divided by ``d`` (groups and text widths with them)."""
    out = dict(config)
    groups = _div(config["norm_num_groups"], d)
    out["norm_num_groups"] = groups
    out["block_out_channels"] = [_div(c, d, groups) for c in config["block_out_channels"]]
    out["cross_attention_dim"] = _div(config["cross_attention_dim"], d)
    if "addition_time_embed_dim" in config:
        out["addition_time_embed_dim"] = _div(config["addition_time_embed_dim"], d)
        out["projection_class_embeddings_input_dim"] = _div(
            config["projection_class_embeddings_input_dim"], d
        )
    if isinstance(config["attention_head_dim"], list):  # diffusers reads these as head counts
        heads = config["attention_head_dim"]
        for c, h in zip(out["block_out_channels"], heads, strict=False):
            _div(c, h)
    if sample_size is not None:
        out["sample_size"] = sample_size
    return out


def narrowed_clip(config: dict[str, Any], d: int) -> dict[str, Any]:
    out = dict(config)
    out["hidden_size"] = _div(config["hidden_size"], d, config["num_attention_heads"])
    out["intermediate_size"] = _div(config["intermediate_size"], d)
    out["projection_dim"] = _div(config["projection_dim"], d)
    return out


def narrowed_vae(config: dict[str, Any], d: int, sample_size: int) -> dict[str, Any]:
    groups = _div(config["norm_num_groups"], d)
    widths = [_div(c, d, groups) for c in config["block_out_channels"]]
    return {**config, "norm_num_groups": groups, "block_out_channels": widths, "sample_size": sample_size}


def narrowed_t5(config: dict[str, Any], d: int) -> dict[str, Any]:
    return {**config, "d_model": _div(config["d_model"], d), "d_ff": _div(config["d_ff"], d)}


def narrowed_transformer(config: dict[str, Any], d: int) -> dict[str, Any]:
    """An MMDiT/FLUX config with the head width divided by ``d`` (head count and depth kept)."""
    out = dict(config)
    out["attention_head_dim"] = _div(config["attention_head_dim"], d)
    out["joint_attention_dim"] = _div(config["joint_attention_dim"], d)
    out["pooled_projection_dim"] = _div(config["pooled_projection_dim"], d)
    if "caption_projection_dim" in config:
        out["caption_projection_dim"] = _div(config["caption_projection_dim"], d)
    if "axes_dims_rope" in config:
        out["axes_dims_rope"] = [_div(a, d) for a in config["axes_dims_rope"]]
    return out


# ----------------------------------------------------------------------------- tokenizers


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character map (the base of the BPE vocabulary)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    keep += list(range(ord("®"), ord("ÿ") + 1))
    chars, n = keep[:], 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    return dict(zip(keep, map(chr, chars), strict=True))


def clip_bpe_merges(source: str | Path | None) -> list[tuple[str, str]] | None:
    """CLIP's 48,894 BPE merges from ``bpe_simple_vocab_16e6.txt.gz`` (a file, or inside an open_clip wheel).

    ``None``: the file or wheel named by ``SPIN_BENCH_CLIP_BPE``, else an installed ``open_clip``
    package; None when there is no source.
    """
    raw: bytes | None = None
    if source is not None:
        path = Path(source)
        if path.suffix == ".whl":
            with zipfile.ZipFile(path) as wheel:
                name = next(n for n in wheel.namelist() if n.endswith("bpe_simple_vocab_16e6.txt.gz"))
                raw = wheel.read(name)
        else:
            raw = path.read_bytes()
    elif os.environ.get("SPIN_BENCH_CLIP_BPE"):
        return clip_bpe_merges(os.environ["SPIN_BENCH_CLIP_BPE"])
    else:
        import importlib.util

        spec = importlib.util.find_spec("open_clip")
        if spec is not None and spec.origin is not None:
            raw = (Path(spec.origin).parent / "bpe_simple_vocab_16e6.txt.gz").read_bytes()
    if raw is None:
        return None
    lines = gzip.decompress(raw).decode("utf-8").split("\n")
    return [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]  # as CLIP's simple_tokenizer reads it


def clip_tokenizer(bpe_source: str | Path | None = None) -> tuple[Any, str]:
    """A 49,408-token ``CLIPTokenizer`` (77 positions) and where its vocabulary came from.

    With CLIP's merges the vocabulary is CLIP's own (byte symbols, their ``</w>``
    forms, one token per merge, then the two special tokens): the ids match
    OpenAI's tokenizer. Without them, synthetic merges of the same count give
    the same embedding and sequence sizes, which is what memory and time depend on.
    """
    from transformers import CLIPTokenizer

    merges = clip_bpe_merges(bpe_source)
    origin = "CLIP BPE (open_clip's bpe_simple_vocab_16e6)"
    base = list(_bytes_to_unicode().values())
    if merges is None:
        origin = "synthetic BPE of CLIP's size (no open_clip vocabulary at hand)"
        letters = [c for c in base if c.isalpha()]
        pairs = [(a, b) for a in letters for b in letters]
        merges = pairs + [(a, b + "</w>") for a, b in pairs] + [(a + b, c) for a, b in pairs for c in letters]
        merges = merges[: CLIP_VOCAB_SIZE - 2 - 2 * len(base)]
    vocab_list = base + [v + "</w>" for v in base] + ["".join(m) for m in merges]
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(vocab_list))}
    tok = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77, pad_token="<|endoftext|>")
    return tok, origin


def t5_tokenizer(max_length: int = 256) -> Any:
    """A ``T5TokenizerFast`` with T5's vocabulary size (32,100 pieces + 28 unused ids), built offline.

    The pieces are synthetic (a unigram model over letter pairs); T5-XXL's
    embedding matrix is 32,128 rows either way, and prompts are padded to
    ``max_length`` (SD3: 256, FLUX.1-dev: 512), so memory and time are T5's.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import T5TokenizerFast

    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(c, -2.0) for c in letters]
    words = itertools.product(letters, repeat=4)
    pieces += [("▁" + "".join(w), -5.0) for w in itertools.islice(words, 32100 - len(pieces))]
    model = models.Unigram(pieces, unk_id=2, byte_fallback=False)
    backend = Tokenizer(model)
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    tok = T5TokenizerFast(tokenizer_object=backend, extra_ids=28, model_max_length=max_length)
    return tok
