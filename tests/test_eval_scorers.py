"""Every scorer loads tiny random checkpoints through its real loader and computes the right function.

The checkpoints are laid out like the released files (CLIPModel dirs, the HPS
``{"state_dict": open_clip keys}`` .pt, ImageReward.pt with BLIP keys, the
aesthetic .pth); the reference computations are independent of the code under
test (torch's own multi-head attention for open_clip, transformers' BLIP
modules for ImageReward, CLIPModel.forward for PickScore).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from spin_diffusion.config.evaluation import ScorerConfig
from spin_diffusion.errors import CheckpointError, UserError
from spin_diffusion.evaluation import tiny_scorers as ts
from spin_diffusion.evaluation.registry import build_scorer
from spin_diffusion.evaluation.scorer_base import (
    CLIP_MEAN,
    CLIP_STD,
    resize_longest_pad_square,
    resize_shorter_center_crop,
)

PROMPTS = ["a red circle", "a blue square on the left", "a big dog", "a small cat and a dog"]


def _images(n: int = 4, seed: int = 0, size: tuple[int, int] = (40, 48)) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(n)]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    root = tmp_path_factory.mktemp("scorer_weights")
    clip = ts.save_tiny_clip(root / "clip")
    hps, hps_tok = ts.save_tiny_hps(root / "hps")
    ir, ir_tok = ts.save_tiny_imagereward(root / "ir")
    aes = ts.save_tiny_aesthetic(root / "aes", input_size=16)
    return {
        "root": root,
        "clip": clip,
        "hps": hps,
        "hps_tok": hps_tok,
        "ir": ir,
        "ir_tok": ir_tok,
        "aes": aes,
    }


def _cfg(weights, kind: str, **kw) -> ScorerConfig:
    base = {
        "pickscore": {"path": str(weights["clip"])},
        "hpsv2": {"path": str(weights["hps"]), "tokenizer_path": str(weights["hps_tok"])},
        "imagereward": {"path": str(weights["ir"]), "tokenizer_path": str(weights["ir_tok"])},
        "aesthetic": {"path": str(weights["aes"]), "clip_path": str(weights["clip"])},
    }[kind]
    return ScorerConfig(kind=kind, **{**base, **kw})


@pytest.fixture(scope="module")
def scorers(weights):
    return {
        k: build_scorer(_cfg(weights, k, batch_size=3), "cpu")
        for k in ("pickscore", "hpsv2", "imagereward", "aesthetic")
    }


# ------------------------------------------------------------------ shared behaviour
@pytest.mark.parametrize("kind", ["pickscore", "hpsv2", "imagereward", "aesthetic"])
def test_shape_determinism_batching_and_pairs(scorers, kind):
    scorer = scorers[kind]
    assert scorer.name == kind
    images = _images(4)
    out = scorer.score(images, PROMPTS)
    assert out.shape == (4,) and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert torch.equal(out, scorer.score(images, PROMPTS))  # deterministic (eval mode, no dropout)
    one_by_one = torch.cat([scorer.score([im], [p]) for im, p in zip(images, PROMPTS, strict=True)])
    torch.testing.assert_close(out, one_by_one, rtol=1e-4, atol=1e-5)  # batch size does not matter
    # identical image-prompt pairs score identically; different images score differently
    same = scorer.score([images[0], images[1], images[0]], [PROMPTS[0], PROMPTS[0], PROMPTS[0]])
    torch.testing.assert_close(same[0], same[2])
    assert same[0] != same[1]


@pytest.mark.parametrize("kind", ["pickscore", "hpsv2", "imagereward"])
def test_text_conditioned_scorers_depend_on_the_prompt(scorers, kind):
    im = _images(1)[0]
    out = scorers[kind].score([im, im], [PROMPTS[0], PROMPTS[2]])
    assert out[0] != out[1]


def test_aesthetic_ignores_the_prompt(scorers):
    im = _images(1)[0]
    out = scorers["aesthetic"].score([im, im], [PROMPTS[0], PROMPTS[2]])
    assert out[0] == out[1]


def test_mismatched_lengths_are_an_error(scorers):
    with pytest.raises(ValueError, match="2 images but 1 prompts"):
        scorers["pickscore"].score(_images(2), PROMPTS[:1])


# ------------------------------------------------------------------------ PickScore
def test_pickscore_is_logit_scale_times_cosine(scorers, weights):
    from transformers import CLIPModel

    from spin_diffusion.evaluation.clip_utils import load_clip_image_processor, load_clip_tokenizer

    model = CLIPModel.from_pretrained(str(weights["clip"])).eval()
    proc = load_clip_image_processor(weights["clip"], "x")
    tok = load_clip_tokenizer(weights["clip"], "x")
    images = _images(3)
    with torch.no_grad():
        out = model(
            **tok(PROMPTS[:3], padding=True, return_tensors="pt"),
            pixel_values=proc(images=images, return_tensors="pt")["pixel_values"],
        )
    expected = out.logits_per_image.diagonal()  # = exp(logit_scale) * cos, computed by CLIPModel.forward
    torch.testing.assert_close(
        scorers["pickscore"].score(images, PROMPTS[:3]), expected, rtol=1e-4, atol=1e-4
    )
    assert model.logit_scale.exp().item() == pytest.approx(100.0, rel=1e-3)


# ---------------------------------------------------------------------------- HPSv2
def _openclip_block(x, sd, p, heads, mask):
    w = x.shape[-1]
    h = F.layer_norm(x, (w,), sd[f"{p}.ln_1.weight"], sd[f"{p}.ln_1.bias"], eps=1e-5).transpose(0, 1)
    attn, _ = F.multi_head_attention_forward(
        h, h, h, w, heads,
        sd[f"{p}.attn.in_proj_weight"], sd[f"{p}.attn.in_proj_bias"], None, None, False, 0.0,
        sd[f"{p}.attn.out_proj.weight"], sd[f"{p}.attn.out_proj.bias"],
        training=False, need_weights=False, attn_mask=mask,
    )  # fmt: skip
    x = x + attn.transpose(0, 1)
    h = F.layer_norm(x, (w,), sd[f"{p}.ln_2.weight"], sd[f"{p}.ln_2.bias"], eps=1e-5)
    h = F.linear(F.gelu(F.linear(h, sd[f"{p}.mlp.c_fc.weight"], sd[f"{p}.mlp.c_fc.bias"])),
                 sd[f"{p}.mlp.c_proj.weight"], sd[f"{p}.mlp.c_proj.bias"])  # fmt: skip
    return x + h


def _openclip_reference_score(sd, pixels, ids, v_heads, t_heads):
    """open_clip's ViT forward written directly from the state dict (no transformers)."""
    n_v = len({k.split(".")[3] for k in sd if k.startswith("visual.transformer.resblocks.")})
    n_t = len({k.split(".")[2] for k in sd if k.startswith("transformer.resblocks.")})
    patch = sd["visual.conv1.weight"].shape[-1]
    x = F.conv2d(pixels, sd["visual.conv1.weight"], stride=patch).flatten(2).transpose(1, 2)
    cls = sd["visual.class_embedding"].expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + sd["visual.positional_embedding"]
    w = x.shape[-1]
    x = F.layer_norm(x, (w,), sd["visual.ln_pre.weight"], sd["visual.ln_pre.bias"], eps=1e-5)
    for i in range(n_v):
        x = _openclip_block(x, sd, f"visual.transformer.resblocks.{i}", v_heads, None)
    img = F.layer_norm(x[:, 0], (w,), sd["visual.ln_post.weight"], sd["visual.ln_post.bias"], eps=1e-5)
    img = img @ sd["visual.proj"]
    t = sd["token_embedding.weight"][ids] + sd["positional_embedding"]
    L = ids.shape[1]
    causal = torch.full((L, L), float("-inf")).triu(1)
    for i in range(n_t):
        t = _openclip_block(t, sd, f"transformer.resblocks.{i}", t_heads, causal)
    tw = t.shape[-1]
    t = F.layer_norm(t, (tw,), sd["ln_final.weight"], sd["ln_final.bias"], eps=1e-5)
    txt = t[torch.arange(len(ids)), ids.argmax(dim=-1)] @ sd["text_projection"]
    return (F.normalize(img, dim=-1) * F.normalize(txt, dim=-1)).sum(-1)


def test_hps_matches_an_independent_openclip_forward(scorers, weights):
    sd = torch.load(weights["hps"], weights_only=True)["state_dict"]
    scorer = scorers["hpsv2"]
    images = _images(4, seed=3, size=(50, 30))
    pixels = scorer.preprocess(images)
    ids = scorer.tokenizer(
        PROMPTS, padding="max_length", max_length=16, truncation=True, return_tensors="pt"
    )["input_ids"]
    with torch.no_grad():
        expected = _openclip_reference_score(sd, pixels, ids, v_heads=160 // 80, t_heads=128 // 64)
    got = scorer.score(images, PROMPTS)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert got.abs().max() <= 1.0  # a cosine, not x100


def test_hps_preprocessing_pads_instead_of_cropping():
    wide = Image.new("RGB", (64, 32), (255, 255, 255))
    out = resize_longest_pad_square(wide, 32)
    arr = np.asarray(out)
    assert out.size == (32, 32)
    assert (arr[:8] == 0).all() and (arr[24:] == 0).all()  # black bands top and bottom
    assert (arr[8:24] == 255).all()  # the whole image is kept
    tall = resize_shorter_center_crop(Image.new("RGB", (32, 64), (10, 20, 30)), 16)
    assert tall.size == (16, 16)


def test_hps_accepts_a_bare_state_dict_and_module_prefix(weights, tmp_path):
    sd = torch.load(weights["hps"], weights_only=True)["state_dict"]
    path = tmp_path / "bare.pt"
    torch.save({f"module.{k}": v for k, v in sd.items()}, path)
    a = build_scorer(_cfg(weights, "hpsv2", path=str(path)), "cpu")
    b = build_scorer(_cfg(weights, "hpsv2"), "cpu")
    ims = _images(2)
    torch.testing.assert_close(a.score(ims, PROMPTS[:2]), b.score(ims, PROMPTS[:2]))


def test_hps_rejects_a_non_openclip_checkpoint(weights, tmp_path):
    path = tmp_path / "wrong.pt"
    torch.save({"state_dict": {"layers.0.weight": torch.zeros(2, 2)}}, path)
    with pytest.raises(CheckpointError, match="not an open_clip CLIP state dict"):
        build_scorer(_cfg(weights, "hpsv2", path=str(path)), "cpu")
    sd = torch.load(weights["hps"], weights_only=True)["state_dict"]
    sd["visual.attn_pool.query"] = torch.zeros(3)
    torch.save({"state_dict": sd}, path)
    with pytest.raises(CheckpointError, match="does not use: visual.attn_pool.query"):
        build_scorer(_cfg(weights, "hpsv2", path=str(path)), "cpu")


# ---------------------------------------------------------------------- ImageReward
def test_imagereward_checkpoint_uses_the_released_key_names(weights):
    sd = torch.load(weights["ir"], weights_only=True)
    for key, shape in {
        "blip.visual_encoder.patch_embed.proj.weight": (64, 3, 8, 8),
        "blip.visual_encoder.cls_token": (1, 1, 64),
        "blip.visual_encoder.pos_embed": (1, 17, 64),
        "blip.visual_encoder.blocks.1.attn.qkv.weight": (192, 64),
        "blip.visual_encoder.blocks.0.attn.proj.bias": (64,),
        "blip.visual_encoder.norm.weight": (64,),
        "blip.text_encoder.embeddings.word_embeddings.weight": (len(ts.DEFAULT_WORDS) + 5 + 2, 64),
        "blip.text_encoder.encoder.layer.1.crossattention.self.key.weight": (64, 64),
        "blip.text_encoder.encoder.layer.0.attention.output.LayerNorm.bias": (64,),
        "blip.text_encoder.encoder.layer.0.intermediate.dense.weight": (128, 64),
        "mlp.layers.0.weight": (32, 64),
        "mlp.layers.7.weight": (1, 4),
    }.items():
        assert tuple(sd[key].shape) == shape, key


def test_imagereward_matches_transformers_blip_modules(scorers, weights):
    """Map the checkpoint onto transformers' BLIP vision/text models and recompute the reward."""
    from transformers import BlipTextConfig, BlipTextModel, BlipVisionConfig, BlipVisionModel

    sd = torch.load(weights["ir"], weights_only=True)
    vis = BlipVisionModel(
        BlipVisionConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=1,
            image_size=32,
            patch_size=8,
            layer_norm_eps=1e-6,
        )  # fmt: skip
    ).eval()
    v = {}
    pre = "blip.visual_encoder."
    v["embeddings.class_embedding"] = sd[pre + "cls_token"]
    v["embeddings.position_embedding"] = sd[pre + "pos_embed"]
    for n in ("weight", "bias"):
        v[f"embeddings.patch_embedding.{n}"] = sd[f"{pre}patch_embed.proj.{n}"]
        v[f"post_layernorm.{n}"] = sd[f"{pre}norm.{n}"]
        for i in range(2):
            b = f"{pre}blocks.{i}."
            e = f"encoder.layers.{i}."
            v[f"{e}self_attn.qkv.{n}"] = sd[f"{b}attn.qkv.{n}"]
            v[f"{e}self_attn.projection.{n}"] = sd[f"{b}attn.proj.{n}"]
            v[f"{e}layer_norm1.{n}"] = sd[f"{b}norm1.{n}"]
            v[f"{e}layer_norm2.{n}"] = sd[f"{b}norm2.{n}"]
            v[f"{e}mlp.fc1.{n}"] = sd[f"{b}mlp.fc1.{n}"]
            v[f"{e}mlp.fc2.{n}"] = sd[f"{b}mlp.fc2.{n}"]
    vis.load_state_dict(v)
    vocab = sd["blip.text_encoder.embeddings.word_embeddings.weight"].shape[0]
    txt = BlipTextModel(
        BlipTextConfig(vocab_size=vocab, hidden_size=64, encoder_hidden_size=64, intermediate_size=128,
                       num_hidden_layers=2, num_attention_heads=1, max_position_embeddings=40,
                       layer_norm_eps=1e-12, bos_token_id=None, sep_token_id=None, pad_token_id=0),
        add_pooling_layer=False,
    ).eval()  # fmt: skip
    tsd = {
        k.removeprefix("blip.text_encoder."): t for k, t in sd.items() if k.startswith("blip.text_encoder.")
    }
    tsd.pop("embeddings.position_ids")
    txt.load_state_dict(tsd, strict=False)
    mlp = torch.nn.Sequential(*[torch.nn.Identity()] * 8)
    layers = [torch.nn.Linear(1, 1) for _ in range(5)]
    for lin, idx in zip(layers, (0, 2, 4, 6, 7), strict=True):
        lin.weight = torch.nn.Parameter(sd[f"mlp.layers.{idx}.weight"])
        lin.bias = torch.nn.Parameter(sd[f"mlp.layers.{idx}.bias"])
        mlp[idx] = lin

    scorer = scorers["imagereward"]
    images = _images(3, seed=5, size=(48, 36))
    pixels = scorer.preprocess(images)
    tok = scorer.tokenizer(
        PROMPTS[:3], padding="max_length", truncation=True, max_length=35, return_tensors="pt"
    )
    with torch.no_grad():
        img_states = vis(pixel_values=pixels).last_hidden_state
        out = txt(
            input_ids=tok["input_ids"],
            attention_mask=tok["attention_mask"],
            encoder_hidden_states=img_states,
            encoder_attention_mask=torch.ones(img_states.shape[:2], dtype=torch.long),
            is_decoder=False,
        ).last_hidden_state
        expected = (mlp(out[:, 0]).squeeze(-1) - 0.16717362830052426) / 1.0333394966054072
    torch.testing.assert_close(scorer.score(images, PROMPTS[:3]), expected, rtol=1e-4, atol=1e-5)


def test_imagereward_preprocess_is_resize_centre_crop_clip_normalised(scorers):
    im = Image.new("RGB", (64, 32), (255, 0, 0))
    x = scorers["imagereward"].preprocess([im])
    assert x.shape == (1, 3, 32, 32)
    expected = [
        (1 - CLIP_MEAN[0]) / CLIP_STD[0],
        (0 - CLIP_MEAN[1]) / CLIP_STD[1],
        (0 - CLIP_MEAN[2]) / CLIP_STD[2],
    ]
    torch.testing.assert_close(x[0, :, 16, 16], torch.tensor(expected), rtol=1e-5, atol=1e-5)


def test_imagereward_wrong_files(weights, tmp_path):
    path = tmp_path / "ir.pt"
    sd = torch.load(weights["ir"], weights_only=True)
    sd.pop("blip.text_encoder.encoder.layer.1.crossattention.self.key.weight")
    torch.save(sd, path)
    with pytest.raises(
        CheckpointError,
        match="ImageReward checkpoint .* missing blip.text_encoder.encoder.layer.1.crossattention",
    ):
        build_scorer(_cfg(weights, "imagereward", path=str(path)), "cpu")
    with pytest.raises(CheckpointError, match="holds no BERT tokenizer"):
        build_scorer(_cfg(weights, "imagereward", tokenizer_path=str(tmp_path)), "cpu")


# ------------------------------------------------------------------------ Aesthetic
def test_aesthetic_is_the_affine_map_of_the_normalised_clip_embedding(scorers, weights):
    from transformers import CLIPModel

    from spin_diffusion.evaluation.clip_utils import load_clip_image_processor

    sd = torch.load(weights["aes"], weights_only=True)
    # No activations: the five layers collapse into one affine map w.x + b.
    w = sd["layers.0.weight"]
    b = sd["layers.0.bias"]
    for i in (2, 4, 6, 7):
        b = sd[f"layers.{i}.weight"] @ b + sd[f"layers.{i}.bias"]
        w = sd[f"layers.{i}.weight"] @ w
    model = CLIPModel.from_pretrained(str(weights["clip"])).eval()
    proc = load_clip_image_processor(weights["clip"], "x")
    images = _images(3, seed=7)
    with torch.no_grad():
        emb = model.get_image_features(pixel_values=proc(images=images, return_tensors="pt")["pixel_values"])
        emb = getattr(emb, "pooler_output", emb)
    emb = emb / emb.norm(dim=-1, keepdim=True)
    expected = (emb @ w.T + b).squeeze(-1)
    torch.testing.assert_close(
        scorers["aesthetic"].score(images, PROMPTS[:3]), expected, rtol=1e-4, atol=1e-5
    )


def test_aesthetic_wrong_files(weights, tmp_path):
    bad = tmp_path / "bad.pth"
    torch.save({"layers.0.weight": torch.zeros(4, 16)}, bad)
    with pytest.raises(CheckpointError, match=r"layers\.\{0,2,4,6,7\}"):
        build_scorer(_cfg(weights, "aesthetic", path=str(bad)), "cpu")
    wrong_dim = ts.save_tiny_aesthetic(tmp_path / "a32", input_size=32)
    with pytest.raises(CheckpointError, match="expects 32-d embeddings"):
        build_scorer(_cfg(weights, "aesthetic", path=str(wrong_dim)), "cpu")


# ---------------------------------------------------------------- files and errors
@pytest.mark.parametrize(
    ("kind", "field", "message"),
    [
        ("pickscore", "path", "PickScore model .* does not exist"),
        ("hpsv2", "path", "HPSv2 checkpoint .* does not exist"),
        ("hpsv2", "tokenizer_path", "HPSv2 tokenizer .* does not exist"),
        ("imagereward", "path", "ImageReward checkpoint .* does not exist"),
        ("aesthetic", "path", "aesthetic predictor weights .* does not exist"),
        ("aesthetic", "clip_path", "aesthetic CLIP model .* does not exist"),
    ],
)
def test_missing_files_give_one_line_errors(weights, tmp_path, kind, field, message):
    with pytest.raises(CheckpointError, match=message) as info:
        build_scorer(_cfg(weights, kind, **{field: str(tmp_path / "nope")}), "cpu")
    assert "\n" not in str(info.value)


def test_garbage_and_pickled_code_files_are_refused(weights, tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="could not be read as weights"):
        build_scorer(_cfg(weights, "imagereward", path=str(junk)), "cpu")

    class Evil:
        def __reduce__(self):
            return (print, ("code ran",))

    evil = tmp_path / "evil.pth"
    torch.save({"layers.0.weight": Evil()}, evil)
    with pytest.raises(CheckpointError, match="is a pickle that carries code") as info:
        build_scorer(_cfg(weights, "aesthetic", path=str(evil)), "cpu")
    assert "weights_only" not in str(info.value)  # torch's advice to disable the protection is not passed on


def test_a_directory_without_a_clip_model_is_refused(weights, tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(UserError, match="PickScore model"):
        build_scorer(_cfg(weights, "pickscore", path=str(tmp_path)), "cpu")


# ------------------------------------------------------------------------ toy oracle
def test_toy_oracle_is_registered_by_name():
    from spin_diffusion.toy.render import render
    from spin_diffusion.toy.world import parse_prompt

    prompt = "a red circle"
    good = render(parse_prompt(prompt), size=32, rng=0)
    blank = Image.new("RGB", (32, 32), "white")
    scorer = build_scorer(ScorerConfig(kind="toy_fidelity", name="fid_toy"), "cpu")
    assert scorer.name == "fid_toy"
    out = scorer.score([good, blank], [prompt, prompt])
    assert out.shape == (2,) and out[0] > out[1]
    style = build_scorer(ScorerConfig(kind="toy_style"), "cpu")
    assert style.name == "toy_style"
    assert style.score([good], [prompt]).shape == (1,)


# ------------------------------------------------------- CLIP folders with wrong weights
def _clip_copy_with(weights, tmp_path, edit) -> str:
    """A copy of the tiny CLIP folder whose ``model.safetensors`` is rewritten by ``edit``."""
    import shutil

    from safetensors.torch import load_file, save_file

    out = tmp_path / "clip_edited"
    shutil.copytree(weights["clip"], out)
    state = load_file(str(out / "model.safetensors"))
    save_file(edit(state), str(out / "model.safetensors"), metadata={"format": "pt"})
    return str(out)


def _without_text_projection(state):
    return {k: v for k, v in state.items() if k != "text_projection.weight"}


def _every_key_renamed(state):
    # not "clip.": transformers strips CLIPModel's own base-model prefix and loads those correctly
    return {f"tower.{k}": v for k, v in state.items()}


@pytest.mark.parametrize(
    ("edit", "key"),
    [(_without_text_projection, "text_projection.weight"), (_every_key_renamed, "unexpected tower.")],
    ids=["missing_text_projection", "every_key_renamed"],
)
def test_clip_folders_with_wrong_weights_are_refused(weights, tmp_path, edit, key):
    from spin_diffusion.evaluation.clip_utils import load_clip_model
    from spin_diffusion.evaluation.distribution import clip_feature_extractor

    bad = _clip_copy_with(weights, tmp_path, edit)
    with pytest.raises(CheckpointError, match="PickScore model") as info:
        build_scorer(_cfg(weights, "pickscore", path=bad), "cpu")
    message = str(info.value)
    assert "\n" not in message and bad in message and key in message
    with pytest.raises(CheckpointError, match="aesthetic CLIP model"):
        build_scorer(_cfg(weights, "aesthetic", clip_path=bad), "cpu")
    with pytest.raises(CheckpointError, match="FID CLIP feature model"):
        clip_feature_extractor(bad)
    with pytest.raises(CheckpointError):
        load_clip_model(bad, "CLIP")


def test_an_intact_clip_folder_loads_with_its_saved_weights(weights):
    from safetensors.torch import load_file

    from spin_diffusion.evaluation.clip_utils import load_clip_model

    model = load_clip_model(weights["clip"], "CLIP")
    saved = load_file(str(weights["clip"] / "model.safetensors"))
    state = model.state_dict()
    assert saved and all(torch.equal(state[k], v.float()) for k, v in saved.items())
