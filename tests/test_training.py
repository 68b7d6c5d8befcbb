"""The shared training loop on synthetic latents: schedule, batching, reference paths, resume, NaN."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from spin_diffusion.config.run import TrainingConfig
from spin_diffusion.model.families import Conditioning, encode_prompts, prompt_encoder
from spin_diffusion.model.loading import load_pipeline
from spin_diffusion.model.prediction import training_scheduler
from spin_diffusion.model.weights import fingerprint_module, frozen_copy
from spin_diffusion.training.batches import make_batch, micro_batch_items
from spin_diffusion.training.checkpoints import list_checkpoints
from spin_diffusion.training.losses import compute_loss
from spin_diffusion.training.reference import (
    ModuleReference,
    PrecomputedReference,
    ReferencePlan,
    precompute_reference_errors,
)
from spin_diffusion.training.trainer import Trainer, TrainingDiverged, lr_factor
from synthetic_pairs import SIX_CAPTIONS, SyntheticPairs


def _accelerator():
    from accelerate import Accelerator

    return Accelerator(cpu=True)


def _trainer(pipe, out_dir: Path, cfg: TrainingConfig, data=None, method: str = "spin", unet=None) -> Trainer:
    if unet is None:
        unet = frozen_copy(pipe.unet)
        unet.requires_grad_(True)
    sched = training_scheduler(pipe)
    reference = ModuleReference(frozen_copy(pipe.unet), sched) if method != "sft" else None
    return Trainer(
        method=method,
        cfg=cfg,
        accelerator=_accelerator(),
        unet=unet,
        noise_scheduler=sched,
        prompts=prompt_encoder(pipe),
        data=data or SyntheticPairs(),
        reference=reference,
        out_dir=out_dir,
        seed=11,
        show_progress=False,
    )


@pytest.fixture(scope="module")
def pipe(tiny_pipeline_dir: Path):
    return load_pipeline(tiny_pipeline_dir)


def test_lr_schedule_warmup_then_decay() -> None:
    cfg = TrainingConfig(max_steps=10, warmup_steps=2, lr_scheduler="linear")
    assert [round(lr_factor(s, cfg), 3) for s in (0, 1, 2, 6, 10)] == [0.5, 1.0, 1.0, 0.5, 0.0]
    const = TrainingConfig(max_steps=10, warmup_steps=0, lr_scheduler="constant")
    assert lr_factor(7, const) == 1.0
    cos = TrainingConfig(max_steps=10, lr_scheduler="cosine")
    assert lr_factor(5, cos) == pytest.approx(0.5)


def test_micro_batches_are_seeded_permutations_split_across_ranks() -> None:
    ranks = [micro_batch_items(8, 0, batch_size=2, rank=r, world_size=2, seed=1) for r in (0, 1)]
    step1 = [micro_batch_items(8, 1, batch_size=2, rank=r, world_size=2, seed=1) for r in (0, 1)]
    epoch0 = [i for part in ranks + step1 for i, _ in part]
    assert sorted(epoch0) == list(range(8))  # one epoch = two global micro-batches of 4
    assert micro_batch_items(8, 2, batch_size=2, rank=0, world_size=2, seed=1)[0][1] == 1  # next epoch
    assert micro_batch_items(8, 0, batch_size=2, rank=0, world_size=2, seed=1) == ranks[0]
    assert micro_batch_items(8, 0, batch_size=2, rank=0, world_size=2, seed=2) != ranks[0]
    tiny = micro_batch_items(3, 0, batch_size=4, rank=0, world_size=1, seed=1)
    assert len(tiny) == 4 and set(i for i, _ in tiny) == {0, 1, 2}


def test_batches_share_t_and_noise_between_members_and_are_reproducible() -> None:
    data = SyntheticPairs()
    b1 = make_batch(data, [(0, 0), (3, 0)], seed=5, num_train_timesteps=1000)
    b2 = make_batch(data, [(3, 0), (0, 0)], seed=5, num_train_timesteps=1000)
    assert b1.timesteps.tolist() == b2.timesteps.flip(0).tolist()
    torch.testing.assert_close(b1.noise[0], b2.noise[1])
    b3 = make_batch(data, [(0, 1)], seed=5, num_train_timesteps=1000)
    assert not torch.equal(b3.noise[0], b1.noise[0])  # another epoch, another draw


@pytest.mark.parametrize("pair_noise", ["shared", "independent"])
def test_precomputed_reference_gives_the_same_loss(pipe, tmp_path: Path, pair_noise: str) -> None:
    sched = training_scheduler(pipe)
    data = SyntheticPairs()
    cfg = TrainingConfig(beta=500.0, pair_noise=pair_noise)
    model = frozen_copy(pipe.unet)
    with torch.no_grad():  # make the trained model differ from the reference
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    ref = ModuleReference(frozen_copy(pipe.unet), sched)
    plan = ReferencePlan(
        num_examples=6, micro_steps=4, batch_size=3, world_size=1, seed=3, pair_noise=pair_noise
    )
    table = precompute_reference_errors(
        ref,
        data,
        prompt_encoder(pipe),
        plan=plan,
        chunk_dir=tmp_path / "chunks",
        key={},
        num_train_timesteps=1000,
        caption_dropout=0.0,
        chunk_micro_steps=3,
        show_progress=False,
    )
    assert table.shape == (2, 6, 2) and not table.isnan().any()  # two micro-batches per epoch
    items = micro_batch_items(6, 2, batch_size=3, rank=0, world_size=1, seed=3)  # a batch of epoch 1
    batch = make_batch(data, items, seed=3, num_train_timesteps=1000, pair_noise=pair_noise)
    assert (batch.noise_b is not None) == (pair_noise == "independent")
    emb = Conditioning(encode_prompts(pipe.text_encoder, pipe.tokenizer, batch.captions))
    live = compute_loss("spin", cfg, model, sched, ref, batch, emb)
    pre = compute_loss("spin", cfg, model, sched, PrecomputedReference(table), batch, emb)
    assert live.loss.item() == pre.loss.item()  # the same micro-batch: the same numbers
    assert live.metrics["implicit_acc"] == pre.metrics["implicit_acc"]
    assert live.loss.item() != pytest.approx(0.6931, abs=1e-4)  # model != reference


def test_resumed_training_matches_an_uninterrupted_run(pipe, tmp_path: Path) -> None:
    cfg = TrainingConfig(
        max_steps=4,
        batch_size=2,
        gradient_accumulation_steps=2,
        checkpointing_steps=2,
        learning_rate=1e-3,
        warmup_steps=1,
        checkpoints_total_limit=1,
        trackers=[],
    )
    straight = _trainer(pipe, tmp_path / "straight", cfg)
    result = straight.train()
    assert result.steps == 4 and result.resumed_from is None
    assert list_checkpoints(tmp_path / "straight" / "checkpoints")[-1][0] == 4  # limit 1 pruned step-2
    assert len(list_checkpoints(tmp_path / "straight" / "checkpoints")) == 1

    first = _trainer(pipe, tmp_path / "resumed", cfg.model_copy(update={"max_steps": 2}))
    first.train()
    second = _trainer(pipe, tmp_path / "resumed", cfg)
    resumed = second.train()
    assert resumed.resumed_from == 2 and resumed.steps == 4
    assert fingerprint_module(second.acc.unwrap_model(second.unet)) == fingerprint_module(
        straight.acc.unwrap_model(straight.unet)
    )
    log = [json.loads(line) for line in (tmp_path / "resumed" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    assert {
        "loss",
        "implicit_acc",
        "d_real",
        "d_gen",
        "ref_err_real",
        "model_err_gen",
        "grad_norm",
        "lr",
    } <= set(log[0])


def test_nan_loss_stops_with_the_step_and_keeps_the_checkpoint(pipe, tmp_path: Path) -> None:
    # six examples, batch 6: one step per epoch; epoch 1 (step 2) has NaN latents
    cfg = TrainingConfig(max_steps=3, batch_size=6, checkpointing_steps=1, trackers=[])
    trainer = _trainer(pipe, tmp_path / "nan", cfg, data=SyntheticPairs(poison_from_epoch=1), method="sft")
    with pytest.raises(TrainingDiverged, match="at step 2") as info:
        trainer.train()
    assert "step-1" in str(info.value)
    found = list_checkpoints(tmp_path / "nan" / "checkpoints")
    assert [s for s, _ in found] == [1]
    assert json.loads((found[0][1] / "train_state.json").read_text())["step"] == 1


def test_ema_and_gradient_checkpointing_switches(pipe, tmp_path: Path) -> None:
    cfg = TrainingConfig(
        max_steps=2,
        batch_size=2,
        use_ema=True,
        ema_decay=0.5,
        gradient_checkpointing=True,
        learning_rate=1e-2,
        trackers=[],
        checkpointing_steps=1,
    )
    trainer = _trainer(pipe, tmp_path / "ema", cfg)
    start = [p.detach().clone() for p in trainer.acc.unwrap_model(trainer.unet).parameters()]
    trainer.train()
    unet = trainer.acc.unwrap_model(trainer.unet)
    assert unet.is_gradient_checkpointing
    # the result is the EMA: between the start and the raw weights, and saved with the checkpoint
    shadow = [p.detach() for p in trainer.ema.shadow_params]
    for p, s in zip(unet.parameters(), shadow, strict=True):
        torch.testing.assert_close(p.detach(), s)
    assert any(not torch.equal(p.detach(), s0) for p, s0 in zip(unet.parameters(), start, strict=True))
    assert (tmp_path / "ema" / "checkpoints" / "step-2" / "ema.safetensors").is_file()


def test_sft_loss_goes_down(pipe, tmp_path: Path) -> None:
    cfg = TrainingConfig(
        max_steps=30,
        batch_size=6,
        learning_rate=3e-3,
        lr_scheduler="constant",
        trackers=[],
        checkpointing_steps=100,
    )
    trainer = _trainer(pipe, tmp_path / "sft", cfg, method="sft")
    trainer.train()
    log = [
        json.loads(line)["loss"] for line in (tmp_path / "sft" / "train_log.jsonl").read_text().splitlines()
    ]
    assert sum(log[-5:]) / 5 < sum(log[:5]) / 5


def test_global_batch_size_derives_accumulation_from_the_process_count() -> None:
    from spin_diffusion.config.run import load_config
    from spin_diffusion.errors import ConfigError

    repo = Path(__file__).resolve().parents[1]
    for name, per_process, processes, accumulation in [
        ("sd15-spin.yaml", 8, 8, 32),
        ("sd15-dpo.yaml", 8, 4, 64),
        ("sd15-sft.yaml", 32, 1, 16),
    ]:
        cfg = load_config(repo / "configs" / name).training
        assert cfg.batch_size == per_process and cfg.accumulation_steps(processes) == accumulation
    cfg = TrainingConfig(batch_size=8, global_batch_size=2048)
    with pytest.raises(
        ConfigError, match=r"global_batch_size 2048 is not a multiple of batch_size 8 x 3 processes"
    ):
        cfg.accumulation_steps(3)
    assert TrainingConfig(gradient_accumulation_steps=5).accumulation_steps(7) == 5  # not set: as written
    with pytest.raises(ValueError, match="not a multiple of batch_size 8"):
        TrainingConfig(batch_size=8, global_batch_size=100)


def test_the_effective_global_batch_is_logged_and_returned(pipe, tmp_path: Path, caplog) -> None:
    from spin_diffusion.training.checkpointing import write_summary

    cfg = TrainingConfig(max_steps=1, batch_size=2, global_batch_size=6, checkpointing_steps=5, trackers=[])
    trainer = _trainer(pipe, tmp_path / "gb", cfg)
    with caplog.at_level("INFO", logger="spin_diffusion.training.trainer"):
        result = trainer.train()
    assert trainer.micro_step == 3  # 6 = 2 per process x 1 process x 3 accumulation steps
    assert result.global_batch == 6
    assert "global batch 6 = batch_size 2 x 1 processes x 3 accumulation steps" in caplog.text
    write_summary(tmp_path / "gb", result)
    assert json.loads((tmp_path / "gb" / "train_summary.json").read_text())["global_batch"] == 6


EIGHT_CAPTIONS = (*SIX_CAPTIONS, "a red circle on the left", "a blue square on the right")


def _perturbed(pipe) -> torch.nn.Module:
    """A trainable copy of the UNet that differs from the reference: losses and accuracies vary."""
    unet = frozen_copy(pipe.unet)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=gen))
    return unet.requires_grad_(True)


def _log(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "train_log.jsonl").read_text().splitlines()]


def test_accumulating_four_micro_batches_equals_one_four_times_larger_batch(pipe, tmp_path: Path) -> None:
    # eight examples: batch 1 x 4 micro-steps and batch 4 x 1 visit the same items at both steps.
    # A larger Adam epsilon keeps near-zero gradient entries from turning summation-order rounding
    # into sign-sized updates (with 1e-8 one entry in 18k differs by 2% of the step).
    base = dict(
        max_steps=2,
        learning_rate=1e-4,
        adam_epsilon=1e-4,
        lr_scheduler="constant",
        checkpointing_steps=100,
        trackers=[],
    )
    data = SyntheticPairs(EIGHT_CAPTIONS)
    runs = {}
    for name, batch, accum in [("accumulated", 1, 4), ("large", 4, 1)]:
        cfg = TrainingConfig(**base, batch_size=batch, gradient_accumulation_steps=accum)
        trainer = _trainer(pipe, tmp_path / name, cfg, data=data, unet=_perturbed(pipe))
        trainer.train()
        assert trainer.micro_step == 2 * accum
        runs[name] = trainer
    acc, large = (runs[k].final_unet for k in ("accumulated", "large"))
    start = _perturbed(pipe)
    moved = max(
        (p - s).abs().max().item() for p, s in zip(large.parameters(), start.parameters(), strict=True)
    )
    assert moved > 1e-5  # the steps did change the weights
    for p_acc, p_large in zip(acc.parameters(), large.parameters(), strict=True):
        torch.testing.assert_close(p_acc, p_large, rtol=0, atol=moved * 1e-3)
    for a, b in zip(_log(tmp_path / "accumulated"), _log(tmp_path / "large"), strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["implicit_acc"] == pytest.approx(b["implicit_acc"], abs=1e-9)


def test_logged_metrics_are_the_mean_over_the_steps_micro_batches(pipe, tmp_path: Path) -> None:
    cfg = TrainingConfig(
        max_steps=1,
        batch_size=2,
        gradient_accumulation_steps=4,
        beta=500.0,
        checkpointing_steps=100,
        trackers=[],
    )
    data = SyntheticPairs(EIGHT_CAPTIONS)
    model = _perturbed(pipe)
    sched = training_scheduler(pipe)
    ref = ModuleReference(frozen_copy(pipe.unet), sched)
    per_micro = []
    for m in range(4):  # what the loop's four micro-batches give with the weights before the step
        batch = make_batch(data, micro_batch_items(8, m, batch_size=2, rank=0, world_size=1, seed=11), seed=11,
                           num_train_timesteps=1000)  # fmt: skip
        emb = Conditioning(encode_prompts(pipe.text_encoder, pipe.tokenizer, batch.captions))
        with torch.no_grad():
            per_micro.append(compute_loss("spin", cfg, model, sched, ref, batch, emb).metrics)
    _trainer(pipe, tmp_path / "run", cfg, data=data, unet=_perturbed(pipe)).train()
    logged = _log(tmp_path / "run")[0]
    losses = [m["loss"] for m in per_micro]
    assert max(losses) - min(losses) > 1e-3  # the last micro-batch alone would not pass
    for key in ("loss", "implicit_acc", "d_real", "model_err_gen"):
        assert logged[key] == pytest.approx(sum(m[key] for m in per_micro) / 4, rel=1e-6, abs=1e-9)


def _ema_cfg(max_steps: int) -> TrainingConfig:
    return TrainingConfig(
        max_steps=max_steps,
        batch_size=2,
        use_ema=True,
        ema_decay=0.9,
        learning_rate=1e-2,
        lr_scheduler="constant",
        checkpointing_steps=2,
        trackers=[],
    )


def test_a_resumed_ema_equals_an_uninterrupted_one(pipe, tmp_path: Path) -> None:
    straight = _trainer(pipe, tmp_path / "straight", _ema_cfg(4))
    straight.train()
    _trainer(pipe, tmp_path / "resumed", _ema_cfg(2)).train()
    resumed = _trainer(pipe, tmp_path / "resumed", _ema_cfg(4))
    assert resumed.train().resumed_from == 2
    assert resumed.ema.optimization_step == straight.ema.optimization_step == 4
    for a, b in zip(resumed.ema.shadow_params, straight.ema.shadow_params, strict=True):
        assert torch.equal(a, b)
    assert fingerprint_module(resumed.final_unet) == fingerprint_module(straight.final_unet)


def test_a_launch_asking_for_fsdp_that_accelerate_did_not_set_up_is_warned_about(
    pipe, tmp_path: Path, caplog, monkeypatch
) -> None:
    cfg = TrainingConfig(max_steps=1, batch_size=2, checkpointing_steps=5, trackers=[])
    trainer = _trainer(pipe, tmp_path / "run", cfg)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what `accelerate launch --use_fsdp` sets
    with caplog.at_level("INFO", logger="spin_diffusion.training.trainer"):
        trainer.train()
    assert "FSDP was asked for, but accelerate runs this as NO" in caplog.text
    assert "accumulation steps (single process)" in caplog.text


def test_optimizer_switches(pipe, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """fused AdamW off on CPU unless asked; channels-last weights; compile in place; 8-bit needs bitsandbytes."""
    import importlib.util

    from spin_diffusion.errors import ConfigError
    from spin_diffusion.training.optimizers import build_optimizer

    default = _trainer(pipe, tmp_path / "a", TrainingConfig(max_steps=1, trackers=[]))
    assert not default.optimizer.optimizer.defaults["fused"]
    compiled: list[object] = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **k: compiled.append(self))
    cfg = TrainingConfig(max_steps=1, trackers=[], fused_adamw=True, channels_last=True, compile=True)
    switched = _trainer(pipe, tmp_path / "b", cfg)
    assert switched.optimizer.optimizer.defaults["fused"]
    conv = switched.acc.unwrap_model(switched.unet).conv_in.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert compiled == [switched.acc.unwrap_model(switched.unet)]
    assert switched.train().steps == 1
    if importlib.util.find_spec("bitsandbytes") is None:
        with pytest.raises(ConfigError, match="adamw_8bit needs bitsandbytes, which is not installed"):
            build_optimizer(
                [torch.nn.Parameter(torch.zeros(2))], TrainingConfig(optimizer="adamw_8bit"), conv.device
            )
