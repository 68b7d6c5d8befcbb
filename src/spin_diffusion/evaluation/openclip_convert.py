"""Load an open_clip-layout CLIP state dict (e.g. the HPSv2 ViT-H-14) into transformers' CLIPModel.

open_clip itself imports torchvision, which does not import beside our CPU
torch wheel, so the checkpoint is mapped onto ``transformers.CLIPModel``, which
computes the same function: pre-LN transformer blocks with a fused qkv
projection (split here into q/k/v), GELU MLPs, class-token pooling + ``ln_post``
+ ``visual.proj`` on the image side, causal text transformer pooled at the
end-of-text token + ``ln_final`` + ``text_projection``. The sizes are read from
the tensor shapes; only head counts cannot be, so they come from the head
width (open_clip's ViT-H-14 uses 80 for vision and 64 for text).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from spin_diffusion.errors import CheckpointError
from spin_diffusion.evaluation.scorer_base import refuse_incomplete_load

if TYPE_CHECKING:
    import torch
    from transformers import CLIPModel

VISION_HEAD_WIDTH = 80
TEXT_HEAD_WIDTH = 64

_REQUIRED = (
    "visual.conv1.weight",
    "visual.class_embedding",
    "visual.positional_embedding",
    "visual.ln_pre.weight",
    "visual.ln_post.weight",
    "visual.proj",
    "token_embedding.weight",
    "positional_embedding",
    "ln_final.weight",
    "text_projection",
    "logit_scale",
)
# Buffers open_clip may save that transformers recomputes itself.
_IGNORED = ("attn_mask", "visual.attn_mask")

_BLOCK_MAP = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}


def _count_layers(state: dict[str, torch.Tensor], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    ids = {int(m.group(1)) for k in state if (m := pattern.match(k))}
    if not ids or ids != set(range(max(ids) + 1)):
        raise CheckpointError(
            f"open_clip state dict: blocks under {prefix} are missing or not numbered 0..N-1"
        )
    return max(ids) + 1


def _heads(width: int, head_width: int, where: str) -> int:
    if width % head_width:
        raise CheckpointError(
            f"open_clip state dict: {where} width {width} is not a multiple of {head_width}"
        )
    return width // head_width


def clip_config_from_openclip(
    state: dict[str, torch.Tensor],
    *,
    eos_token_id: int,
    bos_token_id: int,
    pad_token_id: int,
    vision_head_width: int = VISION_HEAD_WIDTH,
    text_head_width: int = TEXT_HEAD_WIDTH,
    hidden_act: str = "gelu",
):
    """A ``CLIPConfig`` whose model has exactly the shapes of the open_clip ``state``."""
    from transformers import CLIPConfig

    missing = [k for k in _REQUIRED if k not in state]
    if missing:
        raise CheckpointError(f"not an open_clip CLIP state dict: missing {', '.join(missing[:4])}")
    v_width, _, patch, _ = state["visual.conv1.weight"].shape
    n_pos = state["visual.positional_embedding"].shape[0]
    grid = int(round((n_pos - 1) ** 0.5))
    if grid * grid != n_pos - 1:
        raise CheckpointError("open_clip state dict: visual.positional_embedding is not 1 + a square grid")
    v_layers = _count_layers(state, "visual.transformer.resblocks.")
    v_mlp = state["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0]
    vocab, t_width = state["token_embedding.weight"].shape
    ctx = state["positional_embedding"].shape[0]
    t_layers = _count_layers(state, "transformer.resblocks.")
    t_mlp = state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0]
    embed_dim = state["text_projection"].shape[1]
    if state["visual.proj"].shape != (v_width, embed_dim):
        raise CheckpointError(
            "open_clip state dict: visual.proj and text_projection disagree on the embedding size"
        )
    return CLIPConfig(
        text_config={
            "vocab_size": vocab,
            "hidden_size": t_width,
            "intermediate_size": t_mlp,
            "num_hidden_layers": t_layers,
            "num_attention_heads": _heads(t_width, text_head_width, "text"),
            "max_position_embeddings": ctx,
            "hidden_act": hidden_act,
            "layer_norm_eps": 1e-5,
            "projection_dim": embed_dim,
            "eos_token_id": eos_token_id,
            "bos_token_id": bos_token_id,
            "pad_token_id": pad_token_id,
        },
        vision_config={
            "hidden_size": v_width,
            "intermediate_size": v_mlp,
            "num_hidden_layers": v_layers,
            "num_attention_heads": _heads(v_width, vision_head_width, "vision"),
            "image_size": grid * patch,
            "patch_size": patch,
            "hidden_act": hidden_act,
            "layer_norm_eps": 1e-5,
            "projection_dim": embed_dim,
        },
        projection_dim=embed_dim,
        logit_scale_init_value=float(state["logit_scale"].item()),
    )


def _convert_block(state: dict[str, torch.Tensor], src: str, dst: str, out: dict[str, torch.Tensor]) -> None:
    for name in ("weight", "bias"):
        fused = state[f"{src}attn.in_proj_{name}"]
        q, k, v = fused.chunk(3, dim=0)
        out[f"{dst}self_attn.q_proj.{name}"] = q
        out[f"{dst}self_attn.k_proj.{name}"] = k
        out[f"{dst}self_attn.v_proj.{name}"] = v
        for a, b in _BLOCK_MAP.items():
            out[f"{dst}{b}.{name}"] = state[f"{src}{a}.{name}"]


def openclip_to_transformers(
    state: dict[str, torch.Tensor], n_vision: int, n_text: int
) -> dict[str, torch.Tensor]:
    """Rename (and split/transpose where needed) open_clip keys to ``CLIPModel`` keys."""
    out: dict[str, torch.Tensor] = {
        "vision_model.embeddings.patch_embedding.weight": state["visual.conv1.weight"],
        "vision_model.embeddings.class_embedding": state["visual.class_embedding"],
        "vision_model.embeddings.position_embedding.weight": state["visual.positional_embedding"],
        "visual_projection.weight": state["visual.proj"].t().contiguous(),
        "text_model.embeddings.token_embedding.weight": state["token_embedding.weight"],
        "text_model.embeddings.position_embedding.weight": state["positional_embedding"],
        "text_projection.weight": state["text_projection"].t().contiguous(),
        "logit_scale": state["logit_scale"].reshape(()),
    }
    for name in ("weight", "bias"):
        out[f"vision_model.pre_layrnorm.{name}"] = state[f"visual.ln_pre.{name}"]
        out[f"vision_model.post_layernorm.{name}"] = state[f"visual.ln_post.{name}"]
        out[f"text_model.final_layer_norm.{name}"] = state[f"ln_final.{name}"]
    for i in range(n_vision):
        _convert_block(state, f"visual.transformer.resblocks.{i}.", f"vision_model.encoder.layers.{i}.", out)
    for i in range(n_text):
        _convert_block(state, f"transformer.resblocks.{i}.", f"text_model.encoder.layers.{i}.", out)
    return out


def load_openclip_as_clipmodel(
    state: dict[str, torch.Tensor],
    *,
    eos_token_id: int,
    bos_token_id: int,
    pad_token_id: int,
    vision_head_width: int = VISION_HEAD_WIDTH,
    text_head_width: int = TEXT_HEAD_WIDTH,
) -> CLIPModel:
    """Build a ``CLIPModel`` of the right size and load every open_clip weight into it.

    Unknown keys (e.g. a text-side ``attn_pool`` of another architecture) are an
    error rather than silently dropped, so a wrong checkpoint cannot score.
    """
    import torch
    from transformers import CLIPModel

    config = clip_config_from_openclip(
        state,
        eos_token_id=eos_token_id,
        bos_token_id=bos_token_id,
        pad_token_id=pad_token_id,
        vision_head_width=vision_head_width,
        text_head_width=text_head_width,
    )
    n_vision = config.vision_config.num_hidden_layers
    n_text = config.text_config.num_hidden_layers
    try:
        mapped = openclip_to_transformers(state, n_vision, n_text)
    except KeyError as exc:
        raise CheckpointError(f"open_clip state dict: missing {exc.args[0]}") from exc
    used = {"visual.conv1.weight", "visual.class_embedding", "visual.positional_embedding", "visual.proj"}
    used |= {"token_embedding.weight", "positional_embedding", "text_projection", "logit_scale"}
    used |= {f"{p}.{n}" for p in ("visual.ln_pre", "visual.ln_post", "ln_final") for n in ("weight", "bias")}
    block_keys = [f"attn.in_proj_{n}" for n in ("weight", "bias")] + [
        f"{a}.{n}" for a in _BLOCK_MAP for n in ("weight", "bias")
    ]
    used |= {f"visual.transformer.resblocks.{i}.{k}" for i in range(n_vision) for k in block_keys}
    used |= {f"transformer.resblocks.{i}.{k}" for i in range(n_text) for k in block_keys}
    unknown = sorted(k for k in state if k not in used and k not in _IGNORED)
    if unknown:
        raise CheckpointError(
            f"open_clip state dict has weights this ViT layout does not use: {', '.join(unknown[:4])}"
        )
    with torch.device("meta"):
        model = CLIPModel(config)
    missing, unexpected = model.load_state_dict(mapped, strict=False, assign=True)
    refuse_incomplete_load("open_clip state dict", "(as a CLIPModel)", missing, unexpected)
    _materialize_buffers(model)
    return model.float().eval()


def _materialize_buffers(model: torch.nn.Module) -> None:
    """Recreate non-persistent buffers (position ids) that stayed on the meta device."""
    import torch

    for module in model.modules():
        for name, buf in list(module._buffers.items()):
            if buf is not None and buf.is_meta:
                if name == "position_ids":
                    module._buffers[name] = torch.arange(buf.shape[-1]).expand(buf.shape).clone()
                else:
                    raise CheckpointError(f"buffer {name} of {type(module).__name__} was not loaded")
