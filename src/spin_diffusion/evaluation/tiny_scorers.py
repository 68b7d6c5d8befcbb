"""Tiny random versions of every scorer's checkpoint, saved the way the real ones are laid out.

No weights can be downloaded here, so tests (and anyone wiring the harness
into a pipeline) build these offline in a second and load them through the
real loaders: a CLIPModel directory (PickScore, aesthetic CLIP, FID features),
an HPS ``.pt`` holding ``{"state_dict": open_clip keys}``, an ``ImageReward.pt``
with BLIP keys plus a BERT ``vocab.txt``, and an aesthetic ``.pth`` MLP.
The scores are meaningless; the code paths are the real ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from transformers import CLIPTokenizer

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
DEFAULT_WORDS = (
    "a",
    "photo",
    "of",
    "red",
    "blue",
    "green",
    "small",
    "big",
    "circle",
    "square",
    "triangle",
    "on",
    "the",
    "left",
    "right",
    "top",
    "bottom",
    "and",
    "cat",
    "dog",
)


def word_clip_tokenizer(
    words: list[str] | tuple[str, ...] = DEFAULT_WORDS, max_length: int = 16
) -> CLIPTokenizer:
    """A CLIP BPE tokenizer that spells each word as one token, with BOS/EOS as the *last* ids.

    Real CLIP puts <|startoftext|>/<|endoftext|> at the top of the vocabulary (49406/49407),
    which open_clip relies on (it pools at ``argmax(token id)``); this keeps that property.
    """
    from transformers import CLIPTokenizer

    vocab: dict[str, int] = {}
    merges: list[tuple[str, str]] = []
    for word in sorted({w.lower() for w in words if w}):
        symbols = [*word[:-1], word[-1] + "</w>"]
        for s in symbols:
            vocab.setdefault(s, len(vocab))
        current = symbols[0]
        for s in symbols[1:]:
            if (current, s) not in merges:
                merges.append((current, s))
            current += s
            vocab.setdefault(current, len(vocab))
    vocab.setdefault(BOS, len(vocab))
    vocab.setdefault(EOS, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)


def save_tiny_clip(
    out_dir: str | Path,
    *,
    seed: int = 0,
    image_size: int = 32,
    patch_size: int = 8,
    width: int = 32,
    projection_dim: int = 16,
    logit_scale: float = 4.6052,
) -> Path:
    """A random ``CLIPModel`` + tokenizer + PIL image processor saved with ``save_pretrained``."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    try:
        from transformers import CLIPImageProcessorPil as Processor
    except ImportError:
        from transformers import CLIPImageProcessor as Processor

    out = Path(out_dir)
    tok = word_clip_tokenizer()
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config={
            "vocab_size": len(tok.get_vocab()),
            "hidden_size": width,
            "intermediate_size": width * 2,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": tok.model_max_length,
            "eos_token_id": tok.eos_token_id,
            "bos_token_id": tok.bos_token_id,
            "pad_token_id": tok.pad_token_id,
        },
        vision_config={
            "hidden_size": width,
            "intermediate_size": width * 2,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": image_size,
            "patch_size": patch_size,
        },
        projection_dim=projection_dim,
        logit_scale_init_value=logit_scale,
    )
    model = CLIPModel(config).eval()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    Processor(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        do_center_crop=True,
    ).save_pretrained(out)
    return out


def tiny_openclip_state_dict(
    *,
    seed: int = 0,
    vocab_size: int,
    context_length: int = 16,
    image_size: int = 32,
    patch_size: int = 8,
    vision_width: int = 160,
    vision_layers: int = 2,
    text_width: int = 128,
    text_layers: int = 2,
    embed_dim: int = 32,
) -> dict[str, torch.Tensor]:
    """Random weights under open_clip's ViT key names (widths fit head widths 80/64)."""
    import torch

    g = torch.Generator().manual_seed(seed)

    def rnd(*shape: int, scale: float = 0.05) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * scale

    def ln(prefix: str, w: int, sd: dict[str, torch.Tensor]) -> None:
        sd[f"{prefix}.weight"] = 1.0 + rnd(w, scale=0.1)
        sd[f"{prefix}.bias"] = rnd(w, scale=0.1)

    def blocks(prefix: str, w: int, n: int, sd: dict[str, torch.Tensor]) -> None:
        for i in range(n):
            p = f"{prefix}.{i}"
            ln(f"{p}.ln_1", w, sd)
            sd[f"{p}.attn.in_proj_weight"] = rnd(3 * w, w, scale=w**-0.5)
            sd[f"{p}.attn.in_proj_bias"] = rnd(3 * w)
            sd[f"{p}.attn.out_proj.weight"] = rnd(w, w, scale=w**-0.5)
            sd[f"{p}.attn.out_proj.bias"] = rnd(w)
            ln(f"{p}.ln_2", w, sd)
            sd[f"{p}.mlp.c_fc.weight"] = rnd(4 * w, w, scale=w**-0.5)
            sd[f"{p}.mlp.c_fc.bias"] = rnd(4 * w)
            sd[f"{p}.mlp.c_proj.weight"] = rnd(w, 4 * w, scale=(4 * w) ** -0.5)
            sd[f"{p}.mlp.c_proj.bias"] = rnd(w)

    grid = image_size // patch_size
    sd: dict[str, torch.Tensor] = {
        "visual.class_embedding": rnd(vision_width, scale=0.5),
        "visual.positional_embedding": rnd(grid * grid + 1, vision_width, scale=0.5),
        "visual.conv1.weight": rnd(vision_width, 3, patch_size, patch_size, scale=0.2),
        "visual.proj": rnd(vision_width, embed_dim, scale=vision_width**-0.5),
        "token_embedding.weight": rnd(vocab_size, text_width, scale=0.5),
        "positional_embedding": rnd(context_length, text_width, scale=0.1),
        "text_projection": rnd(text_width, embed_dim, scale=text_width**-0.5),
        "logit_scale": torch.tensor(4.6052),
        "attn_mask": torch.full((context_length, context_length), float("-inf")).triu(1),
    }
    ln("visual.ln_pre", vision_width, sd)
    ln("visual.ln_post", vision_width, sd)
    ln("ln_final", text_width, sd)
    blocks("visual.transformer.resblocks", vision_width, vision_layers, sd)
    blocks("transformer.resblocks", text_width, text_layers, sd)
    return sd


def save_tiny_hps(out_dir: str | Path, *, seed: int = 0) -> tuple[Path, Path]:
    """``(checkpoint.pt, tokenizer_dir)`` in the HPS release layout (``{"state_dict": ...}``)."""
    import torch

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = word_clip_tokenizer()
    tok_dir = out / "tokenizer"
    tok.save_pretrained(tok_dir)
    sd = tiny_openclip_state_dict(
        seed=seed, vocab_size=len(tok.get_vocab()), context_length=tok.model_max_length
    )
    ckpt = out / "HPS_v2_compressed.pt"
    torch.save({"state_dict": sd}, ckpt)
    return ckpt, tok_dir


def save_tiny_bert_tokenizer(out_dir: str | Path, words: tuple[str, ...] = DEFAULT_WORDS) -> Path:
    """A word-level bert-base-uncased style tokenizer dir (just ``vocab.txt``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(set(words))]
    (out / "vocab.txt").write_text("\n".join(tokens) + "\n")  # bert-base-uncased's minimal layout
    return out


def save_tiny_imagereward(out_dir: str | Path, *, seed: int = 0) -> tuple[Path, Path]:
    """``(ImageReward.pt, tokenizer_dir)``: random BLIP weights under the release's key names."""
    import torch

    from spin_diffusion.evaluation.imagereward import ImageRewardModel, ImageRewardSpec

    out = Path(out_dir)
    tok_dir = save_tiny_bert_tokenizer(out / "bert-tokenizer")
    n_vocab = len(DEFAULT_WORDS) + 5 + 2  # words, BERT specials, BLIP's [DEC] and [ENC]
    spec = ImageRewardSpec(
        image_size=32,
        patch_size=8,
        vision_width=64,
        vision_layers=2,
        vision_heads=1,
        vision_mlp=128,
        vocab_size=n_vocab,
        text_width=64,
        text_layers=2,
        text_heads=1,
        text_mlp=128,
        max_positions=40,
        mlp_dims=(32, 16, 8, 4, 1),
    )
    torch.manual_seed(seed)
    model = ImageRewardModel(spec)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():  # non-trivial LayerNorms/biases so every weight matters
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    state = dict(model.state_dict())
    # Parts of BLIP_Pretrain that the released file also holds and scoring does not use.
    state["blip.vision_proj.weight"] = torch.randn(16, spec.vision_width, generator=g)
    state["blip.vision_proj.bias"] = torch.zeros(16)
    state["blip.text_proj.weight"] = torch.randn(16, spec.text_width, generator=g)
    state["blip.text_proj.bias"] = torch.zeros(16)
    state["blip.text_encoder.embeddings.position_ids"] = torch.arange(spec.max_positions)[None]
    ckpt = out / "ImageReward.pt"
    torch.save(state, ckpt)
    return ckpt, tok_dir


def save_tiny_aesthetic(out_dir: str | Path, *, seed: int = 0, input_size: int = 16) -> Path:
    """A random aesthetic MLP ``.pth`` (keys ``layers.{0,2,4,6,7}``) for a ``input_size``-d CLIP."""
    import torch

    from spin_diffusion.evaluation.aesthetic import build_aesthetic_mlp

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    mlp = build_aesthetic_mlp(input_size, (32, 16, 8, 4, 1))
    path = out / "aesthetic_mlp.pth"
    torch.save({f"layers.{k}": v for k, v in mlp.state_dict().items()}, path)
    return path
