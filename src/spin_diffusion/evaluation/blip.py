"""BLIP's image and multimodal text encoders in plain torch, with the ImageReward checkpoint's module names.

The layouts (ViT pre-LN, BLIP's "MED" BERT with cross-attention) are described in
:mod:`spin_diffusion.evaluation.imagereward`, which assembles them into the reward model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

HEAD_WIDTH = 64


@dataclass
class ImageRewardSpec:
    """Sizes of the BLIP reward model; defaults are the released ViT-L/16 + BERT-base."""

    image_size: int = 224
    patch_size: int = 16
    vision_width: int = 1024
    vision_layers: int = 24
    vision_heads: int = 16
    vision_mlp: int = 4096
    vocab_size: int = 30524
    text_width: int = 768
    text_layers: int = 12
    text_heads: int = 12
    text_mlp: int = 3072
    max_positions: int = 512
    mlp_dims: tuple[int, ...] = (1024, 128, 64, 16, 1)


# ---------------------------------------------------------------- vision encoder
class _VitAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = nn.functional.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class _VitMlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(nn.functional.gelu(self.fc1(x)))


class _VitBlock(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = _VitAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = _VitMlp(dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class VisionEncoder(nn.Module):
    """BLIP's ViT: returns every token's final state [B, 1 + patches, width]."""

    def __init__(self, spec: ImageRewardSpec):
        super().__init__()
        grid = spec.image_size // spec.patch_size
        self.patch_embed = _PatchEmbed(spec.patch_size, spec.vision_width)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, spec.vision_width))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, spec.vision_width))
        self.blocks = nn.ModuleList(
            _VitBlock(spec.vision_width, spec.vision_heads, spec.vision_mlp)
            for _ in range(spec.vision_layers)
        )
        self.norm = nn.LayerNorm(spec.vision_width, eps=1e-6)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(pixels)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self.pos_embed[:, : x.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


# ------------------------------------------------------------------ text encoder
class _BertEmbeddings(nn.Module):
    def __init__(self, spec: ImageRewardSpec):
        super().__init__()
        self.word_embeddings = nn.Embedding(spec.vocab_size, spec.text_width)
        self.position_embeddings = nn.Embedding(spec.max_positions, spec.text_width)
        self.LayerNorm = nn.LayerNorm(spec.text_width, eps=1e-12)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(ids.shape[1], device=ids.device)
        return self.LayerNorm(self.word_embeddings(ids) + self.position_embeddings(pos)[None])


class _BertSelfAttention(nn.Module):
    def __init__(self, width: int, heads: int, kv_width: int):
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(kv_width, width)
        self.value = nn.Linear(kv_width, width)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.view(b, n, self.heads, c // self.heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, context: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        q, k, v = self._split(self.query(x)), self._split(self.key(context)), self._split(self.value(context))
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        if bias is not None:
            scores = scores + bias
        out = scores.softmax(-1) @ v
        return out.transpose(1, 2).reshape(x.shape)


class _BertSelfOutput(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.dense = nn.Linear(width, width)
        self.LayerNorm = nn.LayerNorm(width, eps=1e-12)

    def forward(self, h: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(h) + residual)


class _BertAttention(nn.Module):
    def __init__(self, width: int, heads: int, kv_width: int):
        super().__init__()
        self.self = _BertSelfAttention(width, heads, kv_width)
        self.output = _BertSelfOutput(width)

    def forward(self, x: torch.Tensor, context: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return self.output(self.self(x, context, bias), x)


class _BertIntermediate(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.dense = nn.Linear(width, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.gelu(self.dense(x))


class _BertOutput(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.dense = nn.Linear(hidden, width)
        self.LayerNorm = nn.LayerNorm(width, eps=1e-12)

    def forward(self, h: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(h) + residual)


class _BertLayer(nn.Module):
    def __init__(self, spec: ImageRewardSpec):
        super().__init__()
        self.attention = _BertAttention(spec.text_width, spec.text_heads, spec.text_width)
        self.crossattention = _BertAttention(spec.text_width, spec.text_heads, spec.vision_width)
        self.intermediate = _BertIntermediate(spec.text_width, spec.text_mlp)
        self.output = _BertOutput(spec.text_width, spec.text_mlp)

    def forward(self, x: torch.Tensor, text_bias: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        x = self.attention(x, x, text_bias)
        x = self.crossattention(x, image, None)  # every image token is attended to
        return self.output(self.intermediate(x), x)


class _BertEncoder(nn.Module):
    def __init__(self, spec: ImageRewardSpec):
        super().__init__()
        self.layer = nn.ModuleList(_BertLayer(spec) for _ in range(spec.text_layers))


class TextEncoder(nn.Module):
    """BLIP's multimodal BERT encoder (no pooler): returns every token's final state."""

    def __init__(self, spec: ImageRewardSpec):
        super().__init__()
        self.embeddings = _BertEmbeddings(spec)
        self.encoder = _BertEncoder(spec)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, image_states: torch.Tensor) -> torch.Tensor:
        # Padding tokens get -10000 added to their attention logits, as in BLIP.
        bias = (1.0 - mask[:, None, None, :].to(image_states.dtype)) * -10000.0
        x = self.embeddings(ids)
        for layer in self.encoder.layer:
            x = layer(x, bias, image_states)
        return x


class Blip(nn.Module):
    """The two encoders under the checkpoint's ``blip.`` prefix."""

    def __init__(self, spec: ImageRewardSpec):
        super().__init__()
        self.visual_encoder = VisionEncoder(spec)
        self.text_encoder = TextEncoder(spec)
