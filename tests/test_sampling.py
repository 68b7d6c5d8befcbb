"""Opponent sampling: per-sample determinism, shards + manifest, resume, refusal of mixed settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from spin_diffusion.config.sampling import SamplingConfig
from spin_diffusion.errors import CheckpointError
from spin_diffusion.infra.seeds import sample_seed
from spin_diffusion.model.loading import load_pipeline
from spin_diffusion.model.weights import fingerprint_module
from spin_diffusion.sampling.generate import generate_latents, use_scheduler
from spin_diffusion.sampling.opponent import sample_opponent

PROMPTS = ["a red circle", "a blue square", "a green circle on the left", "a red square", "a blue circle"]


@pytest.fixture(scope="module")
def pipe(tiny_pipeline_dir: Path):
    pipe = load_pipeline(tiny_pipeline_dir)
    use_scheduler(pipe, "dpmsolver++")
    return pipe


def test_same_seed_same_latents_whatever_the_batch_size(pipe) -> None:
    seeds = [sample_seed(0, p, 0) for p in PROMPTS]
    one = generate_latents(pipe, PROMPTS, seeds, num_inference_steps=4, guidance_scale=3.0, batch_size=1)
    big = generate_latents(pipe, PROMPTS, seeds, num_inference_steps=4, guidance_scale=3.0, batch_size=5)
    two = generate_latents(
        pipe, PROMPTS[::-1], seeds[::-1], num_inference_steps=4, guidance_scale=3.0, batch_size=2
    )
    assert one.shape == (5, 4, 8, 8)
    torch.testing.assert_close(one, big, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(one, two.flip(0), atol=1e-4, rtol=1e-4)
    other = generate_latents(pipe, PROMPTS[:1], [seeds[0] + 1], num_inference_steps=4, guidance_scale=3.0)
    assert (other[0] - one[0]).abs().max() > 1e-2


def test_sample_seed_is_stable_and_distinct() -> None:
    assert sample_seed(0, "id-1", 0) == sample_seed(0, "id-1", 0)
    assert (
        len(
            {
                sample_seed(0, "id-1", 0),
                sample_seed(0, "id-1", 1),
                sample_seed(1, "id-1", 0),
                sample_seed(0, "id-2", 0),
            }
        )
        == 4
    )


def test_sampling_writes_shards_resumes_and_refuses_other_settings(pipe, tmp_path: Path) -> None:
    ids = [f"p{i}" for i in range(len(PROMPTS))]
    settings = SamplingConfig(
        num_samples_per_prompt=2,
        num_inference_steps=3,
        guidance_scale=2.0,
        batch_size=4,
        shard_size=2,
        num_previews=4,
    )
    fp = fingerprint_module(pipe.unet)
    out = tmp_path / "samples"
    samples = sample_opponent(
        pipe, ids, PROMPTS, settings, out, seed=7, model_fingerprint=fp, show_progress=False
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["num_prompts"] == 5 and len(manifest["shards"]) == 3
    assert manifest["identity"]["model_fingerprint"] == fp
    assert (out / "previews.png").is_file()
    lat = samples.latents("p3")
    assert lat.shape == (2, 4, 8, 8) and lat.dtype == torch.float16
    assert (lat[0] - lat[1]).abs().max() > 1e-3  # two different samples per prompt

    # interrupted run: drop the manifest and one shard, poison another: only the missing shard is regenerated
    (out / "manifest.json").unlink()
    (out / "shard-00001.safetensors").unlink()
    kept = (out / "shard-00000.safetensors").stat().st_mtime_ns
    again = sample_opponent(
        pipe, ids, PROMPTS, settings, out, seed=7, model_fingerprint=fp, show_progress=False
    )
    assert (out / "shard-00000.safetensors").stat().st_mtime_ns == kept
    torch.testing.assert_close(again.latents("p3"), lat)

    # a complete directory is a no-op
    mtime = (out / "manifest.json").stat().st_mtime_ns
    sample_opponent(pipe, ids, PROMPTS, settings, out, seed=7, model_fingerprint=fp, show_progress=False)
    assert (out / "manifest.json").stat().st_mtime_ns == mtime

    # another model or other sampler settings are refused, never mixed
    with pytest.raises(CheckpointError, match="model_fingerprint"):
        sample_opponent(
            pipe, ids, PROMPTS, settings, out, seed=7, model_fingerprint="other", show_progress=False
        )
    changed = settings.model_copy(update={"guidance_scale": 5.0})
    with pytest.raises(CheckpointError, match="sampler"):
        sample_opponent(pipe, ids, PROMPTS, changed, out, seed=7, model_fingerprint=fp, show_progress=False)


def test_two_ranks_split_shards_and_give_identical_results(pipe, tmp_path: Path) -> None:
    ids = [f"p{i}" for i in range(len(PROMPTS))]
    settings = SamplingConfig(
        num_samples_per_prompt=1, num_inference_steps=3, guidance_scale=2.0, shard_size=2, num_previews=0
    )
    single = sample_opponent(
        pipe, ids, PROMPTS, settings, tmp_path / "one", seed=3, model_fingerprint="m", show_progress=False
    )
    # two processes, run one after the other: rank 1 writes only its shard and finds no manifest yet
    from spin_diffusion.sampling import samples as sampling

    out = tmp_path / "two"
    kwargs = dict(seed=3, model_fingerprint="m", world_size=2, show_progress=False)
    with pytest.raises(CheckpointError, match="did not finish"):
        sample_opponent(pipe, ids, PROMPTS, settings, out, rank=1, **kwargs)
    assert [p.name for p in out.glob("shard-*")] == ["shard-00001.safetensors"]
    sample_opponent(pipe, ids, PROMPTS, settings, out, rank=0, **kwargs)
    assert sorted(p.name for p in out.glob("shard-*")) == [
        "shard-00000.safetensors",
        "shard-00001.safetensors",
        "shard-00002.safetensors",
    ]
    both = sampling.OpponentSamples(out)
    for pid in ids:
        torch.testing.assert_close(both.latents(pid), single.latents(pid), atol=1e-3, rtol=1e-3)


def test_reencoded_samples_are_what_the_real_data_encoder_gives_for_the_saved_image(
    pipe, tmp_path: Path
) -> None:
    """latents=reencoded stores exactly the latent the real-data path would make from the sample's PNG."""
    from PIL import Image

    from spin_diffusion.data.encoding import encode_pixels
    from spin_diffusion.data.transforms import to_tensor
    from spin_diffusion.sampling.generate import decode_latents, reencode_latents

    ids = [f"p{i}" for i in range(3)]
    common = dict(num_inference_steps=3, guidance_scale=2.0, batch_size=2, num_previews=0)
    raw = sample_opponent(
        pipe, ids, PROMPTS[:3], SamplingConfig(latents="raw", **common), tmp_path / "raw",
        seed=1, model_fingerprint="m",
    )  # fmt: skip
    enc = sample_opponent(
        pipe, ids, PROMPTS[:3], SamplingConfig(latents="reencoded", **common), tmp_path / "enc",
        seed=1, model_fingerprint="m",
    )  # fmt: skip
    z_raw = torch.stack([raw.latents(i)[0].float() for i in ids])
    z_enc = torch.stack([enc.latents(i)[0].float() for i in ids])
    reencoded = reencode_latents(pipe, z_raw)
    for k, image in enumerate(decode_latents(pipe, z_raw)):
        image.save(tmp_path / f"{k}.png")
        real_path = encode_pixels(pipe.vae, to_tensor(Image.open(tmp_path / f"{k}.png").convert("RGB"))[None])
        torch.testing.assert_close(reencoded[k], real_path[0], atol=1e-5, rtol=0)
    # stored samples: the same, up to fp16 storage of the raw latent before decoding
    torch.testing.assert_close(z_enc, reencoded, atol=1e-2, rtol=0)
    assert (z_enc - z_raw).abs().max() > 5e-2  # the two settings really differ
    with pytest.raises(CheckpointError, match="sampler"):  # the setting is part of the samples' identity
        sample_opponent(
            pipe, ids, PROMPTS[:3], SamplingConfig(latents="raw", **common), tmp_path / "enc",
            seed=1, model_fingerprint="m",
        )  # fmt: skip


SETTINGS = SamplingConfig(
    num_samples_per_prompt=1,
    num_inference_steps=3,
    guidance_scale=2.0,
    batch_size=1,
    shard_size=2,
    num_previews=0,
)
IDS = [f"p{i}" for i in range(len(PROMPTS))]


def _sample(pipe, out: Path):
    return sample_opponent(
        pipe, IDS, PROMPTS, SETTINGS, out, seed=4, model_fingerprint="m", show_progress=False
    )


@pytest.fixture(scope="module")
def uninterrupted(pipe, tmp_path_factory: pytest.TempPathFactory):
    return _sample(pipe, tmp_path_factory.mktemp("uninterrupted") / "samples")


def test_a_truncated_shard_in_a_finished_directory_is_sampled_again(
    pipe, tmp_path: Path, uninterrupted, caplog
) -> None:
    out = tmp_path / "samples"
    _sample(pipe, out)
    shard = out / "shard-00001.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) - 100])
    kept = (out / "shard-00000.safetensors").stat().st_mtime_ns
    with caplog.at_level("WARNING", logger="spin_diffusion.sampling.opponent"):
        again = _sample(pipe, out)
    assert "shard-00001.safetensors is unreadable" in caplog.text and "sampling it again" in caplog.text
    assert (out / "shard-00000.safetensors").stat().st_mtime_ns == kept  # intact shards are kept
    for pid in IDS:
        torch.testing.assert_close(again.latents(pid), uninterrupted.latents(pid), rtol=0, atol=0)


def test_opponent_samples_are_read_lazily_one_shard_at_a_time(pipe, uninterrupted, monkeypatch) -> None:
    import safetensors
    import safetensors.torch
    from safetensors.torch import load_file

    from spin_diffusion.sampling import samples as sampling

    opened: list[str] = []

    def counting(real):
        def opener(path, *args, **kwargs):
            opened.append(Path(path).name)
            return real(path, *args, **kwargs)

        return opener

    monkeypatch.setattr(safetensors, "safe_open", counting(safetensors.safe_open))
    monkeypatch.setattr(safetensors.torch, "load_file", counting(safetensors.torch.load_file))
    samples = sampling.OpponentSamples(uninterrupted.dir)
    assert len(samples) == 5 and opened == []  # only the manifest was read
    lat = samples.latents("p3")  # shard 1, row 1
    assert set(opened) == {"shard-00001.safetensors"}
    whole = load_file(str(uninterrupted.dir / "shard-00001.safetensors"))["latents"]
    assert lat.dtype == torch.float16 and torch.equal(lat, whole[1])
    samples.latents("p2")  # the same shard: no new open
    assert set(opened) == {"shard-00001.safetensors"} and opened.count("shard-00001.safetensors") <= 2
    for pid in IDS:
        assert torch.equal(samples.latents(pid), uninterrupted.latents(pid))
    assert set(opened) == {f"shard-0000{i}.safetensors" for i in range(3)}
    with pytest.raises(CheckpointError, match="no samples for prompt id 'nope'"):
        samples.latents("nope")


def test_sigterm_during_sampling_stops_after_the_batch_keeps_complete_shards_and_resumes(
    pipe, tmp_path: Path, uninterrupted
) -> None:
    import os
    import signal

    from spin_diffusion.errors import UserError

    def not_handled(signum, frame):  # what a missing handler would do, without killing pytest
        raise RuntimeError("SIGTERM reached the default handler")

    calls = {"n": 0}

    def send_sigterm(module, args):
        calls["n"] += 1
        if calls["n"] == 7:  # 3 UNet calls per batch of one: inside the third batch (shard 1)
            os.kill(os.getpid(), signal.SIGTERM)

    out = tmp_path / "samples"
    previous = signal.signal(signal.SIGTERM, not_handled)
    hook = pipe.unet.register_forward_pre_hook(send_sigterm)
    try:
        with pytest.raises(UserError) as info:
            _sample(pipe, out)
    finally:
        hook.remove()
        signal.signal(signal.SIGTERM, previous)
    assert info.value.exit_code == 130
    assert "1 of 3 shards are complete" in str(info.value) and "run the same command to resume" in str(
        info.value
    )
    assert calls["n"] == 9  # the batch that was running finished, no other started
    assert sorted(p.name for p in out.iterdir()) == ["settings.json", "shard-00000.safetensors"]
    again = _sample(pipe, out)
    for pid in IDS:
        torch.testing.assert_close(again.latents(pid), uninterrupted.latents(pid), rtol=0, atol=0)
