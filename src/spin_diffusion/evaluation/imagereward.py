"""ImageReward (Xu et al., 2023), implemented here from its published architecture.

The ``image-reward`` package pins an old timm and does not import with
transformers 5, so the BLIP model it wraps is rebuilt in plain torch with the
checkpoint's module names (keys of ``ImageReward.pt``):

- ``blip.visual_encoder``: ViT (timm/BLIP layout: ``patch_embed.proj``, ``cls_token``,
  ``pos_embed``, ``blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}``, ``norm``),
  pre-LN, LayerNorm eps 1e-6, GELU; ViT-L/16 at 224 px in the release;
- ``blip.text_encoder``: BLIP's "MED" BERT (word + absolute position embeddings, no
  token types), each layer self-attention -> cross-attention to all image tokens ->
  feed-forward, post-LN eps 1e-12; bert-base in the release;
- ``mlp.layers``: 768-1024-128-64-16-1 linear layers with dropout, no activation.

reward = (mlp(text_output[:, 0]) - 0.16717362830052426) / 1.0333394966054072, the
published normalisation (scale of the paper's tables: ~0.8 for SD-1.5). Text is the
prompt tokenised by bert-base-uncased (+ the BLIP ``[DEC]``/``[ENC]`` special tokens),
padded to 35 tokens; images get ``Resize(224, bicubic)`` + ``CenterCrop(224)`` + CLIP
normalisation. Sizes (widths, depths, patch, image size) are read from the
checkpoint's shapes; head counts use head width 64 (ViT-L: 16 heads, BERT-base: 12).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from spin_diffusion.errors import CheckpointError
from spin_diffusion.evaluation.aesthetic import build_aesthetic_mlp
from spin_diffusion.evaluation.blip import HEAD_WIDTH, Blip, ImageRewardSpec
from spin_diffusion.evaluation.scorer_base import (
    CLIP_MEAN,
    CLIP_STD,
    BatchedScorer,
    load_torch_state,
    refuse_incomplete_load,
    require_dir,
    require_file,
    resize_shorter_center_crop,
    to_normalized_tensor,
)

if TYPE_CHECKING:
    from PIL import Image

REWARD_MEAN = 0.16717362830052426
REWARD_STD = 1.0333394966054072
TEXT_MAX_LENGTH = 35


class _RewardMlp(nn.Module):
    """ImageReward's head: the same layer layout as the aesthetic predictor's MLP."""

    def __init__(self, width: int, dims: tuple[int, ...]):
        super().__init__()
        self.layers = build_aesthetic_mlp(width, dims)


class ImageRewardModel(nn.Module):
    """BLIP visual + multimodal text encoder and the reward head; ``forward`` gives normalised rewards."""

    def __init__(self, spec: ImageRewardSpec | None = None):
        super().__init__()
        self.spec = spec or ImageRewardSpec()
        self.blip = Blip(self.spec)
        self.mlp = _RewardMlp(self.spec.text_width, self.spec.mlp_dims)

    def forward(self, pixels: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        image_states = self.blip.visual_encoder(pixels)
        text = self.blip.text_encoder(ids, mask, image_states)
        raw = self.mlp.layers(text[:, 0].float()).squeeze(-1)
        return (raw - REWARD_MEAN) / REWARD_STD


# ---------------------------------------------------------------------- loading
def _count(state: dict[str, torch.Tensor], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    ids = {int(m.group(1)) for k in state if (m := pattern.match(k))}
    if not ids:
        raise CheckpointError(f"ImageReward checkpoint has no {prefix}N weights")
    return max(ids) + 1


def spec_from_state_dict(state: dict[str, torch.Tensor]) -> ImageRewardSpec:
    """Read every size from the checkpoint's shapes."""
    need = (
        "blip.visual_encoder.patch_embed.proj.weight",
        "blip.visual_encoder.pos_embed",
        "blip.text_encoder.embeddings.word_embeddings.weight",
        "blip.text_encoder.embeddings.position_embeddings.weight",
        "mlp.layers.0.weight",
    )
    missing = [k for k in need if k not in state]
    if missing:
        raise CheckpointError(f"not an ImageReward checkpoint: missing {', '.join(missing[:3])}")
    v_width, _, patch, _ = state["blip.visual_encoder.patch_embed.proj.weight"].shape
    grid = int(round((state["blip.visual_encoder.pos_embed"].shape[1] - 1) ** 0.5))
    vocab, t_width = state["blip.text_encoder.embeddings.word_embeddings.weight"].shape
    try:
        v_mlp = state["blip.visual_encoder.blocks.0.mlp.fc1.weight"].shape[0]
        t_mlp = state["blip.text_encoder.encoder.layer.0.intermediate.dense.weight"].shape[0]
        dims = tuple(state[f"mlp.layers.{i}.weight"].shape[0] for i in (0, 2, 4, 6, 7))
    except KeyError as exc:
        raise CheckpointError(f"not an ImageReward checkpoint: missing {exc.args[0]}") from exc
    if v_width % HEAD_WIDTH or t_width % HEAD_WIDTH:
        raise CheckpointError(
            f"ImageReward checkpoint widths {v_width}/{t_width} are not multiples of {HEAD_WIDTH}"
        )
    return ImageRewardSpec(
        image_size=grid * patch,
        patch_size=patch,
        vision_width=v_width,
        vision_layers=_count(state, "blip.visual_encoder.blocks."),
        vision_heads=v_width // HEAD_WIDTH,
        vision_mlp=v_mlp,
        vocab_size=vocab,
        text_width=t_width,
        text_layers=_count(state, "blip.text_encoder.encoder.layer."),
        text_heads=t_width // HEAD_WIDTH,
        text_mlp=t_mlp,
        max_positions=state["blip.text_encoder.embeddings.position_embeddings.weight"].shape[0],
        mlp_dims=dims,
    )


# Only these parts score; other BLIP weights (vision_proj, text_proj, ...) and buffers are ignored.
_USED = re.compile(r"^(blip\.visual_encoder\.|blip\.text_encoder\.|mlp\.)")


def load_imagereward_model(path: str | Path) -> ImageRewardModel:
    """An ``ImageRewardModel`` from ``ImageReward.pt`` (read with ``weights_only=True``)."""
    p = require_file(path, "ImageReward checkpoint")
    state = load_torch_state(p, "ImageReward checkpoint")
    spec = spec_from_state_dict(state)
    model = ImageRewardModel(spec)
    wanted = {k: v.float() for k, v in state.items() if _USED.match(k) and not k.endswith("position_ids")}
    missing, unexpected = model.load_state_dict(wanted, strict=False)
    refuse_incomplete_load("ImageReward checkpoint", p, missing, unexpected)
    return model.eval()


def load_blip_tokenizer(path: str | Path):
    """bert-base-uncased's tokenizer with BLIP's added ``[DEC]`` (bos) and ``[ENC]`` tokens."""
    from transformers import BertTokenizer

    p = require_dir(path, "ImageReward tokenizer")
    if not ((p / "vocab.txt").is_file() or (p / "tokenizer.json").is_file()):
        raise CheckpointError(
            f"ImageReward tokenizer {p} holds no BERT tokenizer (vocab.txt or tokenizer.json)"
        )
    try:
        tok = BertTokenizer.from_pretrained(str(p), local_files_only=True)
    except (OSError, ValueError, TypeError) as exc:
        raise CheckpointError(
            f"ImageReward tokenizer {p} holds no BERT tokenizer (vocab.txt): {exc}"
        ) from exc
    tok.add_special_tokens({"bos_token": "[DEC]"})
    tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tok


class ImageRewardScorer(BatchedScorer):
    """ImageReward from a local ``ImageReward.pt`` and a local bert-base-uncased tokenizer dir."""

    name = "imagereward"

    def __init__(
        self,
        checkpoint: str | Path,
        tokenizer_path: str | Path,
        *,
        device: str = "cpu",
        batch_size: int = 16,
        name: str | None = None,
    ):
        super().__init__(device, batch_size, name)
        self.model = load_imagereward_model(checkpoint).to(device)
        self.tokenizer = load_blip_tokenizer(tokenizer_path)
        if len(self.tokenizer) > self.model.spec.vocab_size:
            raise CheckpointError(
                f"ImageReward tokenizer has {len(self.tokenizer)} tokens but the checkpoint's text encoder "
                f"has {self.model.spec.vocab_size}: use the bert-base-uncased tokenizer"
            )

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        size = self.model.spec.image_size
        return to_normalized_tensor(
            [resize_shorter_center_crop(im, size) for im in images], CLIP_MEAN, CLIP_STD
        )

    def _score_batch(self, images: list[Image.Image], prompts: list[str]) -> torch.Tensor:
        text = self.tokenizer(
            prompts, padding="max_length", truncation=True, max_length=TEXT_MAX_LENGTH, return_tensors="pt"
        )
        return self.model(
            self.preprocess(images).to(self.device),
            text["input_ids"].to(self.device),
            text["attention_mask"].to(self.device),
        )
