"""Latent cache: built once, reused with zero encodes, rebuilt on any change, resumable, pairs and flips."""

from __future__ import annotations

import json

import pytest
import torch

from spin_diffusion.config.data import DataConfig
from spin_diffusion.data import encoding as encoding_mod
from spin_diffusion.data.encoding import vae_fingerprint
from spin_diffusion.data.latents import LatentCache, ensure_latent_cache
from spin_diffusion.data.sources import open_source
from spin_diffusion.data.testing import make_imagefolder, make_parquet, make_pickapic
from spin_diffusion.data.transforms import ImageTransform, hflip
from spin_diffusion.errors import DataError


def tiny_vae(seed: int = 0, **extra):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        sample_size=32,
        norm_num_groups=8,
        **extra,
    ).eval()
    vae.calls = 0
    vae.images = 0
    encode = vae.encode

    def counting_encode(x, *a, **k):
        vae.calls += 1
        vae.images += x.shape[0]
        return encode(x, *a, **k)

    vae.encode = counting_encode
    return vae


@pytest.fixture(scope="module")
def vae():
    return tiny_vae(0, scaling_factor=0.5, shift_factor=0.1)


def folder_cfg(root, **kw) -> DataConfig:
    kw.setdefault("resolution", 32)
    return DataConfig(source="imagefolder", path=str(root), **kw)


def reference_latent(vae, img, example_id, cfg, flip=False):
    x = ImageTransform(cfg)(img, example_id)
    if flip:
        x = hflip(x)
    with torch.no_grad():
        z = vae.encode(x[None]).latent_dist.mode()[0]
    return (z - 0.1) * 0.5


def test_cache_built_once_then_reused_with_zero_encodes(tmp_path, vae):
    root = make_imagefolder(tmp_path / "ds", [f"caption {i}" for i in range(5)])
    cfg = folder_cfg(root)
    vae.calls = vae.images = 0
    cache = ensure_latent_cache(cfg, vae, tmp_path / "cache", batch_size=2, show_progress=False)
    assert cache.status == "built" and cache.encoded_count == 5
    assert vae.images == 5 and vae.calls == 3  # batches of 2, 2, 1
    assert len(cache) == 5 and cache.ids == [f"img_{i:03d}.png" for i in range(5)]
    assert cache.captions == [f"caption {i}" for i in range(5)]

    # Latents are the posterior mode, shifted and scaled, stored in fp16.
    examples = list(open_source(cfg))
    for i, ex in enumerate(examples):
        z = cache.latents(i)
        assert z.shape == (4, 16, 16) and z.dtype == torch.float32
        torch.testing.assert_close(z, reference_latent(vae, ex.image, ex.id, cfg), atol=2e-3, rtol=1e-2)

    # "Second iteration": a fresh call finds the complete cache and never calls the VAE.
    vae.calls = vae.images = 0
    before = encoding_mod.ENCODE_CALLS
    again = ensure_latent_cache(cfg, vae, tmp_path / "cache", batch_size=2, show_progress=False)
    assert again.status == "reused" and again.encoded_count == 0
    assert vae.calls == 0 and before == encoding_mod.ENCODE_CALLS
    assert again.ids == cache.ids
    assert torch.equal(again.latents(3), cache.latents(3))

    m = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    assert m["complete"] and m["count"] == 5 and m["dtype"] == "float16"
    assert m["settings"]["vae"] == vae_fingerprint(vae) and m["settings"]["resolution"] == 32
    assert m["settings"]["scaling_factor"] == 0.5 and m["settings"]["shift_factor"] == 0.1
    assert m["stats"]["usable"] == 5 and m["latent_shape"] == [4, 16, 16]
    with pytest.raises(ValueError, match="without random_flip"):
        cache.latents(0, flip=True)
    with pytest.raises(IndexError):
        cache.latents(5)


def test_flips_are_encoded_not_mirrored_latents(tmp_path, vae):
    root = make_imagefolder(tmp_path / "ds", ["a", "b", "c"])
    cfg = folder_cfg(root, random_flip=True)
    vae.images = 0
    cache = ensure_latent_cache(cfg, vae, tmp_path / "cache", batch_size=4, show_progress=False)
    assert cache.encoded_count == 6 and vae.images == 6  # both flips of each image
    ex = list(open_source(cfg))[1]
    torch.testing.assert_close(
        cache.latents(1, flip=True),
        reference_latent(vae, ex.image, ex.id, cfg, flip=True),
        atol=2e-3,
        rtol=1e-2,
    )
    assert not torch.allclose(cache.latents(1, flip=True), cache.latents(1))


def test_changed_vae_resolution_or_source_forces_rebuild(tmp_path, vae):
    root = make_imagefolder(tmp_path / "ds", ["a", "b", "c"])
    cache_dir = tmp_path / "cache"
    base = ensure_latent_cache(folder_cfg(root), vae, cache_dir, show_progress=False)
    z0 = base.latents(0).clone()

    other = tiny_vae(1, scaling_factor=0.5, shift_factor=0.1)
    assert vae_fingerprint(other) != vae_fingerprint(vae)
    c = ensure_latent_cache(folder_cfg(root), other, cache_dir, show_progress=False)
    assert c.status == "rebuilt" and c.encoded_count == 3 and other.images == 3
    assert not torch.allclose(c.latents(0), z0)

    c = ensure_latent_cache(folder_cfg(root, resolution=16), other, cache_dir, show_progress=False)
    assert c.status == "rebuilt" and c.latents(0).shape == (4, 8, 8)

    c = ensure_latent_cache(folder_cfg(root, resolution=16), other, cache_dir, show_progress=False)
    assert c.status == "reused"

    make_imagefolder(root, ["a", "b", "c", "d"])  # the source changes: one more image
    c = ensure_latent_cache(folder_cfg(root, resolution=16), other, cache_dir, show_progress=False)
    assert c.status == "rebuilt" and len(c) == 4

    # A config change that alters content (caption column) is a rebuild too.
    meta = root / "metadata.jsonl"
    meta.write_text(meta.read_text().replace('"text"', '"prompt"'))
    c = ensure_latent_cache(
        folder_cfg(root, resolution=16, caption_column="prompt"), other, cache_dir, show_progress=False
    )
    assert c.status == "rebuilt" and c.captions == ["a", "b", "c", "d"]


def test_interrupted_build_resumes_keeping_completed_shards(tmp_path):
    make_parquet(tmp_path / "p.parquet", [f"cap {i}" for i in range(7)])
    cfg = DataConfig(source="parquet", path=str(tmp_path / "p.parquet"), resolution=32)
    vae = tiny_vae(0)
    encode = vae.encode

    def failing_encode(x, *a, **k):
        if vae.calls >= 2:  # the third batch "crashes"
            raise KeyboardInterrupt
        return encode(x, *a, **k)

    vae.encode = failing_encode
    cache_dir = tmp_path / "cache"
    with pytest.raises(KeyboardInterrupt):
        ensure_latent_cache(cfg, vae, cache_dir, batch_size=2, shard_size=2, show_progress=False)
    m = json.loads((cache_dir / "manifest.json").read_text())
    assert not m["complete"] and [s["count"] for s in m["shards"]] == [2, 2]
    assert sorted(p.name for p in cache_dir.glob("shard-*")) == [
        "shard-00000.safetensors",
        "shard-00001.safetensors",
    ]

    vae.encode = encode
    vae.calls = vae.images = 0
    resumed = ensure_latent_cache(cfg, vae, cache_dir, batch_size=2, shard_size=2, show_progress=False)
    assert resumed.status == "resumed" and resumed.encoded_count == 3 and vae.images == 3
    assert resumed.ids == [f"p.parquet:{i}" for i in range(7)]

    fresh = ensure_latent_cache(cfg, tiny_vae(0), tmp_path / "fresh", batch_size=3, show_progress=False)
    for i in range(7):
        assert torch.equal(resumed.latents(i), fresh.latents(i))
    assert json.loads((cache_dir / "manifest.json").read_text())["stats"]["rows_read"] == 7


def test_pair_cache_for_dpo(tmp_path, vae):
    labels = [(1, 0), (0.5, 0.5), (0, 1), (0, 1)]
    path = make_pickapic(tmp_path / "pap.parquet", labels)
    cfg = DataConfig(source="pickapic", path=str(path), resolution=32)
    cache = ensure_latent_cache(cfg, vae, tmp_path / "cache", pairs=True, batch_size=8, show_progress=False)
    assert len(cache) == 3 and cache.encoded_count == 6
    assert cache.manifest["stats"]["ties_dropped"] == 1
    pairs = list(open_source(cfg, pairs=True))
    for i, p in enumerate(pairs):
        win, lose = cache.pair_latents(i)
        torch.testing.assert_close(win, reference_latent(vae, p.image_win, p.id, cfg), atol=2e-3, rtol=1e-2)
        torch.testing.assert_close(lose, reference_latent(vae, p.image_lose, p.id, cfg), atol=2e-3, rtol=1e-2)
    # The single-image cache of the same file is a different cache (winners only).
    single = ensure_latent_cache(cfg, vae, tmp_path / "cache", batch_size=8, show_progress=False)
    assert single.status == "rebuilt" and not single.pairs
    torch.testing.assert_close(single.latents(2), cache.pair_latents(2)[0], atol=0, rtol=0)
    with pytest.raises(ValueError, match="not preference pairs"):
        single.pair_latents(0)


def test_bad_rows_stop_or_are_skipped_and_counted(tmp_path, vae):
    root = make_imagefolder(tmp_path / "ds", ["a", "b", "c"])
    (root / "img_001.png").write_bytes(b"broken")
    with pytest.raises(DataError, match=r"metadata\.jsonl:2 \(img_001\.png\).*not a readable image"):
        ensure_latent_cache(folder_cfg(root), vae, tmp_path / "cache", show_progress=False)
    cache = ensure_latent_cache(
        folder_cfg(root, skip_bad_examples=True), vae, tmp_path / "cache", show_progress=False
    )
    assert cache.ids == ["img_000.png", "img_002.png"]
    assert cache.manifest["stats"]["problems"] == {"unreadable_image": 1}

    for name in ("img_000.png", "img_002.png"):
        (root / name).write_bytes(b"broken")
    with pytest.raises(DataError, match="no usable examples"):
        ensure_latent_cache(
            folder_cfg(root, skip_bad_examples=True), vae, tmp_path / "cache2", show_progress=False
        )


def test_cache_leaves_foreign_files_alone(tmp_path, vae):
    root = make_imagefolder(tmp_path / "ds", ["a"])
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    (cache_dir / "notes.txt").write_text("mine")
    ensure_latent_cache(folder_cfg(root), vae, cache_dir, show_progress=False)
    ensure_latent_cache(folder_cfg(root, resolution=16), vae, cache_dir, show_progress=False)
    assert (cache_dir / "notes.txt").read_text() == "mine"


def test_cache_pickles_without_file_handles(tmp_path, vae):
    root = make_imagefolder(tmp_path / "ds", [f"c{i}" for i in range(8)])
    cache = ensure_latent_cache(folder_cfg(root), vae, tmp_path / "cache", batch_size=16, show_progress=False)
    cache.latents(1)  # opens a shard
    # Pickling (DataLoader workers) drops open file handles and still reads.
    import pickle

    clone = pickle.loads(pickle.dumps(cache))
    assert isinstance(clone, LatentCache) and torch.equal(clone.latents(2), cache.latents(2))
