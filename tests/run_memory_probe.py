"""Peak resident memory of one ``train`` run in a fresh process, per iteration (prints JSON).

``python run_memory_probe.py PIPELINE DATA OUT METHOD LORA ITERATIONS [precompute]``. The peak
is reset (``/proc/self/clear_refs``) when an iteration starts (SPIN: its sampling; SFT: its
Trainer) and read when the next one starts and at the end, so each iteration's peak is its own
(saving the model and making the next opponent count in the iteration that does them). Also
reports the UNet's size in bytes and the resident set right after the pipeline loaded (one
network, the VAE and text encoder, the runtime). ``held``: per iteration, the most bytes of
distinct tensor storages that live objects hold at the probe points (the iteration's start,
after every training micro-step, and whenever a model is fingerprinted: at the end of an
iteration, beside theta_k as the next opponent); ``loaded_tensors``: the same right after loading.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml


def _hwm() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")


def _rss() -> int:
    import gc

    gc.collect()
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def _tensor_bytes() -> int:
    """Bytes of every distinct tensor storage live objects hold (exact, unlike the resident set)."""
    import gc

    import torch

    gc.collect()
    storages: dict[int, int] = {}
    for obj in gc.get_objects():
        if isinstance(obj, torch.Tensor) and obj.device.type == "cpu" and not obj.is_meta:
            storage = obj.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # Linux: the peak resident set starts again from now


def main() -> None:
    pipeline, data, out, method, lora, iterations = sys.argv[1:7]
    precompute = len(sys.argv) > 7 and sys.argv[7] == "precompute"
    import spin_diffusion.selfplay.driver as driver
    import spin_diffusion.training.trainer as trainer_module
    from spin_diffusion.config.run import validate_config

    peaks: list[int] = []
    held: list[int] = []  # per iteration: the most tensor bytes seen at a probe point
    started: set[str] = set()

    def iteration_start(name: str) -> None:
        if name in started:
            return
        if started:
            peaks.append(_hwm())
        started.add(name)
        held.append(_tensor_bytes())
        _reset_peak()

    def probe_point() -> None:
        if held:
            held[-1] = max(held[-1], _tensor_bytes())

    original_step = trainer_module.Trainer.train_step

    def train_step(self):  # after each micro-step: the trained model, its reference, the optimizer
        out = original_step(self)
        probe_point()
        return out

    trainer_module.Trainer.train_step = train_step

    original_init = trainer_module.Trainer.__init__

    def init(self, *args, **kwargs):  # SFT: the iteration starts with its Trainer
        iteration_start(str(kwargs["out_dir"]))
        original_init(self, *args, **kwargs)

    trainer_module.Trainer.__init__ = init
    import spin_diffusion.sampling.opponent as opponent_module

    original_sample = opponent_module.sample_opponent

    def sample(pipe, ids, captions, cfg, out_dir, **kwargs):  # SPIN: with the opponent's sampling
        iteration_start(str(Path(out_dir).parent))
        return original_sample(pipe, ids, captions, cfg, out_dir, **kwargs)

    opponent_module.sample_opponent = sample
    import spin_diffusion.model.loading as loading_module
    import spin_diffusion.model.weights as weights_module

    original_load = loading_module.load_pipeline
    loaded: list[int] = []
    loaded_tensors: list[int] = []

    def load(*args, **kwargs):  # what the run holds before it copies anything: one network and the rest
        pipe = original_load(*args, **kwargs)
        loaded.append(_rss())
        loaded_tensors.append(_tensor_bytes())
        return pipe

    loading_module.load_pipeline = load
    original_fingerprint = weights_module.fingerprint_module

    def fingerprint(
        module,
    ):  # at the end of an iteration: theta_k as the next opponent, and what else is left
        probe_point()
        return original_fingerprint(module)

    weights_module.fingerprint_module = fingerprint
    raw = {
        "name": "probe",
        "output_dir": out,
        "method": method,
        "model": {"pretrained": pipeline, "lora": {"enabled": lora == "lora", "rank": 2, "alpha": 2}},
        "data": {"source": "imagefolder", "path": data, "resolution": 16},
        "sampling": {"num_inference_steps": 2, "batch_size": 4, "num_previews": 0},
        "training": {
            "max_steps": 2,
            "batch_size": 2,
            "trackers": [],
            "validation_prompts": 0,
            "precompute_reference": precompute,
        },
        "iterations": [{"beta": 2000}] * int(iterations),
    }
    driver.run(validate_config(yaml.safe_load(yaml.safe_dump(raw)), source="probe"), show_progress=False)
    peaks.append(_hwm())
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(str(Path(pipeline) / "unet"))
    result = {"peaks": peaks, "loaded": loaded[0], "held": held, "loaded_tensors": loaded_tensors[0]}
    print(json.dumps({**result, "unet_bytes": sum(p.numel() * 4 for p in unet.parameters())}))


if __name__ == "__main__":
    main()
